"""Fixtures for the data-channel session tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.runtime.testkit import Probe, TestKit

from actors.sessions.datachannel.testing import FakeConnector
from .session_driver import OWNER


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as k:
        yield k


@pytest.fixture
def fake() -> FakeConnector:
    return FakeConnector()


@pytest.fixture
def owner(kit: TestKit) -> Probe:
    return kit.probe(OWNER)
