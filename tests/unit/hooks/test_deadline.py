"""``hooks/_deadline``: a watched attempt's socket is shut down at its deadline, and only while it is watched."""

from __future__ import annotations

import socket
import threading
import time

from airflow_provider_cekura.hooks._deadline import Watch, watch


def _blocked_read(sock: socket.socket, into: list[bytes | BaseException]) -> threading.Thread:
    def read() -> None:
        try:
            into.append(sock.recv(10))
        except OSError as err:
            into.append(err)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_read_blocked_past_the_deadline_ends_at_it() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(30)  # what a per-read timeout alone would allow
        got: list[bytes | BaseException] = []
        started = time.monotonic()
        with watch(time.monotonic() + 0.3) as watched:
            watched.attach(ours)
            thread = _blocked_read(ours, got)
            thread.join(10)
        assert not thread.is_alive()
        assert watched.expired
        assert got and not got[0]  # the read ended (EOF), not with data
        assert 0.25 <= time.monotonic() - started < 5


def test_a_finished_watch_never_touches_its_socket() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with watch(time.monotonic() + 0.05) as watched:
            watched.attach(ours)
        time.sleep(0.2)  # past the deadline, after the headers came
        assert not watched.expired
        theirs.sendall(b"body")
        assert ours.recv(10) == b"body"  # the connection still works for the caller's body read


def test_a_socket_attached_after_the_deadline_is_shut_down_at_once() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        late = Watch(time.monotonic() - 1)
        late.attach(ours)
        assert late.expired
        assert ours.recv(10) == b""


def test_watches_expire_in_deadline_order_whatever_the_order_they_came_in() -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    now = time.monotonic()
    watches = [Watch(now + delay) for delay in (0.25, 0.1, 30)]
    try:
        from airflow_provider_cekura.hooks._deadline import _watchdog

        for (ours, _), one in zip(pairs, watches, strict=True):
            one.attach(ours)
            _watchdog.add(one)
        deadline = time.monotonic() + 10
        while not (watches[0].expired and watches[1].expired) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watches[0].expired and watches[1].expired
        assert not watches[2].expired  # its deadline is far off: its socket is untouched
    finally:
        for one in watches:
            one.finish()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
