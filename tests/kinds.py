"""What every message contract's test checks of its kinds (the session
actors' contracts, the cluster's ``sys:nodes`` messages): each one goes
through the codec (plain and signed) and comes back equal, whatever its
fields hold; its secrets are declared and kept out of its repr."""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType

from hypothesis import assume
from hypothesis import strategies as st

from bus.envelope import Codec, Envelope
from bus.messages import REGISTRY, Message
from bus.signing import HmacSigner
from tests.bus.strategies import messages_of

CODECS = (Codec(), Codec(signer=HmacSigner(b"contract-test-cluster-key-0123456789")))


def kinds_in(module: ModuleType) -> list[type[Message]]:
    """The message kinds ``module`` declares (registered under their kind)."""
    found = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
             if issubclass(cls, Message) and cls.__module__ == module.__name__
             and REGISTRY.lookup(getattr(cls, "KIND", "")) is cls]
    assert found, f"{module.__name__} declares no message kind"
    return found


def round_trips(data: st.DataObject, module: ModuleType) -> None:
    """One message of every kind of ``module``, drawn from its annotations,
    through each codec."""
    for cls in kinds_in(module):
        kind, values = data.draw(messages_of(cls), label=cls.__name__)
        try:
            message = kind(**values)
        except (TypeError, ValueError):
            assume(False)  # the kind's own checks refuse these values
            return
        envelope = Envelope(to="contract:to", message=message, sender="contract:from")
        for codec in CODECS:
            assert codec.decode(codec.encode(envelope)).message == message, cls.__name__


def secrets_declared_and_hidden(module: ModuleType) -> list[str]:
    """Every secret field a kind of ``module`` declares exists and is kept
    out of its repr; returns the kinds that declare any."""
    with_secrets = []
    for cls in kinds_in(module):
        secret = getattr(cls, "SECRET_FIELDS", ())
        if not secret:
            continue
        with_secrets.append(cls.__name__)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in secret:
            assert name in fields, f"{cls.__name__}.SECRET_FIELDS names {name!r}, not a field"
            assert fields[name].repr is False, f"{cls.__name__}.{name} shows in repr"
    return with_secrets
