"""What the demo observes: the application's ledger, the service's state
read as sessions, caption rounds and recovery times."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, PlaybackStarted
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from bus.messages import Event
from ops.demo.observed import (
    AppLedger,
    CaptionRound,
    ServiceView,
    caption_frame,
    recovery_times,
)

A = ("m-1", DEFAULT_SESSION)
B = ("m-2", DEFAULT_SESSION)
P = ("m-1", PRACTICE_SESSION)


class Ticks:
    """A clock that reads 1, 2, 3 ... (one tick per record)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def state(meeting: str, session: str, value: str) -> mt.SessionState:
    return mt.SessionState(meeting=meeting, session=session, state=value)


def caption(caption_id: str, meeting: str, session: str = DEFAULT_SESSION) -> mt.RelayedEvent:
    return mt.RelayedEvent(meeting=meeting, session=session, event_type="relay.event",
                           data=caption_frame(caption_id, "hi")["data"])


def test_the_ledger_keeps_phases_session_states_and_counts_each_caption_per_session() -> None:
    ledger = AppLedger(clock=Ticks())
    ledger.record(mt.MeetingState(meeting="m-1", phase="lobby"))
    ledger.record(state("m-1", DEFAULT_SESSION, dc.ONLINE))
    ledger.record(caption("c1", "m-1"))
    ledger.record(caption("c1", "m-1"))
    ledger.record(caption("c1", "m-1", PRACTICE_SESSION))
    ledger.record(mt.RelayedEvent(meeting="m-1", session=DEFAULT_SESSION, event_type="reaction", data={}))
    assert ledger.in_phase(["m-1", "m-2"], "lobby") == {"m-1"}
    assert ledger.online([A, B]) == {A}
    assert ledger.count_in_state(dc.ONLINE) == 1
    assert ledger.caption_counts("c1") == {A: 2, P: 1}
    assert ledger.caption_counts("c2") == {}
    assert ledger.captions_missing([("c1", [A, P, B]), ("c2", [A])]) == 2  # B's c1, A's c2
    assert ledger.other_relayed["reaction"] == 1


def test_online_again_needs_a_drop_and_a_return_after_the_fault() -> None:
    ledger = AppLedger(clock=Ticks())
    ledger.record(state("m-1", DEFAULT_SESSION, dc.ONLINE))       # t=1
    ledger.record(state("m-1", DEFAULT_SESSION, dc.BACKOFF))      # t=2
    ledger.record(state("m-1", DEFAULT_SESSION, dc.CONNECTING))   # t=3
    assert ledger.online_again(A, after=1.5) is None
    ledger.record(state("m-1", DEFAULT_SESSION, dc.ONLINE))       # t=4
    assert ledger.online_again(A, after=1.5) == 4
    # Online before the fault and never dropped after it: not "again".
    assert ledger.online_again(A, after=4.5) is None


def test_admission_is_judged_by_arrival_order() -> None:
    ledger = AppLedger(clock=Ticks())
    ledger.record(mt.MeetingState(meeting="m-1", phase="admitted"))
    ledger.record(state("m-1", DEFAULT_SESSION, dc.ONLINE))
    ledger.record(state("m-2", DEFAULT_SESSION, dc.ONLINE))
    ledger.record(mt.MeetingState(meeting="m-2", phase="admitted"))
    assert ledger.announced_before_online("m-1", DEFAULT_SESSION, "admitted") is True
    assert ledger.announced_before_online("m-2", DEFAULT_SESSION, "admitted") is False
    assert ledger.announced_before_online("m-3", DEFAULT_SESSION, "admitted") is None


