"""The demo's view: plain lines off a terminal, a rich panel on one."""

from __future__ import annotations

import io
import time

from rich.console import Console

from ops.demo.report import Check
from ops.demo.view import DemoStatus, PhaseRow, PlainView, make_view, render


def status() -> DemoStatus:
    return DemoStatus("huddle demo: test", [PhaseRow("start", "processes up"), PhaseRow("leave", "everyone leaves")])


def test_plain_view_prints_phases_checks_and_notes_as_lines_without_escape_codes() -> None:
    out = io.StringIO()
    st = status()
    view = PlainView(st, out=out, every=0.0)
    row = st.phase("start")
    row.state, row.started = "running", time.monotonic()
    view.phase_started(row)
    view.progress("workers up", 1, 2)
    view.check(Check("start", "2 workers up", True, "pids 1, 2"))
    view.check(Check("start", "redis up", False))
    view.note("a note")
    row.state, row.ended = "ok", time.monotonic()
    view.phase_ended(row)
    view.close()
    text = out.getvalue()
    assert text.splitlines()[0] == "huddle demo: test"
    assert "1/2 start: processes up" in text
    assert "... workers up: 1 of 2" in text
    assert "ok   2 workers up (pids 1, 2)" in text and "FAIL redis up" in text
    assert "a note" in text and "start ok in" in text
    assert "\x1b[" not in text
    assert [c.claim for c in st.checks] == ["2 workers up", "redis up"]


def test_plain_view_throttles_progress_lines() -> None:
    out = io.StringIO()
    view = PlainView(status(), out=out, every=3600.0)
    for i in range(100):
        view.progress("sessions", i, 100)
    assert "sessions" not in out.getvalue()
    assert view.status.progress == ("sessions", 99, 100)


def test_the_live_panel_shows_each_phase_the_progress_and_the_figures() -> None:
    st = status()
    st.phase("start").state = "ok"
    st.progress = ("sessions online", 3, 10)
    st.figures["refusals"] = "2"
    st.checks.append(Check("start", "x", False))
    console = Console(record=True, width=100, force_terminal=False)
    console.print(render(st))
    text = console.export_text()
    assert "start" in text and "leave" in text and "pending" in text
    assert "3/10 sessions online" in text
    assert "refusals" in text and "0 passed, 1 failed" in text


def test_off_a_terminal_the_view_is_plain() -> None:
    view = make_view(status())  # pytest captures stdout: not a terminal
    assert isinstance(view, PlainView)
