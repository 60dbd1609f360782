"""One rate budget for every process spending a connection, kept in Redis (the extra ``rate_limit_store``).

Without it each process paces its own requests (:class:`~airflow_provider_cekura.hooks._rate_limit.RateLimiter`),
and several processes on one key meet the server's limit as TCP flows do: each adapts to its own 429s, and
together they reach less than one process alone. With ``rate_limit_store`` (a Redis the deployment already runs,
such as the Celery broker's), :class:`SharedRateLimiter` makes them one client of the server:

* **One pacer.** A GCRA ("theoretical arrival time", the ``tat`` field) in one Redis hash, advanced atomically
  by a Lua script with Redis' ``TIME`` as the clock, so processes on several machines agree. A turn takes the
  next slot at the shared rate when it has come, else sleeps until then and asks again; one thread per process
  asks at a time. Slots are not reserved ahead: 32 threads reserving at a low rate would queue seconds of
  slots that a rate climbing back after a 429 could not use (measured: half the limit).
* **One controller.** The adaptive algorithm is the per-process limiter's, unchanged: its state (last good rate
  ``W``, the climb's floor and start, plateau, hold, strictness, ...) is a JSON blob in the same hash with a
  version. A 429 seen by any process loads it, applies the algorithm with Redis' time, and saves it only if
  no other process saved in between (a compare-and-set script; else it loads and applies again). The new
  rate is estimated when the hold ends, as in one process, by the first process that turns then. A 429 to a
  request sent before the last throttle belongs to that episode: it may lengthen the hold, never cuts the rate
  again. So 4 processes cut the rate once per episode, as one process would, and climb back together.
* **Cheap.** A turn costs one round trip to Redis, or a few when processes compete for a slot; a 429 two more. Admitted
  requests are counted in the process and sent with its next turn, or at once until the first 429 (whose
  estimate of the server's rate is the answers admitted since the first turn over the time they took).
  Before the first 429 anywhere, each process sends at most a slow-start window of requests in flight.

Why not the ``limits`` library: its strategies are fixed amounts per window (fixed, moving, sliding); an
adaptive rate that follows the server's 429s, a hold after them and one cut per episode need the state and
the compare-and-set above, which a small script over ``redis`` (redis-py) does in a few lines.

``max_requests_per_second`` stays an upper bound: with a store, of the connection's requests in all
processes together (they share one pacer). The hash (``cekura:rate-limit:`` and a digest of the host and
the connection id; never the key) expires after an hour unused.

**When Redis does not answer** (down, unreachable, refusing the password, or slower than
:data:`STORE_TIMEOUT`), the process paces alone with a limiter of its own, logs one warning (the URL without
its password), and tries the store again after :data:`RETRY_STORE` seconds: a task never fails because the
store blipped. The URL's password never appears in a log, repr or exception of this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from airflow_provider_cekura.hooks._rate_limit import CATCH_UP, RateLimiter, Turn, TurnUnavailable

if TYPE_CHECKING:
    from airflow_provider_cekura.hooks._config import RateLimitStore

log = logging.getLogger(__name__)

KEY_PREFIX = "cekura:rate-limit:"
KEY_TTL = 3600.0
"""Seconds a budget's hash lives unused (every turn renews it)."""
STORE_TIMEOUT = 1.0
"""Seconds to connect to the store, and for one command, before the process paces alone."""
RETRY_STORE = 15.0
"""Seconds a process that lost the store paces alone before it tries the store again."""
SAVE_TRIES = 8
"""Load-apply-save rounds for one 429 when other processes keep saving in between."""
STORE_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

_STATE = (
    "_searching",
    "_guessing",
    "_peak",
    "_peak_at",
    "_streak",
    "_plateau",
    "_rtt",
    "_last_good",
    "_floor",
    "_epoch",
    "_blocked_until",
    "_episode_start",
    "_hold_end",
    "_retry_end",
    "_hold",
    "strict",
)
"""The controller's state shared through the store (the slow-start window, the in-flight count and the
429 count stay in the process)."""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f(x) return string.format('%.6f', x) end
"""

TURN_SCRIPT = (
    _NOW
    + """
local key = KEYS[1]
redis.call('HSETNX', key, 'start', f(now))
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', key, 'admitted', ARGV[3]) end
if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', key, 'early', ARGV[4]) end
redis.call('PEXPIRE', key, ARGV[6])
local version = redis.call('HGET', key, 'v') or '0'
if version ~= ARGV[1] then
  local s = redis.call('HMGET', key, 'state', 'start', 'admitted', 'early')
  return {'stale', f(now), version, s[1] or '', s[2] or '', s[3] or '0', s[4] or '0'}
