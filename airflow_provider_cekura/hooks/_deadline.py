"""A total deadline for everything of an attempt that happens before its answer's body: connect, TLS, send, headers.

A socket timeout bounds one read, not a sequence of them: a server that sends its headers a byte at a time,
each within ``read_timeout``, would keep ``requests`` waiting for them for as long as it likes (the body is
read by the transport itself, which checks the deadline between reads). So while an attempt waits for its
answer's headers, its socket is *watched*: one daemon thread per process keeps the deadlines of the watched
attempts and shuts a socket down when its deadline passes. The blocked read then ends at once (as a dropped
connection, which the transport reports as a timeout because :attr:`Watch.expired` is set), the connection is
discarded by urllib3's pool, and nothing else is touched.

The sockets are made known by the connection classes of :func:`watched_adapter` (``requests`` → urllib3's
pool manager → these pools → these connections): a new connection registers its socket before it connects, a
kept-alive one when it sends its next request. Nothing runs at import, and the thread starts with the first
watched attempt (again in a forked child, such as a Celery worker).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from requests.adapters import HTTPAdapter


class Watch:
    """One attempt under watch: its deadline (``time.monotonic()``) and the socket it is using, if any yet."""

    __slots__ = ("_done", "_lock", "_socket", "deadline", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        """Set when the deadline passed while the attempt was still watched (its socket was shut down)."""
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = False

    def attach(self, sock: socket.socket | None) -> None:
        """The attempt now uses ``sock`` (shut down at once if the deadline has already passed)."""
        with self._lock:
            self._socket = sock
            late = not self._done and time.monotonic() >= self.deadline
        if late:
            self.expire()

    def expire(self) -> None:
        """The deadline passed: end whatever read or write the attempt is blocked in."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                # the plain socket's shutdown, also under an SSL socket: the blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def finish(self) -> None:
        """The headers are in (or the attempt failed): the watch ends and never touches the socket again."""
        with self._lock:
            self._done = True
            self._socket = None


class _Watchdog:
    """The process's one thread that expires watches whose deadline passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._pid = 0

    def reset(self) -> None:
        """In a forked child: the parent's thread and lock state did not come along."""
        self._cond, self._heap, self._pid = threading.Condition(), [], 0

    def add(self, watch: Watch) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first use, or a forked child: the parent's thread is not here
                self._pid, self._heap = os.getpid(), []
                threading.Thread(target=self._run, name="cekura-deadlines", daemon=True).start()
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._heap[0][2] is watch:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, watch = heapq.heappop(self._heap)
            watch.expire()  # a no-op when the attempt finished in time


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog.reset)
_current = threading.local()


@contextlib.contextmanager
def watch(deadline: float) -> Iterator[Watch]:
    """``with watch(deadline) as w: session.request(...)``: the request's socket is shut down at ``deadline``
    if its answer's headers have not all come by then (``w.expired`` tells). Leave the block once the headers
    are in: the body is the caller's to bound."""
    current = Watch(deadline)
    _current.watch = current
    _watchdog.add(current)
    try:
        yield current
    finally:
        current.finish()
        _current.watch = None


def _attach(sock: Any) -> None:
    current: Watch | None = getattr(_current, "watch", None)
    if current is not None:
        current.attach(sock)


@cache
def _adapter_class() -> type[HTTPAdapter]:
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _Watched:
        """Registers the connection's socket with the attempt under watch on this thread."""

        sock: Any

        def _new_conn(self) -> Any:
            sock = super()._new_conn()  # type: ignore[misc]
            _attach(sock)
            return sock

        def request(self, *args: Any, **kwargs: Any) -> Any:
            if self.sock is not None:  # a kept-alive connection: no new socket to register otherwise
                _attach(self.sock)
            return super().request(*args, **kwargs)  # type: ignore[misc]

    class WatchedHTTPConnection(_Watched, HTTPConnection):
        pass

    class WatchedHTTPSConnection(_Watched, HTTPSConnection):
        pass

    class WatchedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    pools = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}

    class WatchedAdapter(HTTPAdapter):
        """An ``HTTPAdapter`` whose connections (also through a proxy) take part in :func:`watch`."""

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(*args, **kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return WatchedAdapter


def watched_adapter(**kwargs: Any) -> HTTPAdapter:
    """A ``requests`` ``HTTPAdapter`` (same arguments) whose attempts can be put under :func:`watch`."""
    return _adapter_class()(**kwargs)
