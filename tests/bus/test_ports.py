"""Ports for the servers huddle starts: outside the kernel's ephemeral
range (where client sockets could take them before the server binds),
free when picked, never handed out twice."""

from __future__ import annotations

import socket

import pytest

from bus import ports


def test_ports_come_from_below_the_ephemeral_range_and_are_free() -> None:
    picked = ports.free_ports(40)
    assert len(set(picked)) == 40
    assert all(ports.LOWEST <= p < ports._ephemeral_start() for p in picked)
    for port in picked:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if it was not free


def test_a_port_in_use_or_given_before_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        given = ports.free_port()
        draws = iter([busy, given])  # drawn first, then whatever comes
        real = ports._draw.randrange
        monkeypatch.setattr(ports, "LOWEST", 1024)
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 65536)
        monkeypatch.setattr(ports._draw, "randrange", lambda lo, hi: next(draws, None) or real(lo, hi))
        assert ports.free_port() not in (busy, given)
        assert next(draws, None) is None  # both were drawn and passed over


def test_with_no_room_below_the_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: ports.LOWEST + 10)
    port = ports.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
