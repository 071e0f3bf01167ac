"""Checks and the closing summary of ``huddle demo``.

A :class:`Check` is one claim the demo verified (or could not), with what
it saw. :class:`Summary` gathers the figures the README promises (sessions
settled, recoveries and their times, refusals, messages lost, subscriptions
lost) and the checks, renders them as plain lines, and decides the exit
code: 0 only when there was at least one check and every check held.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Check", "Recovery", "Summary", "percentile", "replay_pattern", "seconds"]


@dataclass(frozen=True)
class Check:
    """``ok`` says whether ``claim`` held; ``detail`` what was seen."""

    phase: str
    claim: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.claim}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Recovery:
    """One fault and how what it hit came back.

    ``times``: seconds from the fault until each of the ``unit`` it hit
    (sessions, meetings) was back (``None``: not back); ``skipped``: why
    the fault was not injected at all."""

    fault: str
    times: Sequence[float | None] = ()
    skipped: str = ""
    unit: str = "sessions"

    @property
    def back(self) -> list[float]:
        return sorted(t for t in self.times if t is not None)

    @property
    def missing(self) -> int:
        return sum(1 for t in self.times if t is None)

    def line(self) -> str:
        if self.skipped:
            return f"{self.fault}: skipped: {self.skipped}"
        back = self.back
        if not back:
            return f"{self.fault}: none of {len(self.times)} {self.unit} back"
        text = (f"{self.fault}: {len(back)} of {len(self.times)} {self.unit} back, "
                f"p50 {seconds(percentile(back, 0.5))}, max {seconds(back[-1])}")
        return text + (f", {self.missing} never" if self.missing else "")


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; raises on no values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


@dataclass
class Summary:
    """The figures and checks of one run."""

    sessions_wanted: int = 0
    sessions_settled: int = 0
    recoveries: list[Recovery] = field(default_factory=list)
    refusals: int = 0
    refusals_expected: int = 0
    captions_expected: int = 0
    messages_lost: int = 0
    duplicates: int = 0
    subscriptions_wanted: int = 0
    subscriptions_lost: int | None = None
    checks: list[Check] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def exit_code(self) -> int:
        return 0 if self.checks and not self.failed and not self.not_run else 1

    def lines(self) -> list[str]:
        recoveries = [r.line() for r in self.recoveries] or ["none measured"]
        lost_subs = "not measured" if self.subscriptions_lost is None else (
            f"{self.subscriptions_lost} (of {self.subscriptions_wanted} wanted after the service restart)")
        passed = len(self.checks) - len(self.failed)
        out = [
            "summary",
            f"  sessions settled    {self.sessions_settled} of {self.sessions_wanted}",
            f"  recoveries          {recoveries[0]}",
            *[f"                      {r}" for r in recoveries[1:]],
            (f"  refusals            {self.refusals} (expected {self.refusals_expected}: the incoming call's "
             "claim and disconnect)"),
            (f"  messages lost       {self.messages_lost} (of {self.captions_expected} captions relayed; "
             f"{self.duplicates} duplicates)"),
            f"  subscriptions lost  {lost_subs}",
            f"  checks              {passed} of {len(self.checks)} passed",
        ]
        out += [f"    {c.line()}" for c in self.failed]
        if self.not_run:
            out.append(f"  not run             {', '.join(self.not_run)}")
        out.append("result: " + ("every check held" if self.exit_code == 0 else "FAILED"))
        return out


def replay_pattern(seqs: Sequence[int], frames: int) -> tuple[bool, int]:
    """Whether the frame numbers a sink received for one segment of
    ``frames`` frames follow the false-interruption pattern (S39): ``0..k-1``
    then ``j..frames-1`` for some ``j <= k`` (what a pause kept is played
    again once, then the segment goes on). Returns ``(ok, replayed)``."""
    if not seqs:
        return frames == 0, 0
    # The first point where the numbers stop counting up by one.
    k = next((i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1), len(seqs))
    head, tail = list(seqs[:k]), list(seqs[k:])
    if head != list(range(k)):
        return False, 0
    if not tail:
        return head == list(range(frames)), 0
    j = tail[0]
    ok = j <= k and tail == list(range(j, frames))
    return ok, k - j if ok else 0
