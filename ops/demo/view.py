"""The demo's terminal view: live with ``rich`` on a terminal, plain lines
otherwise (CI logs, pipes).

The driver only updates a :class:`DemoStatus` (phases, the progress of the
wait under way, the figures) and tells the view about checks and notes;
:class:`LiveView` redraws the status four times a second, :class:`PlainView`
prints one line per phase, check and note, and a progress line at most
every few seconds while a wait drags on.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from ops.demo.report import Check

__all__ = ["DemoStatus", "LiveView", "PhaseRow", "PlainView", "View", "make_view", "render"]

PENDING, RUNNING, OK, FAILED, NOT_RUN = "pending", "running", "ok", "FAILED", "not run"


@dataclass
class PhaseRow:
    name: str
    what: str
    state: str = PENDING
    started: float | None = None
    ended: float | None = None

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started


@dataclass
class DemoStatus:
    """Everything the live view shows; the driver's thread writes it, the
    view's thread reads it under ``lock``."""

    title: str
    phases: list[PhaseRow]
    progress: tuple[str, int, int] | None = None
    figures: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def phase(self, name: str) -> PhaseRow:
        return next(p for p in self.phases if p.name == name)


class View(Protocol):
    status: DemoStatus

    def phase_started(self, row: PhaseRow) -> None: ...

    def phase_ended(self, row: PhaseRow) -> None: ...

    def check(self, check: Check) -> None: ...

    def note(self, text: str) -> None: ...

    def progress(self, label: str, done: int, total: int) -> None: ...

    def figures(self, figures: dict[str, str]) -> None: ...

    def close(self) -> None: ...


class _StatusUpdates:
    """The status writes both views share."""

    status: DemoStatus

    def progress(self, label: str, done: int, total: int) -> None:
        with self.status.lock:
            self.status.progress = (label, done, total)

    def figures(self, figures: dict[str, str]) -> None:
        with self.status.lock:
            self.status.figures.update(figures)

    def _record(self, check: Check) -> None:
        with self.status.lock:
            self.status.checks.append(check)


class PlainView(_StatusUpdates):
    """One line per event on ``out``; progress at most every ``every`` s."""

    def __init__(self, status: DemoStatus, out: TextIO | None = None, every: float = 5.0) -> None:
        self.status = status
        self._out = out or sys.stdout
        self._every = every
        self._t0 = time.monotonic()
        self._last_progress = self._t0
        self._print(status.title)

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self._t0:6.1f}s]"

    def phase_started(self, row: PhaseRow) -> None:
        index = self.status.phases.index(row) + 1
        self._print(f"{self._stamp()} {index}/{len(self.status.phases)} {row.name}: {row.what}")
        self._last_progress = time.monotonic()

    def phase_ended(self, row: PhaseRow) -> None:
        elapsed = row.elapsed(time.monotonic()) or 0.0
        self._print(f"{self._stamp()}   {row.name} {row.state} in {elapsed:.1f}s")

    def check(self, check: Check) -> None:
        self._record(check)
        self._print(f"           {check.line()}")

    def note(self, text: str) -> None:
        self._print(f"           {text}")

    def progress(self, label: str, done: int, total: int) -> None:
        super().progress(label, done, total)
        now = time.monotonic()
        if now - self._last_progress >= self._every:
            self._last_progress = now
            self._print(f"{self._stamp()}   ... {label}: {done} of {total}")

    def close(self) -> None:
        return None


class LiveView(_StatusUpdates):
    """A ``rich`` live panel, redrawn four times a second; checks and notes
    scroll above it."""

    def __init__(self, status: DemoStatus) -> None:
        from rich.console import Console
        from rich.live import Live

        self.status = status
        self.console = Console()
        self._live = Live(get_renderable=lambda: render(self.status), console=self.console,
                          refresh_per_second=4, transient=False)
        self._live.start()

    def phase_started(self, row: PhaseRow) -> None:
        with self.status.lock:
            self.status.progress = None

    def phase_ended(self, row: PhaseRow) -> None:
        with self.status.lock:
            self.status.progress = None

    def check(self, check: Check) -> None:
        self._record(check)
        style = "green" if check.ok else "bold red"
        self.console.print(f"[{style}]{'ok  ' if check.ok else 'FAIL'}[/] {_escape(check.claim)}"
                           + (f" [dim]({_escape(check.detail)})[/]" if check.detail else ""))

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{_escape(text)}[/]")

    def close(self) -> None:
        self._live.refresh()
        self._live.stop()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


_STATE_STYLE = {PENDING: "dim", RUNNING: "bold yellow", OK: "green", FAILED: "bold red", NOT_RUN: "dim red"}


def render(status: DemoStatus) -> Any:
    """A ``rich`` renderable of ``status``: the phases with their state and
    time, the progress of the wait under way, and the figures."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic()
    with status.lock:
        phases = [(p.name, p.what, p.state, p.elapsed(now)) for p in status.phases]
        progress = status.progress
        figures = dict(status.figures)
        failed = sum(1 for c in status.checks if not c.ok)
        passed = len(status.checks) - failed
    table = Table(show_header=False, box=None, pad_edge=False, expand=True)
    table.add_column("n", justify="right", style="dim", no_wrap=True, min_width=2)
    table.add_column("phase", style="bold", no_wrap=True, min_width=15)
    table.add_column("state", no_wrap=True, min_width=7)
    table.add_column("time", justify="right", no_wrap=True, min_width=6)
    table.add_column("what", style="dim", overflow="ellipsis", no_wrap=True, ratio=1)
    for i, (name, what, state, elapsed) in enumerate(phases, 1):
        table.add_row(str(i), name, Text(state, style=_STATE_STYLE.get(state, "")),
                      "" if elapsed is None else f"{elapsed:.1f}s", what)
    parts: list[Any] = [table]
    if progress is not None:
        label, done, total = progress
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(total, 1), completed=min(done, total), width=40),
                    Text(f"{done}/{total} {label}"))
        parts.append(bar)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="cyan")
    grid.add_column()
    for name, value in figures.items():
        grid.add_row(name, value)
    grid.add_row("checks", Text(f"{passed} passed" + (f", {failed} failed" if failed else ""),
                                style="bold red" if failed else "green"))
    parts.append(grid)
    return Panel(Group(*parts), title=status.title, title_align="left")


def make_view(status: DemoStatus, *, live: bool | None = None) -> View:
    """The live view on a terminal (``live=None``: when stdout is one),
    plain lines otherwise."""
    if live is None:
        live = sys.stdout.isatty()
    return LiveView(status) if live else PlainView(status)
