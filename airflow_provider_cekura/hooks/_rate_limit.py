"""One adaptive rate limiter per Cekura connection and process, shared by every request of every hook.

A 429 means "slow down", not "this call failed". When a request is throttled,
:class:`RateLimiter` *holds* every request of the connection (the throttled one
included), then paces them all at a rate that follows a CUBIC curve, like the
AWS SDKs' *adaptive* retry mode (itself after TCP CUBIC). ``W`` is the *last
good rate*; ``t`` counts seconds since the hold ended.

**The hold and ``Retry-After``.** Servers give ``Retry-After`` in whole seconds
(at least 1), while a token bucket of R requests/s has a token back in 1/R s:
holding every request for the whole second costs a second of the allowance per
429 (most of it, with a small burst). So ``Retry-After`` (bounded by the retry
policy) is an *upper bound*: the hold is :data:`HOLD_INTERVALS` interval at the
rate the connection restarts at (``1 / (BETA * r)``: 0.12 s at 10/s), or
``Retry-After`` when that is shorter. Every request then goes through the pacing
below, which stays under the rate the server was measured to admit, so the
server sees fewer requests than before the 429, never a burst. A server that
*enforces* ``Retry-After`` (refuses every request until it has passed) is
recognised: when :data:`STRICT_AFTER` requests sent between the hold's end and
``Retry-After``'s are refused and none admitted, the limiter is ``strict`` for
good and holds the whole ``Retry-After`` from then on (costing that server at
most those few early requests, once).

* **Until the first throttle** nothing is paced (``max_requests_per_second``,
  when the connection sets it, paces from the start and is never exceeded,
  whatever follows): requests start :data:`INITIAL_IN_FLIGHT` in flight and one
  more per round trip, like TCP's slow start.
* **The first throttle** comes when the server's bucket, full at the start and
  of unknown size, is empty. The requests it admitted divided by their sending
  time overstate its rate by that burst (an upper bound ``U``); divided by the
  sending time *plus ``Retry-After``* they understate it unless the bucket held a
  whole ``Retry-After``'s worth (a lower bound ``L``). The rate climbs from
  ``max(L, BETA * W)`` to ``W = sqrt(L * U)`` in :data:`RECOVERY` seconds, then *searches*, doubling
  every :data:`SEARCH_DOUBLING` seconds, until the next throttle, which then
  sets ``W`` to :data:`TOP_SHARE` x the rate it came at (at least :data:`SEARCH_SHARE` x, at most the
  guess). A throttle met *below* that first guess (the guess was too high:
  with a burst of one token, two requests tell little) sets ``W`` to
  ``(1 + BETA) / 2`` x the rate it came at and restarts at ``BETA * W`` (no
  plateau, no compounding), until a throttle comes above ``W``: a too-high
  guess is left in a few short holds, without falling far below the limit.
* **Every later throttle** comes at a known paced rate ``r``; the rate restarts
  at :data:`BETA` x ``r`` and climbs back to the new ``W`` along a concave
  cubic in :data:`RECOVERY` seconds (fast at first, flat near ``W``):

  - ``r <= W`` (throttled on the way back or on the plateau): the share shrank,
    another client arrived or the limit fell. ``W = (1 + BETA) / 2 * r``, TCP
    CUBIC's *fast convergence*, which leaves room for the newcomer.
  - ``W < r <= RAISED * W`` (throttled while probing, not far above ``W``):
    the limit is where it was. ``W`` moves halfway to :data:`TOP_SHARE` x ``r``
    and the *plateau* (time spent at ``W`` before probing again) grows: 1, 3,
    7, then :data:`MAX_PLATEAU` seconds.
  - ``r > RAISED * W``: the limit rose; ``W = TOP_SHARE * r`` and no plateau.

  A throttle met on the way back (within :data:`RECOVERY` seconds of the
  hold's end) below ``BETA * W`` means the limit fell far: the restart rate
  compounds, ``BETA**2``, ``BETA**3``... of ``r``, so a limit divided by 4 is
  reached in 3 holds, not 7 (just below ``W``, a jittery arrival is as likely:
  no compounding).
  Whatever the throttles, the rate stays above :data:`PEAK_SHARE` (1/8) of the
  highest ``W`` of the last :data:`PEAK_MEMORY` seconds: a server that
  throttles at random, whatever the rate, is obeyed, not chased to a crawl.

* **Probing** after the plateau follows the convex cubic
  ``W + CUBIC_C * t'**3`` requests/s (+0.1 after 1 s, +0.8 after 2 s,
  +12.5 after 5 s, +100 after 10 s), so a limit that was raised, or a throttle
  caused by someone else, is forgotten within seconds.

Why: a throttle costs a hold of every request of the connection and a
request answered 429, so the limit must be met rarely: hence the plateau,
which lengthens while the limit stays put, and :data:`BETA` = 0.8 rather than
CUBIC's 0.7 (the hold already costs more than a dropped packet does). The rate
at a throttle is a little above the limit, more so the larger the bucket's
burst (which hides an excess for a while), hence :data:`TOP_SHARE` (0.95: with
a burst of one token, the rate at a throttle is within a few per cent of the
limit, and every per cent below it is lost for the whole plateau). The probe grows in requests per second, not as a share of
``W``: as in TCP, that is what lets several processes spending one key converge
to fair shares without sharing anything (each cuts its own rate by a share of
it on its own 429s and grows back by the same amount as the others; the larger
share gives up more). The hold is never counted as time the server was slow:
rates are measured over the time requests were being sent, by send time (a
request in flight when another was throttled belongs to the same episode: one
decrease per episode), and the rate is re-estimated when the hold ends, once
those have answered.

Processes spending one key share nothing here. With the connection extra ``rate_limit_store`` (a Redis),
:func:`shared_limiter` gives them :class:`~airflow_provider_cekura.hooks._rate_limit_store.SharedRateLimiter`
instead: this algorithm, with its state and pacing kept in Redis, so they are one client of the server.

The limiter only waits in the thread that sends; the trigger runs the sync hook
in worker threads, so the triggerer's event loop never waits for it. Time is
injected (``clock``, ``sleep``) so the algorithm can be tested without waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_cekura.hooks._config import RateLimitStore

BETA = 0.8
"""Share of the rate at a throttle the rate restarts at after the hold."""
TOP_SHARE = 0.95
"""Share of the rate at a throttle taken as the last good rate ``W`` (the limit was just passed)."""
SEARCH_SHARE = 0.7
"""The same after a throttle met while searching (doubling overshoots further)."""
RECOVERY = 2.0
"""Seconds the rate takes to climb back to the last good rate."""
CUBIC_C = 0.1
"""The probe above ``W``: ``W + CUBIC_C * t**3`` requests/s, ``t`` seconds after the plateau."""
RAISED = 1.5
"""A throttle above this many times ``W`` means the limit rose."""
PLATEAU_STEP = 1.0
"""Seconds the plateau grows by (then doubles) each time the limit is met where it was."""
MAX_PLATEAU = 8.0
"""The longest plateau, in seconds."""
SEARCH_DOUBLING = 1.0
"""Seconds in which the rate doubles while searching (after the first throttle, until the next)."""
PEAK_SHARE = 0.125
"""The rate never falls below this share of the highest last good rate of the last PEAK_MEMORY seconds..."""
PEAK_MEMORY = 300.0
"""... so random 429s cannot drive it to a crawl, while a limit divided by more than 8 is followed only after this."""
MIN_RATE = 1.0
"""Requests per second the rate never goes below (``max_requests_per_second`` may)."""
INITIAL_IN_FLIGHT = 2.0
"""Requests in flight at first; one more per round trip until the first throttle (or 64)."""
MAX_IN_FLIGHT = 64.0
HOLD_INTERVALS = 1.0
"""After a 429 the connection holds this many intervals at the rate it restarts at, if shorter than ``Retry-After``."""
STRICT_AFTER = 2
"""429s, with nothing admitted, for requests sent between the hold's end and ``Retry-After``'s that show a server
enforcing ``Retry-After`` for every request: the connection then holds the whole ``Retry-After``."""
CATCH_UP = 0.1
"""Share of one interval a request woken late may take back from the next (bursts stay under 1.1 requests)."""


class TurnUnavailable(Exception):
    """The turn could not start before the deadline (nothing was sent)."""


class Turn:
    """One request's passage through the limiter; report the answer with :meth:`admitted` or :meth:`throttled`.

    :param limiter: the limiter that granted the turn.
    :param sent_at: ``clock()`` when the turn started.
    """

    __slots__ = ("_limiter", "sent_at")

    def __init__(self, limiter: RateLimiter, sent_at: float) -> None:
        self._limiter = limiter
        self.sent_at = sent_at

    def admitted(self) -> None:
        """The server answered with anything but 429 (it counted the request)."""
        self._limiter._on_admitted(self.sent_at)

    def throttled(self, pause: float) -> float:
        """The server answered 429: every request of the connection waits, at most ``pause`` seconds.

        :param pause: ``Retry-After`` in seconds, bounded and finite (chosen by the retry policy).
        :return: the seconds the connection holds (``pause``, or less: see :class:`RateLimiter`).
        """
        return self._limiter._on_throttled(self.sent_at, pause)


class RateLimiter:
    """Shared hold and pacing for the requests of one connection; thread-safe.

    ``with limiter.turn(deadline) as turn:`` send, then ``turn.admitted()`` or
    ``turn.throttled(pause)`` (neither on a transport error).

    :param max_rate: requests per second never exceeded (``None``: no known limit).
    :param clock: the time in seconds (monotonic).
    :param sleep: how to wait that many seconds of ``clock``.
    """

    def __init__(
        self,
        max_rate: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._clock = clock
        self._sleep = sleep
        self.max_rate = max_rate
        self._searching = False  # doubling above the first guess, until the next throttle
        self._guessing = False  # W is still the first guess or below it (no throttle above W yet)
        self._peak, self._peak_at = 0.0, 0.0  # the highest W lately, and when
        self._streak = 0  # throttles in a row met on the way back to W
        self._plateau = 0.0  # seconds the rate stays at W before probing above it
        self._rtt = float("inf")
        self._last_good: float | None = None  # W: the rate at the last throttle
        self._floor = 0.0  # the rate the current climb starts at
        self._epoch = 0.0  # when the current climb started (the end of the last hold)
        self._next_slot = 0.0
        self._blocked_until = float("-inf")
        self._in_flight = 0
        self._window: float | None = INITIAL_IN_FLIGHT  # in-flight cap until the first throttle
        self._window_start: float | None = None  # the sending time measured starts here
        self._admitted = 0  # requests sent since _window_start that were admitted
        self._episode_start = float("-inf")  # requests sent before this belong to the last throttle
        self._pending: tuple[float, float, float | None] | None = None  # (sent at, pause, rate then)
        self._hold_end, self._retry_end = float("-inf"), float("-inf")  # the last throttle's hold and Retry-After
        self._early = [0, 0]  # requests sent between the two: [admitted, throttled]
        self.strict = False
        """Whether the server was seen enforcing ``Retry-After`` (the connection then holds all of it)."""
        self._hold = 0.0  # the connection's hold after the last throttle
        self.throttles = 0
        """429 answers seen (every request, every hook of the connection)."""

    def __repr__(self) -> str:
        rate = self.rate()
        shown = "unlimited" if rate is None else f"{rate:.1f}/s"
        return f"RateLimiter(rate={shown}, max_rate={self.max_rate}, throttles={self.throttles})"

    @property
    def estimate(self) -> float | None:
        """The last good rate (requests/s at the last throttle; ``None``: never throttled)."""
        return self._last_good

    def rate(self, now: float | None = None) -> float | None:
        """The requests per second allowed at ``now`` (default: the clock's now; ``None``: not limited)."""
        if self._last_good is None:
            return self.max_rate
        now = self._clock() if now is None else now
        t = min(max(now - self._epoch, 0.0), 600.0)
        top = self._last_good
        if t < RECOVERY:
            rate = top - (top - self._floor) * ((RECOVERY - t) / RECOVERY) ** 3
        elif self._searching:
            rate = top * 2 ** ((t - RECOVERY) / SEARCH_DOUBLING)
        else:
            rate = top + CUBIC_C * max(t - RECOVERY - self._plateau, 0.0) ** 3
        rate = max(rate, MIN_RATE)
        return rate if self.max_rate is None else min(rate, self.max_rate)

    @contextmanager
    def turn(self, deadline: float | None = None) -> Iterator[Turn]:
        """Wait until a request may be sent (shared hold, then pacing) and hold its in-flight slot.

        :param deadline: a ``clock()`` time; :class:`TurnUnavailable` is raised (nothing waited
            beyond it) when the request could not start before it.
        :raises TurnUnavailable: the turn could not start before ``deadline``.
        """
        sent_at = self._start(deadline)
        try:
            yield Turn(self, sent_at)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _start(self, deadline: float | None) -> float:
        while True:
            with self._cond:
                now = self._clock()
                wait = self._try_start(now)
                if wait == 0.0:
                    return now
                if deadline is not None and (now >= deadline or (wait is not None and now + wait > deadline)):
                    raise TurnUnavailable("the turn could not start before the deadline")
                if wait is None:  # until a request in flight answers (only before the first throttle)
                    self._cond.wait(None if deadline is None else deadline - now)
                    continue
            self._sleep(wait)

    def _try_start(self, now: float) -> float | None:
        """Start a turn at ``now`` (0.0), or say how long to wait (``None``: until a request answers)."""
        if self._window_start is None:
            self._window_start = now
        if now < self._blocked_until:
            return self._blocked_until - now
        if self._pending is not None:
            self._estimate(*self._pending)
            self._pending = None
        if self._window is not None and self._in_flight >= self._window:
            return None
        rate = self.rate(now)
        if rate is not None:
            interval = 1 / rate
            slot = max(self._next_slot, now - CATCH_UP * interval)
            if slot > now:
                return slot - now
            self._next_slot = slot + interval
        self._in_flight += 1
        return 0.0

    def _on_admitted(self, sent_at: float) -> None:
        with self._cond:
            self._admit(sent_at)

    def _admit(self, sent_at: float) -> None:
        """An admitted answer to a request sent at ``sent_at``; called under the lock."""
        self._rtt = min(self._rtt, self._clock() - sent_at)
        if self._window_start is not None and sent_at >= self._window_start:
            self._admitted += 1
        if self._hold_end <= sent_at < self._retry_end:
            self._early[0] += 1
        if self._window is not None:
            self._window += 1 / self._window  # about one more per round trip
            if self._window >= MAX_IN_FLIGHT:
                self._window = None
            self._cond.notify_all()

    def _on_throttled(self, sent_at: float, pause: float) -> float:
        with self._cond:
            return self._throttle(sent_at, pause)

    def _throttle(self, sent_at: float, pause: float) -> float:
        """A 429 to a request sent at ``sent_at``: set the hold; return its length. Called under the lock."""
        now = self._clock()
        self.throttles += 1
        self._rtt = min(self._rtt, now - sent_at)
        if self._hold_end <= sent_at < self._retry_end:
            self._early[1] += 1
            if self._early[0] == 0 and self._early[1] >= STRICT_AFTER:
                self.strict = True  # requests sent before Retry-After are all refused: honour it whole
        if sent_at < self._episode_start or self._pending is not None:
            # sent before the pause began: the same throttle, already accounted for
            self._blocked_until = max(self._blocked_until, now + (pause if self.strict else min(pause, self._hold)))
            self._next_slot = max(self._next_slot, self._blocked_until)
            return self._blocked_until - now
        self._episode_start = now
        paced = self.rate(sent_at)
        self._pending = (sent_at, pause, paced)
        self._hold = pause if self.strict else min(pause, HOLD_INTERVALS / self._restart_rate(sent_at, pause, paced))
        self._blocked_until = max(self._blocked_until, now + self._hold)
        self._next_slot = max(self._next_slot, self._blocked_until)
        if sent_at >= self._retry_end:  # (a refusal before the last Retry-After keeps counting)
            self._early = [0, 0]
        self._hold_end, self._retry_end = self._blocked_until, max(self._retry_end, now + pause)
        return self._blocked_until - now

    def _restart_rate(self, sent_at: float, pause: float, paced: float | None) -> float:
        """About the rate the connection restarts at after this throttle (what the hold is measured in)."""
        if paced is not None and self._last_good is not None:
            return max(BETA * paced, MIN_RATE)
        restart = self._first_estimate(sent_at, pause)[1]
        return max(restart if self.max_rate is None else min(restart, self.max_rate), MIN_RATE)

    def _first_estimate(self, sent_at: float, pause: float) -> tuple[float, float]:
        """``(W, the rate to restart at)`` at the first throttle, from the requests admitted until then."""
        start = self._window_start if self._window_start is not None else sent_at
        span = max(sent_at - start, 1e-3)
        admitted = self._admitted
        sent = max(admitted, 1) + 1  # (the throttled request included)
        round_trip = self._rtt if self._rtt < float("inf") else span  # (none answered yet: unknown)
        upper, lower = sent / max(span, round_trip), max(admitted, 1) / (span + pause)
        top = (upper * lower) ** 0.5
        return top, max(lower, BETA * top)

    def _estimate(self, sent_at: float, pause: float, paced: float | None) -> None:
        """Set the last good rate and restart the climb, at the end of a hold; called under the lock."""
        previous = self._last_good
        if paced is not None and previous is not None:
            # throttled again on the way back to W: the limit fell far, cut deeper each time
            # (only below BETA x W: just under W, a jittery arrival or a late reply is as likely)
            back = sent_at - self._epoch < RECOVERY and paced < BETA * previous
            self._streak = self._streak + 1 if back else 0
            beta = BETA ** (1 + self._streak)
            floor = beta * paced
            if self._searching and paced > previous:  # doubling above the first guess overshot
                top, self._plateau = max(SEARCH_SHARE * paced, min(previous, TOP_SHARE * paced)), 0.0
            elif paced <= previous and self._guessing:  # on the way back to a guess never held: too high
                top, self._plateau = paced * (1 + BETA) / 2, 0.0
                floor = BETA * top
            elif paced <= previous:  # fast convergence: throttled below W, the share shrank; leave room
                top, self._plateau = paced * (1 + BETA) / 2, 0.0
            elif paced <= previous * RAISED:  # above W again, not far: the limit is stable
                top = (previous + TOP_SHARE * paced) / 2
                self._plateau = min(2 * self._plateau + PLATEAU_STEP, MAX_PLATEAU)
                floor = max(floor, BETA * previous)
            else:  # far above W: the limit rose
                top, self._plateau = TOP_SHARE * paced, 0.0
            self._searching, self._guessing = False, self._guessing and paced <= previous
        else:  # the first throttle: a bucket of unknown size was emptied
            top, floor = self._first_estimate(sent_at, pause)
            if paced is not None:  # max_requests_per_second paced it
                top = min(top, paced)
            self._window = None
            self._searching = self._guessing = True
        # Never below a share of the highest W of the last PEAK_MEMORY seconds: a server that throttles
        # at random (whatever the rate) is obeyed, not chased down to a crawl.
        now = self._blocked_until
        if top >= self._peak or now - self._peak_at > PEAK_MEMORY:
            self._peak, self._peak_at = top, now
        top, floor = max(top, PEAK_SHARE * self._peak), max(floor, PEAK_SHARE * self._peak)
        if self.max_rate is not None:
            top = min(top, self.max_rate)
        self._last_good = max(top, MIN_RATE)
        self._floor = max(min(floor, self._last_good), MIN_RATE)
        self._epoch = self._blocked_until
        self._window_start, self._admitted = self._blocked_until, 0


_LIMITERS: dict[tuple[str, str, RateLimitStore | None], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(
    conn_id: str, base_url: str, max_rate: float | None, store: RateLimitStore | None = None
) -> RateLimiter:
    """The process's one limiter for this connection id and host (created on first use).

    ``max_rate`` comes from the connection; when it changed, the latest value applies. With ``store`` (the
    connection's ``rate_limit_store``), the limiter shares one budget with every process through that Redis
    (:class:`~airflow_provider_cekura.hooks._rate_limit_store.SharedRateLimiter`, imported only then).

    :raises CekuraConfigurationError: ``store`` is set but the ``redis`` package is not installed.
    """
    key = (conn_id, base_url, store)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = (
                RateLimiter(max_rate) if store is None else _store_limiter(store, conn_id, base_url, max_rate)
            )
        else:
            limiter.max_rate = max_rate
        return limiter


def _store_limiter(store: RateLimitStore, conn_id: str, base_url: str, max_rate: float | None) -> RateLimiter:
    try:
        from airflow_provider_cekura.hooks._rate_limit_store import SharedRateLimiter
    except ImportError as err:
        from airflow_provider_cekura.exceptions import CekuraConfigurationError

        raise CekuraConfigurationError(
            f"Connection {conn_id!r} sets rate_limit_store, which needs the redis package ({err}): "
            "pip install 'airflow-provider-cekura[redis]'"
        ) from None
    return SharedRateLimiter(store, conn_id, base_url, max_rate)


def reset_shared_limiters() -> None:
    """Forget every shared limiter (a forked child starts afresh; tests start each case clean)."""
    global _LIMITERS_LOCK
    _LIMITERS_LOCK = threading.Lock()
    _LIMITERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_shared_limiters)