end
local hold = tonumber(redis.call('HGET', key, 'until') or '0')
if now < hold then return {'wait', f(now), f(hold - now)} end
local interval = tonumber(ARGV[2])
if interval <= 0 then return {'go', f(now)} end
local slot = math.max(tonumber(redis.call('HGET', key, 'tat') or '0'), now - tonumber(ARGV[5]) * interval)
if slot > now then return {'wait', f(now), f(slot - now)} end
redis.call('HSET', key, 'tat', f(slot + interval))
return {'go', f(now)}
"""
)
"""A turn: ``ARGV`` = the version the caller's rate comes from, its interval (0: unpaced), admitted and
early-admitted answers since its last call, the catch-up share, the TTL in ms. Replies ``go`` (the slot is
taken); ``wait`` seconds (nothing reserved: a slot is taken only when it has come, so a rate that changed
while a process waited applies at once); or ``stale`` with the state to load first."""

LOAD_SCRIPT = (
    _NOW
    + """
local s = redis.call('HMGET', KEYS[1], 'v', 'state', 'start', 'admitted', 'early')
return {f(now), s[1] or '0', s[2] or '', s[3] or '', s[4] or '0', s[5] or '0'}
"""
)
"""The controller's state and the store's time, for a 429."""

SAVE_SCRIPT = """
local key = KEYS[1]
if (redis.call('HGET', key, 'v') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', key, 'v', ARGV[2], 'state', ARGV[3], 'until', ARGV[4], 'start', ARGV[5],
           'admitted', ARGV[6], 'early', ARGV[7])
