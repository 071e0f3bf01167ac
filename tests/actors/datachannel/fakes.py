"""The data-channel fakes now live in :mod:`actors.datachannel.testing`
(public, for users' tests too); re-exported here for older imports."""

from actors.datachannel.testing import FakeConnector, FakeSocket, RegisterCall

__all__ = ["FakeConnector", "FakeSocket", "RegisterCall"]
