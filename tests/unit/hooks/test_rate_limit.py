"""The rate limiter's algorithm on a fake clock: nothing here waits in real time.

One client sends its requests one after another (20 ms round trips) to a token-bucket server that
answers 429 with ``Retry-After`` in whole seconds, like the emulator's; time only moves when the
limiter sleeps or a request travels. The hook's side (real requests against the emulator) is in
``test_hook_rate_limit.py``; throughput figures are benchmark B5's.
"""

from __future__ import annotations

import email.utils
import math
import threading
from dataclasses import dataclass, field

import pytest

from airflow_provider_cekura.hooks._http import RetryPolicy, parse_retry_after
from airflow_provider_cekura.hooks._rate_limit import (
    BETA,
    HOLD_INTERVALS,
    STRICT_AFTER,
    RateLimiter,
    TurnUnavailable,
    reset_shared_limiters,
    shared_limiter,
)

LATENCY = 0.02


class FakeClock:
    """``clock()`` and ``sleep()`` for the limiter: sleeping moves the time, instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class Bucket:
    """A token bucket like the emulator's: ``rate``/s, up to ``burst`` tokens; ``None`` rate: no limit."""

    rate: float | None
    burst: float
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> float | None:
        """``None``: admitted; else the ``Retry-After`` seconds of the 429."""
        if self.rate is None:
            return None
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return float(max(1, math.ceil((1 - self.tokens) / self.rate)))


@dataclass
class Log:
    admitted: list[float] = field(default_factory=list)  # arrival times at the server
    throttled: list[float] = field(default_factory=list)

    def admitted_rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.admitted if start <= t < end) / (end - start)

    def throttled_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.throttled if start <= t < end)


def send(limiter: RateLimiter, clock: FakeClock, bucket: Bucket, log: Log, until: float) -> None:
    """Requests one after another until ``clock() >= until``."""
    while clock() < until:
        with limiter.turn() as turn:
            clock.now += LATENCY / 2
            retry_after = bucket.take(clock())
            clock.now += LATENCY / 2
            if retry_after is None:
                log.admitted.append(clock() - LATENCY / 2)
                turn.admitted()
            else:
                log.throttled.append(clock() - LATENCY / 2)
                turn.throttled(retry_after)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter_on(clock: FakeClock, max_rate: float | None = None) -> RateLimiter:
    return RateLimiter(max_rate, clock=clock, sleep=clock.sleep)


# ---------------------------------------------------------------- the protocol


def test_a_turn_holds_an_in_flight_slot_until_the_block_ends(clock: FakeClock) -> None:
    limiter = limiter_on(clock)
    assert limiter.rate() is None  # no limit known: nothing paced
    with limiter.turn() as first:
        assert first.sent_at == clock()
        with limiter.turn() as second:  # two in flight at first (slow start)
            assert second.sent_at == clock()
            assert limiter._in_flight == 2
        first.admitted()
    assert limiter._in_flight == 0
    with pytest.raises(RuntimeError), limiter.turn():
        raise RuntimeError("the request failed")  # a transport error: the slot is released all the same
    assert limiter._in_flight == 0 and limiter.throttles == 0 and clock.slept == []


def test_a_throttle_holds_every_turn_and_a_deadline_refuses_to_wait(clock: FakeClock) -> None:
    limiter = limiter_on(clock)
    with limiter.turn() as turn:
        hold = turn.throttled(1.0)
    throttled_at = clock()
    # Retry-After (1 s) bounds the hold; nothing was admitted yet, so the guess at the rate is a wide one
    assert 0 < hold <= 1.0
    # the hold ends after the deadline: refused without waiting
    with pytest.raises(TurnUnavailable), limiter.turn(deadline=throttled_at + hold / 2):
        pass
    assert clock() == throttled_at and clock.slept == []
    with limiter.turn(deadline=throttled_at + 1.5) as turn:
        assert turn.sent_at >= throttled_at + hold  # it waited for the hold (on the fake clock)
        turn.admitted()
    assert limiter.throttles == 1
    with pytest.raises(TurnUnavailable), limiter.turn(deadline=clock() - 1):  # a deadline already past
        pass


def test_the_hold_is_one_interval_at_the_rate_it_restarts_at_not_the_whole_retry_after(clock: FakeClock) -> None:
    """A bucket of 10/s, burst 1, says ``Retry-After: 1`` (whole seconds) though a token is back in 0.1 s."""
    limiter = limiter_on(clock)
    bucket, log, start = Bucket(rate=10, burst=1), Log(), clock()
    send(limiter, clock, bucket, log, until=start + 10)
    assert limiter.throttles >= 2 and not limiter.strict
    rate = limiter.rate()
    assert rate is not None and 8 <= rate <= 11
    with limiter.turn() as turn:
        bucket.tokens = 0.0
        hold = turn.throttled(1.0)
    assert hold == pytest.approx(HOLD_INTERVALS / (BETA * rate), rel=0.01)  # about 0.12 s, not 1 s


