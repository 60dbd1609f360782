"""Today's limiter (before issue #26), kept runnable as B5's baseline: inject it with ``CekuraHook(rate_limiter=...)``.

A copy of ``airflow_provider_cekura/hooks/_rate_limit.py``'s ``RateLimiter`` as
it was before the CUBIC limiter replaced it (commit 650b837), unchanged except
for :meth:`BaselineLimiter.turn`, which adapts its ``acquire``/``release``/
``admitted``/``throttled`` protocol to the one the hook now calls. Not part of
the package.

Its docstring, then: a throttle pauses every request until ``Retry-After``,
then they are paced at the requests admitted between two throttles divided by
the time between them (the first time, the time since the first request plus
the pause), doubling every :data:`DOUBLING` seconds while nothing is throttled.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import overload

from airflow_provider_cekura.hooks._rate_limit import TurnUnavailable

DOUBLING = 10.0
"""Seconds in which the rate doubles while nothing is throttled."""
MIN_SAMPLES = 10
"""Admitted requests a window between two throttles needs before its estimate may lower the rate."""
MIN_FIRST_SAMPLES = 5
"""Admitted requests the first window (or one after a long calm) needs to give an estimate at all."""
MIN_RATE = 1.0
"""Requests per second the estimate never goes below (``max_requests_per_second`` may)."""
MAX_CUT = 0.5
"""One throttle lowers an established rate at most to this share of it."""
WINDOW_MAX = 30.0
"""Seconds of admitted requests an estimate looks back at, at most."""
INITIAL_IN_FLIGHT = 2.0
"""Requests in flight at first; one more per round trip until a rate is estimated (or 64)."""
MAX_IN_FLIGHT = 64.0


class BaselineLimiter:
    """Shared pause and pacing for the requests of one connection; thread-safe.

    Its old four-call protocol (``acquire``, ``release``, ``admitted``,
    ``throttled``) is kept as it was; :meth:`turn` wraps it in the hook's
    context-manager protocol.

    :param max_rate: requests per second never exceeded (``None``: no known limit).
    """

    def __init__(self, max_rate: float | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.max_rate = max_rate
        self._estimate: float | None = None  # requests/s estimated at the last throttle
        self._estimated_at = 0.0  # when the estimate starts to grow (the end of that pause)
        self._next_slot = 0.0
        self._blocked_until = 0.0
        self._in_flight = 0
        self._window: float | None = INITIAL_IN_FLIGHT  # None: no cap on requests in flight
        self._window_start: float | None = None
        self._after_throttle = False  # the window starts at a throttle (the bucket was empty then)
        self._admitted: deque[float] = deque()  # send times of admitted requests
        self._episode_start = float("-inf")
        self._pending: tuple[float, float] | None = None  # (throttled at, pause) not yet estimated
        self.throttles = 0
        """429 answers seen (every request, every hook of the connection)."""

    def __repr__(self) -> str:
        rate = self.rate()
        shown = "unlimited" if rate is None else f"{rate:.1f}/s"
        return f"BaselineLimiter(rate={shown}, max_rate={self.max_rate}, throttles={self.throttles})"

    @property
    def estimate(self) -> float | None:
        """Requests per second the server admitted, as estimated at the last throttle (``None``: none yet)."""
        return self._estimate

    def rate(self, now: float | None = None) -> float | None:
        """The requests per second allowed now (``None``: not limited)."""
        if self._estimate is None:
            return self.max_rate
        now = time.monotonic() if now is None else now
        grown = self._estimate * 2 ** (min(max(now - self._estimated_at, 0.0), 600.0) / DOUBLING)
        return grown if self.max_rate is None else min(grown, self.max_rate)

    def blocked_for(self) -> float:
        """Seconds until requests may be sent again (0 when not paused)."""
        return max(self._blocked_until - time.monotonic(), 0.0)

    @overload
    def acquire(self) -> float: ...

    @overload
    def acquire(self, deadline: float) -> float | None: ...

    def acquire(self, deadline: float | None = None) -> float | None:
        """Wait until this request may be sent (shared pause, then pacing); returns the send time.

        :param deadline: a ``time.monotonic()`` value; ``None`` is returned (nothing waited) when the
            request could not be sent before it.
        """
        with self._cond:
            while True:
                now = time.monotonic()
                if self._window_start is None:
                    self._window_start = now
                wait: float | None = None
                if now < self._blocked_until:
                    wait = self._blocked_until - now
                elif self._window is not None and self._in_flight >= self._window:
                    wait = None  # until a request in flight answers
                else:
                    if self._pending is not None:
                        self._estimate_rate(*self._pending)
                        self._pending = None
                    rate = self.rate(now)
                    slot = now if rate is None else max(self._next_slot, now - 1 / rate)
                    if slot <= now:  # (a thread woken a little late may still use its slot)
                        if rate is not None:
                            self._next_slot = slot + 1 / rate
                        self._in_flight += 1
                        return now
                    wait = slot - now
                if deadline is not None and (wait is None or now + wait > deadline):
                    if wait is not None or now >= deadline:
                        return None
                    wait = deadline - now
                self._cond.wait(wait)

    def release(self) -> None:
        """The request sent after :meth:`acquire` has its answer (or failed)."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def admitted(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` got an answer other than 429 (the server counted it)."""
        with self._cond:
            self._admitted.append(sent_at)
            while self._admitted and self._admitted[0] < sent_at - WINDOW_MAX:
                self._admitted.popleft()
            if self._window is not None:
                self._window += 1 / self._window  # about one more per round trip
                if self._window >= MAX_IN_FLIGHT:
                    self._window = None
                self._cond.notify_all()

    def throttled(self, sent_at: float, pause: float) -> float:
        """A request sent at ``sent_at`` got 429: pause everyone for ``pause`` s.

        The rate is re-estimated when the pause ends, once the requests sent
        before the throttle have answered. Returns how long the caller must
        sleep itself: 0, since :meth:`acquire` waits for the pause.
        """
        with self._cond:
            now = time.monotonic()
            self.throttles += 1
            self._blocked_until = max(self._blocked_until, now + pause)
            self._next_slot = max(self._next_slot, self._blocked_until)
            if sent_at < self._episode_start or self._pending is not None:
                return 0.0  # sent before the pause began: the same throttle, already accounted for
            self._episode_start = now
            self._pending = (now, pause)
            return 0.0

    def _estimate_rate(self, throttled_at: float, pause: float) -> None:
        """Requests admitted (by send time) since the window began, per second; called under the lock."""
        start = self._window_start if self._window_start is not None else throttled_at
        fresh = not self._after_throttle
        if throttled_at - start > WINDOW_MAX:
            start, fresh = throttled_at - WINDOW_MAX, True
        # A fresh window began with a full bucket, which held about one pause worth of requests.
        span = throttled_at - start + (pause if fresh else 0.0)
        admitted = sum(1 for t in self._admitted if start <= t < throttled_at)
        if admitted >= (MIN_FIRST_SAMPLES if fresh else MIN_SAMPLES) and span > 0:
            self._window = None  # from now on the rate paces
            estimate = admitted / span
            current = self.rate(throttled_at)
            if current is not None:
                estimate = max(estimate, current * MAX_CUT)
            estimate = max(estimate, MIN_RATE)
            self._estimate = estimate if self.max_rate is None else min(estimate, self.max_rate)
            self._estimated_at = self._blocked_until
        elif self._estimate is None and admitted == 0:
            self._window = 1.0  # throttled before anything passed: start again with one request in flight
        self._window_start, self._after_throttle = throttled_at, True
        while self._admitted and self._admitted[0] < throttled_at:
            self._admitted.popleft()

    @contextmanager
    def turn(self, deadline: float | None = None) -> Iterator[_BaselineTurn]:
        """The hook's protocol over :meth:`acquire` / :meth:`release` (``deadline``: a ``time.monotonic()``)."""
        sent_at = self.acquire() if deadline is None else self.acquire(deadline)
        if sent_at is None:
            raise TurnUnavailable("no turn before the deadline")
        try:
            yield _BaselineTurn(self, sent_at)
        finally:
            self.release()


class _BaselineTurn:
    def __init__(self, limiter: BaselineLimiter, sent_at: float) -> None:
        self._limiter = limiter
        self.sent_at = sent_at

    def admitted(self) -> None:
        self._limiter.admitted(self.sent_at)

    def throttled(self, pause: float) -> None:
        self._limiter.throttled(self.sent_at, pause)
