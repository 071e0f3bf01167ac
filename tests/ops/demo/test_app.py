"""The demo's own actors through the test kit: the application records
what the meetings tell it; the incoming call reaches for a session it does
not own, under its own address, and records the refusals it gets back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, PlaybackStarted
from actors.sessions.contracts.token import DEFAULT_SESSION
from actors.runtime.testkit import TestKit
from bus.messages import Ping
from ops.demo.app import IncomingCall, WebinarApp
from ops.demo.observed import AppLedger

TARGET = dc.session_address("m-1", DEFAULT_SESSION)


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as kit:
        yield kit


def test_the_application_records_every_meeting_output_and_what_the_agent_played(kit: TestKit) -> None:
    ledger = AppLedger()
    kit.spawn("app:webinar", WebinarApp, ledger)
    kit.inject_message("app:webinar", mt.MeetingState(meeting="m-1", phase="admitted"), sender="meeting:m-1")
    kit.inject_message("app:webinar", mt.SessionState(meeting="m-1", session=DEFAULT_SESSION, state="online"),
                       sender="meeting:m-1")
    kit.inject_message("app:webinar", PlaybackStarted(segment="r1"), sender="audio:m-1/voice")
    kit.inject_message("app:webinar", PlaybackFinished(segment="r1", position=0.5, interrupted=True),
                       sender="audio:m-1/voice")
    kit.settle()
    assert ledger.in_phase(["m-1"], "admitted") == {"m-1"}
    assert ledger.online([("m-1", DEFAULT_SESSION)]) == {("m-1", DEFAULT_SESSION)}
    assert [type(m) for m in ledger.playback_of("r1")] == [PlaybackStarted, PlaybackFinished]


def test_anything_else_to_the_application_is_a_dead_letter_and_it_keeps_running(kit: TestKit) -> None:
    ledger = AppLedger()
    kit.spawn("app:webinar", WebinarApp, ledger)
    kit.inject_message("app:webinar", Ping(n=1), sender="x:y")
    kit.expect_event("dead-letter", "app:webinar", reason="unhandled-kind")
    kit.inject_message("app:webinar", mt.MeetingState(meeting="m-2", phase="lobby"))
    kit.settle()
    assert ledger.in_phase(["m-2"], "lobby") == {"m-2"}


def test_the_incoming_call_claims_then_disconnects_under_its_own_address(kit: TestKit) -> None:
    ledger = AppLedger()
    session = kit.probe(TARGET)
    kit.spawn("meeting:call-1", IncomingCall, TARGET, ledger)
    _claim, claim_env = session.expect_message(dc.ClaimSession)
    disconnect, disconnect_env = session.expect_message(dc.Disconnect)
    assert claim_env.sender == disconnect_env.sender == "meeting:call-1"
    assert disconnect.permanent
    refusal = dc.Refusal(meeting_id="m-1", session_id=DEFAULT_SESSION, command=dc.Disconnect.KIND,
                         error_type="NotOwner", reason="not-owner")
    kit.inject_message("meeting:call-1", refusal, sender=TARGET)
    kit.settle()
    assert ledger.refusals == [refusal]