def test_a_server_that_enforces_retry_after_gets_all_of_it(clock: FakeClock) -> None:
    """Requests sent after the hold but before ``Retry-After`` are all refused: then it is honoured whole."""
    limiter = limiter_on(clock)
    bucket, log, start = Bucket(rate=20, burst=2), Log(), clock()
    send(limiter, clock, bucket, log, until=start + 10)
    refused_until = clock() + 2.0
    early = 0
    while clock() < refused_until:  # the server refuses every request until refused_until
        with limiter.turn() as turn:
            clock.now += LATENCY
            pause = max(refused_until - clock(), 0.0)
            hold = turn.throttled(pause)
        early += 1
        if limiter.strict:
            break
    assert limiter.strict and early == 1 + STRICT_AFTER
    assert hold == pytest.approx(pause)  # the whole Retry-After, for every request of the connection
    with limiter.turn() as turn:
        assert turn.sent_at >= refused_until
        turn.admitted()


def test_requests_in_flight_at_a_throttle_count_once() -> None:
    """Two 429s for requests sent before the pause began: one decrease, as if only one had come back."""
    states = []
    for both in (False, True):
        clock = FakeClock()
        limiter = limiter_on(clock)
        send(limiter, clock, Bucket(rate=20, burst=5), Log(), until=clock() + 10)
        with limiter.turn() as early, limiter.turn() as late:  # both sent before the server said 429
            clock.now += LATENCY
            early.throttled(1.0)
            if both:
                late.throttled(1.0)
        with limiter.turn() as turn:  # the estimate is made when the pause ends
            turn.admitted()
        states.append((limiter.estimate, limiter.rate(clock() + 1), limiter.rate(clock() + 5)))
    assert states[0] == states[1]


# ---------------------------------------------------------------- following the limit


@pytest.mark.parametrize(("rate", "burst"), [(10, 1), (20, 2), (20, 20)])
def test_a_steady_limit_is_reached_with_few_429s(clock: FakeClock, rate: float, burst: float) -> None:
    limiter = limiter_on(clock)
    log, start = Log(), clock()
    send(limiter, clock, Bucket(rate=rate, burst=burst), log, until=start + 60)
    # Over the last 40 s: near the limit, met seldom (a 429 holds the connection about one interval, not the
    # whole Retry-After: the limiter probes a little more often than it did when a 429 cost 1 s).
    assert limiter.rate() is not None
    assert log.admitted_rate(start + 20, start + 60) >= 0.9 * rate
    assert log.throttled_between(start + 20, start + 60) <= 0.02 * 40 * rate
    assert len(log.throttled) <= 0.05 * (len(log.admitted) + len(log.throttled))


def test_a_limit_that_halves_mid_batch_is_followed_within_seconds(clock: FakeClock) -> None:
    limiter = limiter_on(clock)
    bucket, log, start = Bucket(rate=20, burst=2), Log(), clock()
    send(limiter, clock, bucket, log, until=start + 30)
    assert log.admitted_rate(start + 20, start + 30) >= 0.85 * 20
    bucket.rate = 10  # the plan changed (or another client took half)
    halved = clock()
    send(limiter, clock, bucket, log, until=halved + 40)
    rate = limiter.rate()
    assert rate is not None and rate <= 12  # the limiter's own rate came down to the new limit
    assert log.throttled_between(halved, halved + 10) <= 8  # it came down within seconds
    assert log.throttled_between(halved + 10, halved + 40) <= 0.03 * 30 * 10  # and stays at it, seldom above
    assert log.admitted_rate(halved + 10, halved + 40) >= 0.8 * 10


def test_a_limit_that_doubles_is_followed_within_seconds(clock: FakeClock) -> None:
    limiter = limiter_on(clock)
    bucket, log, start = Bucket(rate=10, burst=2), Log(), clock()
    send(limiter, clock, bucket, log, until=start + 30)
    assert limiter.estimate is not None and limiter.estimate < 12
    bucket.rate = 20
    doubled = clock()
    send(limiter, clock, bucket, log, until=doubled + 40)
    climbed = next(t for t in log.admitted if t > doubled and log.admitted_rate(t - 1, t) >= 18)
    assert climbed - doubled <= 12  # above 90 % of the new limit within 12 s, from 10/s
    assert log.admitted_rate(doubled + 15, doubled + 40) >= 0.85 * 20