def test_refusals_playback_and_events_of_interest_are_kept() -> None:
    ledger = AppLedger()
    ledger.record(dc.Refusal(meeting_id="m-1", session_id=DEFAULT_SESSION, command="datachannel.claim",
                             error_type="NotOwner", reason="not-owner"))
    ledger.record(PlaybackStarted(segment="r1"))
    ledger.record(PlaybackFinished(segment="r1", position=1.0, interrupted=False))
    ledger.record_event(Event(event="refused-not-owner", node="w1", address="datachannel:m-1/x", reason="not-owner"))
    ledger.record_event(Event(event="started", node="w1", address="meeting:m-1"))
    assert ledger.refusal_count() == 1
    assert [type(m) for m in ledger.playback_of("r1")] == [PlaybackStarted, PlaybackFinished]
    assert len(ledger.events_of("refused-not-owner", address="datachannel:m-1/x")) == 1
    assert ledger.events_of("started") == []  # counted only
    assert ledger.event_counts[("started", "")] == 1


def test_wait_returns_as_soon_as_a_record_makes_the_predicate_hold() -> None:
    ledger = AppLedger()
    recorder = threading.Thread(target=lambda: ledger.record(state("m-1", DEFAULT_SESSION, dc.ONLINE)))
    recorder.start()
    assert ledger.wait(lambda led: bool(led.online([A])), timeout=10)
    recorder.join()
    assert not ledger.wait(lambda led: bool(led.online([B])), timeout=0)


def socket(sid: str, meeting: str, session: str, *, online: bool = True, open_: bool = True,
           subs: tuple[str, ...] = ("transcription",), device: str = "https://devices/w0") -> dict:
    return {"id": sid, "meeting": meeting, "session": session, "open": open_, "online": online,
            "subscriptions": list(subs), "device_url": device}


def test_the_service_state_read_as_sessions() -> None:
    view = ServiceView.of({
        "registers": {"m-1/llm-default-session": 2},
        "counters": {"tokens_issued": 3},
        "sockets": [
            socket("s1", "m-1", DEFAULT_SESSION, open_=False),              # closed: ignored
            socket("s2", "m-1", DEFAULT_SESSION, device="https://devices/w1"),
            socket("s3", "m-2", DEFAULT_SESSION, subs=()),                  # online, not subscribed
            socket("s4", "m-1", PRACTICE_SESSION, online=False),            # open, not online yet
            socket("s5", "m-2", DEFAULT_SESSION),                           # a second socket (switchover)
        ],
    })
    assert view.online == {A: ("s2",), B: ("s3", "s5")}
    assert view.subscribed == {A, B}
    assert view.devices[A] == "https://devices/w1"
    assert view.open_sockets == {"m-1": 2, "m-2": 2}
    assert view.settled([A, B, P]) == {A}  # B has two sockets, P none online
    assert view.registers == {"m-1/llm-default-session": 2} and view.counters["tokens_issued"] == 3
    assert ServiceView.empty().settled([A]) == set()


def test_a_caption_round_counts_lost_duplicate_and_stray_copies() -> None:
    round_ = CaptionRound("c7", frozenset({A, B, P}), reached=3)
    assert round_.valid and not CaptionRound("c7", frozenset({A}), reached=2).valid
    result = round_.result({A: 1, P: 3, ("m-9", DEFAULT_SESSION): 1})
    assert result.lost == (B,)
    assert (result.expected, result.delivered, result.duplicates, result.strays) == (3, 2, 2, 1)
    assert not result.exact
    assert round_.result({A: 1, B: 1, P: 1}).exact


@given(st.dictionaries(st.sampled_from([A, B, P, ("m-9", DEFAULT_SESSION)]), st.integers(1, 4)))
def test_a_round_accounts_for_every_expected_session_once(counts: dict) -> None:
    result = CaptionRound("c", frozenset({A, B, P}), reached=3).result(counts)
    assert result.delivered + len(result.lost) == result.expected
    assert result.exact == (all(counts.get(k) == 1 for k in (A, B, P)) and len(counts) == sum(
        1 for k in counts if k in (A, B, P)))


def test_recovery_is_the_later_of_online_again_and_seen_subscribed() -> None:
    times = recovery_times(10.0, {A: 11.0, B: 12.0, P: None}, {A: 11.5, B: 11.9, P: 13.0})
    assert times == {A: 1.5, B: 2.0, P: None}