local tat = tonumber(redis.call('HGET', key, 'tat') or '0')
if ARGV[9] == '1' or tat < tonumber(ARGV[4]) then redis.call('HSET', key, 'tat', ARGV[4]) end
redis.call('PEXPIRE', key, ARGV[8])
return 1
"""
"""Compare-and-set of the controller's state after a 429: saved only if the version is still ``ARGV[1]``; a
new episode (``ARGV[9]``) drops every reservation (the pacer restarts at the hold's end)."""


class _StoreDown(Exception):
    """The store failed while this thread waited for its turn to ask it: pace alone at once."""


def _decode(state: str) -> dict[str, Any]:
    """The stored controller state, or a fresh controller's when there is none or it is unreadable (say,
    written by another version of this provider: starting afresh beats failing a task)."""
    if state:
        try:
            source = json.loads(state)
            if isinstance(source, dict) and all(name in source for name in _STATE):
                return source
        except ValueError:
            pass
    return vars(RateLimiter())


def budget_key(conn_id: str, base_url: str) -> str:
    """The Redis key of a connection's budget: a digest of the host and the connection id (never the API key)."""
    return KEY_PREFIX + hashlib.sha256(f"{base_url}\n{conn_id}".encode()).hexdigest()[:32]


class SharedRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose pacing and adaptive state live in Redis, shared by every process.

    Same interface (``with limiter.turn(deadline) as turn:``); ``deadline`` is a time of ``clock`` (local);
    :attr:`Turn.sent_at` is on the store's clock (Redis ``TIME``, as the algorithm reasons).

    :param store: the ``rate_limit_store`` URL.
    :param conn_id: the connection id (named in logs; with ``base_url``, the budget's key).
    :param base_url: the API's base URL.
    :param max_rate: requests per second never exceeded by all processes together (``None``: no known limit).
    :param clock: the local time in seconds (monotonic), for deadlines.
    :param sleep: how to wait that many seconds of ``clock``.
    """

    def __init__(
        self,
        store: RateLimitStore,
        conn_id: str,
        base_url: str,
        max_rate: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._local_clock = clock
        self._offset = 0.0  # the store's time minus the local clock, at the last answer
        self._own_throttles = 0
        self._fallback = RateLimiter(max_rate, clock=clock, sleep=sleep)
        super().__init__(max_rate, clock=self._store_now, sleep=sleep)
        self.store, self.conn_id = store, conn_id
        self.key = budget_key(conn_id, base_url)
        self._client = redis.Redis.from_url(
            store.reveal(),
            socket_timeout=STORE_TIMEOUT,
            socket_connect_timeout=STORE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # (redis-py retries 10 times by default) one try, then pace alone
            decode_responses=True,
        )
        self._turn_script = self._client.register_script(TURN_SCRIPT)
        self._load_script = self._client.register_script(LOAD_SCRIPT)
        self._save_script = self._client.register_script(SAVE_SCRIPT)
        self._gate = threading.Lock()  # one thread of this process asks the store at a time
        self._version = ""  # never a stored version: the first turn loads the state
        self._unsent = [0, 0]  # admitted answers (since the window's start, early) not yet counted in the store
        self._down_until = -math.inf  # the store failed: pace alone until then
        self._lost = False

    def __repr__(self) -> str:
        rate = self.rate()
        shown = "unlimited" if rate is None else f"{rate:.1f}/s"
        mode = "alone: the store did not answer" if self._lost else "shared"
        return (
            f"SharedRateLimiter(store={self.store.shown!r}, {mode}, rate={shown}, max_rate={self.max_rate}, "
            f"throttles={self.throttles})"
        )

    # --------------------------------------------------------------------------- what the process sees

    @property
    def max_rate(self) -> float | None:
        return self._max_rate

    @max_rate.setter
    def max_rate(self, value: float | None) -> None:
        self._max_rate = value
        self._fallback.max_rate = value

    @property
    def throttles(self) -> int:
        """429 answers this process saw (through the store, or pacing alone)."""
        return self._own_throttles + self._fallback.throttles

    @throttles.setter
    def throttles(self, value: int) -> None:
        self._own_throttles = value - self._fallback.throttles

    @property
    def shared(self) -> bool:
        """Whether the store answered last time (``False``: this process paces alone for now)."""
        return not self._lost

    def _store_now(self) -> float:
        return self._local_clock() + self._offset

    def _heard(self, asked: float, stamp: str) -> float:
        """The store's time ``stamp``, taken as the middle of the round trip that started at ``asked``."""
        now = float(stamp)
        self._offset = now - (asked + self._local_clock()) / 2
        if self._lost:
            self._lost = False
            log.info("Connection %r: the rate limit store %s answers again", self.conn_id, self.store.shown)
        return now

    def _failed(self, err: BaseException) -> None:
        self._down_until = self._local_clock() + RETRY_STORE
        if not self._lost:
            self._lost = True
            log.warning(
                "Connection %r: the rate limit store %s did not answer (%s: %s); this process paces its own "
                "requests until it does (tried again every %gs)",
                self.conn_id, self.store.shown, type(err).__name__, self.store.redact(str(err))[:200], RETRY_STORE,
            )  # fmt: skip

    # --------------------------------------------------------------------------- the protocol

    @contextmanager
    def turn(self, deadline: float | None = None) -> Iterator[Turn]:
        """Wait for the shared hold and the shared pacer (or this process's own, while the store is down).

        :param deadline: a ``clock()`` time; :class:`TurnUnavailable` when the turn could not start before it.
        :raises TurnUnavailable: the turn could not start before ``deadline``.
        """
        if self._local_clock() >= self._down_until:
            try:
                sent_at = self._start(deadline)
            except _StoreDown:
                pass
            except STORE_ERRORS as err:
                self._failed(err)
            else:
                try:
                    yield Turn(self, sent_at)
                finally:
                    self._release()
                return
        with self._fallback.turn(deadline) as turn:
            yield turn

    def _release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _start(self, deadline: float | None) -> float:
        with self._cond:  # the slow-start window (this process's, until the first 429 anywhere)
            while self._window is not None and self._in_flight >= self._window:
                now = self._local_clock()
                if deadline is not None and now >= deadline:
                    raise TurnUnavailable("the turn could not start before the deadline")
                self._cond.wait(None if deadline is None else deadline - now)
            self._in_flight += 1
        try:
            # One thread of the process at a time asks the store (the others queue here): the processes,
            # not their threads, compete for each slot.
            timeout = -1.0 if deadline is None else max(deadline - self._local_clock(), 0.0)
            if not self._gate.acquire(timeout=timeout):
                raise TurnUnavailable("the turn could not start before the deadline")
            try:
                if self._local_clock() < self._down_until:
                    raise _StoreDown  # it failed while this thread queued: do not wait for it again
                return self._await_store(deadline)
            finally:
                self._gate.release()
        except BaseException:
            self._release()
            raise

    def _await_store(self, deadline: float | None) -> float:
        while True:
            with self._cond:
                if self._pending is not None and self._clock() >= self._blocked_until:
                    self._settle()
                rate = self.rate()
                admitted, early = self._unsent
                self._unsent = [0, 0]
                version = self._version
            asked = self._local_clock()
            reply = self._turn_script(
                keys=[self.key],
                args=[version, f"{0.0 if rate is None else 1 / rate:.9f}", admitted, early, CATCH_UP,
                      int(KEY_TTL * 1000)],
            )  # fmt: skip
            with self._cond:
                now = self._heard(asked, reply[1])
                if reply[0] == "stale":
                    self._load(*reply[2:])
                    continue
                if reply[0] == "go":
                    return now
            wait = float(reply[2])
            if deadline is not None and self._local_clock() + wait > deadline:
                raise TurnUnavailable("the turn could not start before the deadline")
            self._sleep(wait)

    def _load(self, version: str, state: str, start: str, admitted: str, early: str) -> None:
        """Take the controller's state from the store (under the lock)."""
        self._version = version
        rtt = self._rtt
        source = _decode(state)
        for name in _STATE:
            setattr(self, name, source[name])
        self._rtt = min(rtt, self._rtt)
        self._early = [int(early), int(source.get("early_throttled", 0))]
        self._window_start = float(start) if start else None
        self._admitted = int(admitted)
        pending = source.get("pending")
        self._pending = None if pending is None else (pending[0], pending[1], pending[2])
        if self._last_good is not None:
            self._window = None  # paced from now on: no slow start

    def _dump(self) -> str:
        state = {name: getattr(self, name) for name in _STATE}
        state["early_throttled"] = self._early[1]
        state["pending"] = self._pending
        return json.dumps(state)

    def _on_admitted(self, sent_at: float) -> None:
        with self._cond:
            before = (self._admitted, self._early[0])
            self._admit(sent_at)  # (counts locally; the counts go to the store with the next turn...)
            self._unsent[0] += self._admitted - before[0]
            self._unsent[1] += self._early[0] - before[1]
            if self._last_good is not None or not self._unsent[0] or self._local_clock() < self._down_until:
                return
            unsent, self._unsent[0] = self._unsent[0], 0
        try:  # ... but before the first 429 anywhere, at once: its estimate counts every process's answers
            self._client.hincrby(self.key, "admitted", unsent)
        except STORE_ERRORS as err:
            self._failed(err)

    def _on_throttled(self, sent_at: float, pause: float) -> float:
        if self._local_clock() < self._down_until:
            return self._fallback._on_throttled(self._local_clock(), pause)
        try:
            with self._cond:
                return self._throttle_shared(sent_at, pause)
        except STORE_ERRORS as err:
            self._failed(err)
            return self._fallback._on_throttled(self._local_clock(), pause)

    def _throttle_shared(self, sent_at: float, pause: float) -> float:
        """Load the shared state, apply the 429, save it unless another process saved first (then again)."""
        for _ in range(SAVE_TRIES):
            version = self._fetch()
            episode = self._episode_start
            hold = self._throttle(sent_at, pause)
            if self._pending is None and self._last_good is not None:  # the same episode, a longer hold:
                self._epoch = max(self._epoch, self._blocked_until)  # the climb starts after it
            if self._save(version, new_episode=self._episode_start != episode):
                return hold
            self._own_throttles -= 1  # another process saved in between: load and apply again
        raise redis.exceptions.RedisError("the rate limit state kept changing under this process")

    def _settle(self) -> None:
        """The hold of the last episode is over: estimate the rate (once, by whichever process comes first)."""
        for _ in range(SAVE_TRIES):
            self._fetch()
            if self._pending is None or self._clock() < self._blocked_until:
                return  # another process estimated it, or the hold was lengthened
            version = self._version
            self._estimate(*self._pending)
            self._pending = None
            if self._save(version, new_episode=False):
                return
        raise redis.exceptions.RedisError("the rate limit state kept changing under this process")

    def _fetch(self) -> str:
        """Load the shared state (and this process's uncounted answers) under the lock; return its version."""
        asked = self._local_clock()
        stamp, version, state, start, admitted, early = self._load_script(keys=[self.key])
        self._heard(asked, stamp)
        self._load(version, state, start, admitted, early)
        self._admitted += self._unsent[0]
        self._early[0] += self._unsent[1]
        return version

    def _save(self, version: str, *, new_episode: bool) -> bool:
        """Compare-and-set the state loaded at ``version``; a new episode drops the pacer's queue."""
        start = self._window_start if self._window_start is not None else self._blocked_until
        saved = self._save_script(
            keys=[self.key],
            args=[version, str(int(version) + 1), self._dump(), f"{self._blocked_until:.6f}", f"{start:.6f}",
                  self._admitted, self._early[0], int(KEY_TTL * 1000), "1" if new_episode else "0"],
        )  # fmt: skip
        if not saved:
            return False
        self._version = str(int(version) + 1)
        self._unsent = [0, 0]
        if self._last_good is not None:
            self._window = None
        return True