def test_a_throttle_caused_by_another_client_is_forgotten(clock: FakeClock) -> None:
    """The server admits everything; another client's burst made it answer 429 once."""
    limiter = limiter_on(clock)
    bucket, log, start = Bucket(rate=None, burst=0), Log(), clock()
    send(limiter, clock, bucket, log, until=start + 5)
    before = log.admitted_rate(start + 1, start + 5)  # one request per round trip: about 50/s
    assert before >= 45
    with limiter.turn() as turn:
        clock.now += LATENCY
        turn.throttled(1.0)
    throttled_at = clock()
    send(limiter, clock, bucket, log, until=throttled_at + 20)
    assert log.admitted_rate(throttled_at + 10, throttled_at + 20) >= 0.95 * before
    rate = limiter.rate()
    assert rate is None or rate >= before  # the pace no longer holds the requests back


@dataclass
class EveryFifth(Bucket):
    """A server that answers every 5th request 429 (``Retry-After: 0``), whatever the rate."""

    count: int = 0

    def take(self, now: float) -> float | None:
        self.count += 1
        return 0.0 if self.count % 5 == 0 else None


def test_a_server_that_throttles_at_random_is_not_chased_down_to_a_crawl(clock: FakeClock) -> None:
    limiter = limiter_on(clock)
    log, start = Log(), clock()
    send(limiter, clock, EveryFifth(rate=None, burst=0), log, until=start + 60)
    rate = limiter.rate()
    assert rate is not None and rate >= 50 / 8  # one request per round trip (50/s): at least 1/8 of it
    assert log.admitted_rate(start + 30, start + 60) >= 0.8 * rate


def test_max_requests_per_second_is_never_exceeded(clock: FakeClock) -> None:
    limiter = limiter_on(clock, max_rate=5)
    bucket, log, start = Bucket(rate=None, burst=0), Log(), clock()
    send(limiter, clock, bucket, log, until=start + 10)
    with limiter.turn() as turn:
        turn.throttled(0.0)  # a throttle while the server admits far more than 5/s
    send(limiter, clock, bucket, log, until=clock() + 20)
    assert all(log.admitted_rate(t, t + 1) <= 5 + 1 for t in range(int(start), int(clock()) - 1))
    assert limiter.estimate is not None and limiter.estimate <= 5
    assert limiter.rate(clock() + 3600) == 5  # it grows back to the limit, never beyond


# ---------------------------------------------------------------- Retry-After as an HTTP date


def test_retry_after_as_an_http_date_bounds_the_hold(clock: FakeClock) -> None:
    """The transport turns the date into seconds (bounded by the policy); the limiter holds at most that long."""
    wall = 1_800_000_000.0
    header = email.utils.formatdate(wall + 3, usegmt=True)
    pause = RetryPolicy(retry_after_max=60).delay(1, parse_retry_after(header, now=wall))
    assert pause == pytest.approx(3.0)
    limiter = limiter_on(clock)
    limiter.strict = True  # (a server seen enforcing Retry-After: the whole pause)
    with limiter.turn() as turn:
        assert turn.throttled(pause) == pytest.approx(3.0)
    throttled_at = clock()
    with limiter.turn() as turn:
        assert turn.sent_at == pytest.approx(throttled_at + 3.0)
        turn.admitted()
    # A date far away is bounded by retry_after_max before it reaches the limiter.
    assert RetryPolicy(retry_after_max=60).delay(1, parse_retry_after(header, now=wall - 3600)) == 60


# ---------------------------------------------------------------- one limiter per connection and process


def test_one_limiter_per_connection_and_host_with_the_latest_max_rate() -> None:
    reset_shared_limiters()
    first = shared_limiter("cekura_default", "https://api.cekura.ai", None)
    assert shared_limiter("cekura_default", "https://api.cekura.ai", 7) is first
    assert first.max_rate == 7
    assert shared_limiter("cekura_other", "https://api.cekura.ai", None) is not first
    assert shared_limiter("cekura_default", "https://other.example", None) is not first
    reset_shared_limiters()
    assert shared_limiter("cekura_default", "https://api.cekura.ai", None) is not first


def test_threads_share_the_pause(clock: FakeClock) -> None:
    """Several threads on a real lock: a throttle in one makes the others wait (on the fake clock)."""
    limiter = limiter_on(clock)
    with limiter.turn() as turn:
        hold = turn.throttled(2.0)
    assert hold > 0
    resumed: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        with limiter.turn() as turn:
            with lock:
                resumed.append(turn.sent_at)
            turn.admitted()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(resumed) == 4 and min(resumed) >= 1000.0 + hold
