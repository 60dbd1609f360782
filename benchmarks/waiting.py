"""B2 — waiting for evaluations: requests per wait, and the triggerer's event loop under 50 triggers.

Part 1 counts the requests made while 500 call logs finish evaluating: the
provider's trigger (``CekuraCallLogTrigger.run()``, whose poll is
:func:`airflow_provider_cekura.waiting.check_evaluations`: one list request
per 100 ids) versus polling each id with the detail endpoint at the same
interval, dropping ids as they finish (the hand-written way).

Part 2 runs 50 trigger generators in one asyncio loop against an emulator that
answers every request after 200 ms, next to a ticker coroutine that sleeps
10 ms at a time and records how late it wakes up: the triggerer's health.

Part 3 does the same with 1,000 waits of 1 and 10 ids: the shared poller against per-trigger polling.

Part 4 is the moment 1,000 waits that finish in the same round get their events. The benchmark holds a
round's page answers until its last page is in (``_rounds_answer_at_once``), so that every wait of the
round is ready in the same loop turn. Today's poller wakes
:data:`~airflow_provider_cekura.triggers._poller.HANDOUT_BATCH` waits per loop turn; the baseline is the
same poller with a batch larger than any round (:func:`delivery_at_once`): every event in one turn. The runs
alternate (sliced, at once, then at once, sliced, ...); medians. "At delivery" is the ticks that overlap the
span from the first event to the last, "any other moment" the rest of the run (the start of 1,000 triggers
and the rounds before included).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks._emulator_proc import RemoteEmulator
from benchmarks.common import Section

CONN_ID = "cekura_bench_wait"
GOAL_FEWER = 50.0
GOAL_LAG_MS = 20.0
DETAIL_PREFIX = "/observability/v1/call-logs/"


def _seed_staggered(emulator: RemoteEmulator, count: int, batches: int, gap: float, prefix: str) -> list[int]:
    """Seed ``count`` pending call logs in ``batches`` ``gap`` seconds apart, so they finish at different times."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids: list[int] = []
    per = max(count // batches, 1)
    for batch in range(batches):
        n = per if batch < batches - 1 else count - per * (batches - 1)
        ids += emulator.seed(
            n, start=start, end=start + timedelta(hours=1), evaluated=False, call_id_prefix=f"{prefix}-{batch}"
        )
        if batch < batches - 1:
            time.sleep(gap)
    return ids


async def _first_event(trigger: Any) -> tuple[Any, float]:
    async for event in trigger.run():
        return event, time.monotonic()
    raise RuntimeError("the trigger ended without an event")


def _trigger(ids: list[int], poll_interval: float) -> Any:
    from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

    return CekuraCallLogTrigger(call_log_ids=ids, cekura_conn_id=CONN_ID, poll_interval=poll_interval,
                                deadline=time.time() + 300)  # fmt: skip


class _OwnPolls:
    """The trigger's polling before the shared poller: its own hook, one ``asyncio.to_thread`` per poll.

    That is the loop's default executor (min(32, CPUs + 4) threads), one list request per trigger per
    poll, and the next poll ``poll_interval`` after the previous one ended. Kept as B2's baseline: it
    stands in for a wait's :class:`~airflow_provider_cekura.triggers._poller.Subscription`.
    """

    def __init__(self, conn_id: str, call_log_ids: list[int], poll_interval: float) -> None:
        self.conn_id = conn_id
        self.call_log_ids = list(call_log_ids)
        self.poll_interval = poll_interval
        self.in_flight = False
        self._hook: Any = None
        self._next: float | None = None
        self._poll_by: float | None = None
        self._expires: float | None = None

    def __enter__(self) -> _OwnPolls:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook is not None:
            self._hook.close()

    def poll_before(self, deadline: float) -> None:
        self._poll_by = deadline

    def expire_at(self, at: float) -> None:
        self._expires = at

    async def next_outcome(self) -> Any:
        """The next poll's summary, within ``asyncio.wait_for`` of the time left (as the trigger did)."""
        window = None if self._expires is None else max(self._expires - time.time(), 0.0)
        return await asyncio.wait_for(self._next_outcome(), window)

    async def _next_outcome(self) -> Any:
        if self._next is not None:
            wait = self._next - time.monotonic()
            if self._poll_by is not None:
                wait = min(wait, self._poll_by - time.time())
            if wait > 0:
                await asyncio.sleep(wait)
        self.in_flight = True
        try:
            return await asyncio.to_thread(self._check)
        finally:
            self.in_flight = False
            self._next = time.monotonic() + self.poll_interval

    def _check(self) -> Any:
        from airflow_provider_cekura.hooks.cekura import CekuraHook
        from airflow_provider_cekura.waiting import check_evaluations

        if self._hook is None:
            self._hook = CekuraHook(cekura_conn_id=self.conn_id)
        return check_evaluations(self._hook, self.call_log_ids)


class _OwnPoller:
    """What ``shared_poller(conn_id)`` returns while :func:`per_trigger_polling` is in force."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    def subscribe(self, call_log_ids: list[int], poll_interval: float, on_progress: Any = None) -> _OwnPolls:
        return _OwnPolls(self.conn_id, call_log_ids, poll_interval)


@contextlib.contextmanager
def _pages_per_round() -> Iterator[list[int]]:
    """Within the block, the list requests (pages) of each shared-poller round are counted into the list."""
    from airflow_provider_cekura.triggers._poller import SharedPoller

    pages: list[int] = []
    submit = SharedPoller._submit

    def counted(self: SharedPoller, page: list[int], n: int, answered: Any) -> Any:
        if n == 0:  # a round submits its pages 0, 1, ... in one step
            pages.append(0)
        pages[-1] += 1
        return submit(self, page, n, answered)

    SharedPoller._submit = counted  # type: ignore[method-assign]
    try:
        yield pages
    finally:
        SharedPoller._submit = submit  # type: ignore[method-assign]


class _RoundBarrier:
    """Stands in for a round's answer queue in the poller's threads: passes the answers on all in one go.

    Every page of a round is submitted in one step on the loop, before any answer can come back there
    (answers arrive by ``call_soon_threadsafe``), so the count is complete when the first answer arrives.
    """

    def __init__(self, answered: Any) -> None:
        self.answered = answered
        self.expected = 0
        self.held: list[Any] = []

    def put_nowait(self, item: Any) -> None:
        self.held.append(item)
        if len(self.held) == self.expected:
            for held in self.held:
                self.answered.put_nowait(held)
            self.held.clear()


@contextlib.contextmanager
def _rounds_answer_at_once() -> Iterator[None]:
    """Within the block, every page of a shared-poller round answers in the same loop turn.

    What happens when the evaluations of many waits finish together and their pages come back together:
    every wait of the round is ready at once, the case where delivery slicing matters most.
    """
    from airflow_provider_cekura.triggers._poller import SharedPoller

    submit = SharedPoller._submit
    barriers: dict[int, _RoundBarrier] = {}

    def held(self: SharedPoller, page: list[int], n: int, answered: Any) -> Any:
        if n == 0:  # a round submits its pages 0, 1, ... in one step
            barriers.clear()
            barriers[id(answered)] = _RoundBarrier(answered)
        barrier = barriers[id(answered)]
        barrier.expected += 1
        return submit(self, page, n, barrier)  # type: ignore[arg-type]  # it has the queue's put_nowait

    SharedPoller._submit = held  # type: ignore[method-assign]
    try:
        yield
    finally:
        SharedPoller._submit = submit  # type: ignore[method-assign]


@contextlib.contextmanager
def delivery_at_once() -> Iterator[None]:
    """Within the block, a shared-poller round wakes all its ready waits in one loop turn (B2's baseline).

    The poller hands out :data:`~airflow_provider_cekura.triggers._poller.HANDOUT_BATCH` waits per loop
    turn; a batch larger than any round is the poller without delivery slices.
    """
    from airflow_provider_cekura.triggers import _poller

    batch = _poller.HANDOUT_BATCH
    _poller.HANDOUT_BATCH = sys.maxsize
    try:
        yield
    finally:
        _poller.HANDOUT_BATCH = batch


@contextlib.contextmanager
def per_trigger_polling() -> Iterator[list[int]]:
    """Within the block, every ``CekuraCallLogTrigger`` polls on its own (the path before the shared poller)."""
    from airflow_provider_cekura.triggers import call_log

    shared = call_log.shared_poller
    call_log.shared_poller = _OwnPoller  # type: ignore[assignment]
    try:
        yield []
    finally:
        call_log.shared_poller = shared


def naive_wait(ids: list[int], poll_interval: float) -> int:
    """Poll each pending id with the detail endpoint every ``poll_interval``; returns polling rounds."""
    from airflow_provider_cekura.evaluation import is_done
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    hook = CekuraHook(cekura_conn_id=CONN_ID)
    pending = list(ids)
    rounds = 0
    try:
        while pending:
            started = time.monotonic()
            rounds += 1
            pending = [i for i in pending if not is_done(hook.get_call_log(i))]
            if pending:
                time.sleep(max(poll_interval - (time.monotonic() - started), 0.0))
    finally:
        hook.close()
    return rounds


def _warm_up() -> None:
    """Import and resolve everything once, so that no measurement includes first-use costs."""
    import airflow.triggers.base  # noqa: F401

    from airflow_provider_cekura.hooks.cekura import CekuraHook

    hook = CekuraHook(cekura_conn_id=CONN_ID)
    try:
        hook.get_call_logs([1])
    finally:
        hook.close()


def requests_per_wait(section: Section, *, smoke: bool) -> None:
    # The interval is long enough for a round of 500 detail requests on a loaded 2-core machine, so that
    # both pollers really poll at the same interval.
    count, delay, batches, gap, interval = (20, 0.6, 2, 0.2, 0.2) if smoke else (500, 8.0, 5, 1.5, 4.0)
    with RemoteEmulator(evaluation_delay=delay, page_size_cap=100) as emulator:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
        _warm_up()
        ids = _seed_staggered(emulator, count, batches, gap, "provider")
        emulator.reset_log()
        started = time.monotonic()
        event, _ = asyncio.run(_first_event(_trigger(ids, interval)))
        provider_s = time.monotonic() - started
        provider = emulator.count_requests("GET")
        status = event.payload.get("status")
        ids = _seed_staggered(emulator, count, batches, gap, "naive")
        emulator.reset_log()
        started = time.monotonic()
        rounds = naive_wait(ids, interval)
        naive_s = time.monotonic() - started
        naive = emulator.count_requests("GET")
    section.add(
        f"trigger (`check_evaluations`), {count} call logs",
        f"{provider} requests ({provider_s:.1f} s, event {status!r})",
    )
    section.add(f"detail endpoint per id, {count} call logs", f"{naive} requests ({naive_s:.1f} s, {rounds} rounds)")
    section.check("fewer requests (detail / trigger)", naive / max(provider, 1), GOAL_FEWER, higher_is_better=True,
                  fmt=".0f", unit="x")  # fmt: skip
    per_poll = -(-count // 100)
    section.add(
        "requests per poll round (trigger / detail endpoint while all are pending)",
        f"{per_poll} / {count} ({count / per_poll:.0f}x)",
    )
    section.notes.append(
        f"Part 1: poll interval {interval:g} s for both; each call log finishes evaluating {delay:g} s after it "
        f"was seeded, in {batches} batches {gap:g} s apart (the wait starts once all are seeded); the hook's "
        "default page size (100 ids per list request). "
        "The per-id poller stops polling ids that are done; its rounds take longer than the interval when "
        "they hold more requests than fit in it, which only lowers its count."
    )


def _lag_stats(lags: list[tuple[float, float]], after: float = 0.0) -> tuple[float, float]:
    """(max, p99) in ms of the ticker's lateness, for ticks that started ``after`` seconds or later."""
    values = sorted(lag for lag, at in lags if at >= after)
    if not values:
        return float("nan"), float("nan")
    return values[-1] * 1000, values[max(int(len(values) * 0.99) - 1, 0)] * 1000


async def _ticker(lags: list[tuple[float, float]], stop: asyncio.Event, origin: float, threads: list[int]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append((time.perf_counter() - before - 0.01, before - origin))
        threads.append(threading.active_count())


class _FullCollections:
    """Records the (start, end) perf_counter times of CPython's full (generation 2) garbage collections."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter()))

    def __enter__(self) -> _FullCollections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class _Promotions:
    """Counts the objects that survive into the oldest generation (what sets off CPython's full collections).

    At each generation-1 collection, the young objects still alive move to the oldest generation; this
    counts the young objects at its start (an upper bound: cyclic garbage among them is freed instead).
    Listing them costs time: count in a run of its own, never in one whose lag is measured.
    """

    def __init__(self) -> None:
        self.count = 0
        self._busy = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "start" or info.get("generation") != 1 or self._busy:
            return
        self._busy = True
        self.count += len(gc.get_objects(0)) + len(gc.get_objects(1))
        self._busy = False

    def __enter__(self) -> _Promotions:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


_SLEEPER: list[type] = []


def sleeping_trigger() -> type:
    """A trigger that only sleeps until a given moment and then yields an event like ours: the floor of B2."""
    if not _SLEEPER:
        from airflow_provider_cekura.evaluation import EVENT_SUCCESS, pack_result
        from airflow_provider_cekura.version_compat import BaseTrigger, TriggerEvent

        class SleepingTrigger(BaseTrigger):
            def __init__(self, call_log_ids: list[int], until: float) -> None:
                super().__init__()
                self.call_log_ids, self.until = call_log_ids, until

            def serialize(self) -> tuple[str, dict[str, Any]]:
                return (f"{__name__}.SleepingTrigger", {"call_log_ids": self.call_log_ids, "until": self.until})

            async def run(self) -> Any:
                await asyncio.sleep(max(self.until - time.time(), 0.0))
                result = pack_result({"status": "success", "success": True, "state": "evaluated", "metrics": []})
                results = {str(i): result for i in self.call_log_ids}
                yield TriggerEvent({"status": EVENT_SUCCESS, "call_log_ids": self.call_log_ids, "results": results})

        _SLEEPER.append(SleepingTrigger)
    return _SLEEPER[0]


def _lag_outside(lags: list[tuple[float, float]], pauses: list[tuple[float, float]], origin: float) -> float:
    """Max ticker lag (ms) over the ticks that no full garbage collection overlapped."""
    spans = [(a - origin, b - origin) for a, b in pauses]
    clean = [lag for lag, at in lags if not any(a < at + 0.01 + lag and b > at for a, b in spans)]
    return max(clean, default=float("nan")) * 1000


async def _health(ids_per: list[list[int]], interval: float, shared: bool, *, count_promotions: bool = False,
                  sleep_until: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Start one trigger per id list, one per loop turn as the triggerer does, and await every first event.

    ``count_promotions``: count what survives into the oldest generation (slows the run: lag not comparable).
    ``sleep_until``: start :func:`sleeping_trigger` ones instead, which wake at that moment (epoch seconds).
    """
    lags: list[tuple[float, float]] = []
    threads: list[int] = []
    stop = asyncio.Event()
    collect_started = time.perf_counter()
    gc.collect()  # what one full collection of this process's heap costs, measured just before the run
    collect_ms = (time.perf_counter() - collect_started) * 1000
    long_lived = len(gc.get_objects(2))
    origin = time.perf_counter()
    origin_monotonic = time.monotonic()
    threads_before = threading.active_count()
    promotions = _Promotions()
    polling = _pages_per_round() if shared else per_trigger_polling()
    with _FullCollections() as collections, promotions if count_promotions else contextlib.nullcontext(), \
            polling as pages:  # fmt: skip
        tick = asyncio.create_task(_ticker(lags, stop, origin, threads))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        tasks = []
        for ids in ids_per:
            trigger = _trigger(ids, interval) if sleep_until is None else sleeping_trigger()(ids, sleep_until)
            tasks.append(asyncio.create_task(_first_event(trigger)))
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        stop.set()
        await tick
    return {
        "promoted": promotions.count,
        "full_collection_after": long_lived // 4,
        "gc_pauses_ms": [(b - a) * 1000 for a, b in collections.pauses],
        "gc_collect_ms": collect_ms,
        "lag_outside_gc_ms": _lag_outside(lags, collections.pauses, origin),
        "lags": lags,
        "threads": max(threads, default=threads_before) - threads_before,
        "last_event_s": max(at for _, at in results) - started,
        "last_event_at": max(at for _, at in results),
        "events_span": (
            min(at for _, at in results) - origin_monotonic,
            max(at for _, at in results) - origin_monotonic,
        ),
        "statuses": sorted({event.payload.get("status") for event, _ in results}),
        "rounds": len(pages) if shared else None,
        "pages": list(pages) if shared else [],
    }


async def _idle(seconds: float) -> list[tuple[float, float]]:
    lags: list[tuple[float, float]] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(_ticker(lags, stop, time.perf_counter(), []))
    await asyncio.sleep(seconds)
    stop.set()
    await tick
    return lags


def _run_health(emulator: RemoteEmulator, count: int, per: int, delay: float, interval: float,
                shared: bool, **options: Any) -> tuple[dict[str, Any], float, int]:  # fmt: skip
    """(result, last event after the evaluations finished, list requests) of ``count`` waits of ``per`` ids."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    emulator.call("set", evaluation_delay=delay)
    ids = emulator.seed(count * per, start=start, end=start + timedelta(hours=1), evaluated=False,
                        call_id_prefix=f"health-{count}-{per}-{shared}-{time.monotonic()}")  # fmt: skip
    due = time.monotonic() + delay  # every evaluation has finished by then
    if options.pop("sleeping", False):
        options["sleep_until"] = time.time() + delay
    emulator.reset_log()
    result = asyncio.run(_health([ids[i * per : (i + 1) * per] for i in range(count)], interval, shared, **options))
    requests = emulator.count_requests("GET")
    return result, result["last_event_at"] - due, requests


PATHS = {True: "shared poller", False: "per-trigger polling (before)"}


def triggerer_health(section: Section, *, smoke: bool) -> None:
    count, per, delay, interval, latency = (6, 5, 0.8, 0.3, 0.2) if smoke else (50, 10, 4.0, 1.0, 0.2)
    default_threads = min(32, (os.cpu_count() or 1) + 4)
    floor_max, floor_p99 = _lag_stats(asyncio.run(_idle(1.0 if smoke else 6.0)))
    section.add("event-loop lag, max / p99, ticker alone (noise floor of this machine)",
                f"{floor_max:.1f} / {floor_p99:.1f} ms")  # fmt: skip
    with RemoteEmulator(evaluation_delay=delay, page_size_cap=100) as emulator:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
        _warm_up()
        emulator.add_fault("latency", delay=latency)
        repeats = 1 if smoke else 3
        for shared in (True, False):
            label = PATHS[shared]
            trials = [
                _run_health(emulator, count, per, delay, interval, shared) for _ in range(repeats if shared else 1)
            ]
            trials.sort(key=lambda t: _lag_stats(t[0]["lags"])[0])
            result, after_due, requests = trials[len(trials) // 2]
            lag_max, lag_p99 = _lag_stats(result["lags"])
            if shared:
                worst = _lag_stats(trials[-1][0]["lags"])[0]
                section.check(f"event-loop lag, max ({count} triggers, {label}; median run of {repeats})", lag_max,
                              GOAL_LAG_MS, higher_is_better=False, fmt=".1f", unit=" ms")  # fmt: skip
                if repeats > 1:
                    section.add(f"event-loop lag, max, worst of the {repeats} runs", f"{worst:.1f} ms")
                section.add(f"event-loop lag, p99 ({label})", f"{lag_p99:.1f} ms")
            else:
                section.add(f"event-loop lag, max / p99 ({label})", f"{lag_max:.1f} / {lag_p99:.1f} ms")
            section.add(
                f"last event after the evaluations finished ({count} triggers, {label})",
                f"{after_due:.2f} s ({requests} list requests; events {result['statuses']})",
                f"ideal <= {interval + latency:.1f} s (poll interval + latency)",
            )
    section.notes.append(
        f"Part 2: {count} triggers x {per} call logs started one per loop turn (as the triggerer does), poll "
        f"interval {interval:g} s, every request answered after {latency * 1000:.0f} ms (`add_fault('latency')`), "
        f"evaluations finish {delay:g} s after the start; the ticker sleeps 10 ms at a time and records how late it "
        f"wakes up. Per-trigger polling (the trigger before the shared poller, kept in this module as the baseline) "
        f"polls in `asyncio.to_thread`, the loop's default executor: min(32, CPUs + 4) = {default_threads} threads "
        "here. The lag depends on what else the machine runs: compare with the noise floor (the ticker alone)."
    )


def _gc_row(section: Section, what: str, result: dict[str, Any]) -> None:
    pauses = result["gc_pauses_ms"]
    section.add(
        f"full garbage collections during the run: count / longest (`gc.collect()` just before); "
        f"loop lag, max outside them ({what})",
        f"{len(pauses)} / {max(pauses, default=0):.0f} ms ({result['gc_collect_ms']:.0f} ms); "
        f"{result['lag_outside_gc_ms']:.1f} ms",
    )


def thousand_waits(section: Section, *, smoke: bool) -> None:
    """1,000 deferred waits in one loop: the shared poller against per-trigger polling, 1 and 10 ids each."""
    import math

    from airflow_provider_cekura.triggers._poller import MAX_THREADS

    waits, delay, interval, latency = (40, 1.5, 0.5, 0.2) if smoke else (1000, 4.0, 2.0, 0.2)
    slack = 1.5
    with RemoteEmulator(evaluation_delay=delay, page_size_cap=100) as emulator:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
        _warm_up()
        emulator.add_fault("latency", delay=latency)
        for per in (1, 10):
            ids_total = waits * per
            for shared in (True, False):
                result, after_due, requests = _run_health(emulator, waits, per, delay, interval, shared)
                lag_max, lag_p99 = _lag_stats(result["lags"])
                what = f"{waits:,} waits x {per} id{'s' if per > 1 else ''}, {PATHS[shared]}"
                if shared:
                    rounds = result["rounds"] or 1
                    most = max(result["pages"], default=0)
                    section.check(f"last event after the evaluations finished ({what})", after_due, interval + slack,
                                  higher_is_better=False, fmt=".2f", unit=" s")  # fmt: skip
                    section.check(f"list requests in the busiest poll round ({what}; {ids_total:,} ids)", most,
                                  math.ceil(ids_total / 100) + 1, higher_is_better=False, fmt=".0f")  # fmt: skip
                    section.add(f"list requests per poll round, average ({what})",
                                f"{requests / rounds:.1f} ({requests} requests in {rounds} rounds)")  # fmt: skip
                    section.check(f"event-loop lag, max ({what})", lag_max, GOAL_LAG_MS, higher_is_better=False,
                                  fmt=".1f", unit=" ms")  # fmt: skip
                    section.add(f"event-loop lag, p99 / threads used ({what})",
                                f"{lag_p99:.1f} ms / {result['threads']} (pool of {MAX_THREADS})")  # fmt: skip
                    _gc_row(section, what, result)
                    counted, _, _ = _run_health(emulator, waits, per, delay, interval, shared, count_promotions=True)
                    floor, _, _ = _run_health(emulator, waits, per, delay, interval, shared, count_promotions=True,
                                              sleeping=True)  # fmt: skip
                    section.add(f"objects surviving into the oldest generation during the run, per wait: this / a "
                                f"trigger that only sleeps until the evaluations finish (counted in runs of their "
                                f"own; a full collection starts past {counted['full_collection_after'] / waits:.0f} "
                                f"per wait here) ({what})",
                                f"{counted['promoted'] / waits:.1f} / {floor['promoted'] / waits:.1f}")  # fmt: skip
                else:
                    polls = requests / waits
                    section.add(f"last event after the evaluations finished ({what})", f"{after_due:.2f} s",
                                f"ideal <= {interval + slack:.1f} s")  # fmt: skip
                    section.add(f"list requests per poll round ({what})",
                                f"{requests / max(polls, 1e-9):.0f} ({requests} requests, {polls:.1f} polls per wait)")  # fmt: skip
                    section.add(f"event-loop lag, max / p99 / threads used ({what})",
                                f"{lag_max:.1f} / {lag_p99:.1f} ms / {result['threads']}")  # fmt: skip
                    _gc_row(section, what, result)
    section.notes.append(
        f"Part 3: {waits:,} waits started one per loop turn in one event loop, poll interval {interval:g} s, every "
        f"request answered after {latency * 1000:.0f} ms, evaluations finish {delay:g} s after seeding; lateness is "
        "counted from the moment the last evaluation finished to the last trigger event. Goals: last event <= poll "
        f"interval + {slack:g} s, at most ceil(ids / 100) + 1 list requests in any round of the connection's shared "
        f"poll, loop lag <= {GOAL_LAG_MS:g} ms. 'Threads used' is the most threads alive beyond those at the start."
    )


def _lag_at_delivery(result: dict[str, Any]) -> tuple[float, float]:
    """(max lag at delivery, max lag at any other moment) in ms.

    "At delivery": the ticks that overlap the span from the first trigger event to the last one (a tick
    held up by the round handing out its outcomes ends after the first event and started before the last).
    """
    start, end = result["events_span"]
    at_delivery: list[float] = []
    elsewhere: list[float] = []
    for lag, at in result["lags"]:
        (at_delivery if at < end and at + 0.01 + lag > start else elsewhere).append(lag)
    return max(at_delivery, default=float("nan")) * 1000, max(elsewhere, default=float("nan")) * 1000


DELIVERY = {True: "today's poller (a slice of waits per loop turn)", False: "all events at once (before)"}


def delivery_lag(section: Section, *, smoke: bool) -> None:
    """The loop at the moment 1,000 waits finishing in one round get their events: sliced against all at once."""
    from airflow_provider_cekura.triggers._poller import HANDOUT_BATCH

    waits, per, delay, interval, repeats = (40, 2, 1.0, 0.5, 1) if smoke else (1000, 10, 3.0, 2.0, 5)
    figures: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    with RemoteEmulator(evaluation_delay=delay, page_size_cap=100) as emulator:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
        _warm_up()
        for repeat in range(repeats):
            for sliced in (True, False) if repeat % 2 == 0 else (False, True):
                with _rounds_answer_at_once(), contextlib.nullcontext() if sliced else delivery_at_once():
                    result, _, _ = _run_health(emulator, waits, per, delay, interval, True)
                at_delivery, elsewhere = _lag_at_delivery(result)
                start, end = result["events_span"]
                figures[sliced].append((at_delivery, elsewhere, (end - start) * 1000))
    medians = {
        sliced: [statistics.median(column) for column in zip(*rows, strict=True)] for sliced, rows in figures.items()
    }
    what = f"{waits:,} waits finishing in one round"
    for sliced in (True, False):
        at_delivery, elsewhere, span = medians[sliced]
        runs = ", ".join(f"{row[0]:.0f}" for row in figures[sliced])
        label = f"event-loop lag at delivery, {what} ({DELIVERY[sliced]}; median of {repeats}: {runs} ms)"
        if sliced:
            section.check(label, at_delivery, GOAL_LAG_MS, higher_is_better=False, fmt=".1f", unit=" ms")
        else:
            section.add(label, f"{at_delivery:.1f} ms")
        section.add(f"event-loop lag at any other moment / events delivered within ({what}, {DELIVERY[sliced]})",
                    f"{elsewhere:.1f} / {span:.0f} ms")  # fmt: skip
    section.add(f"lag at delivery, all at once / sliced ({what})", f"{medians[False][0] / medians[True][0]:.1f}x")
    section.notes.append(
        f"Part 4: {waits:,} waits x {per} ids, every page of a round answering in the same loop turn, so that all "
        f"waits are ready at once; today's poller wakes {HANDOUT_BATCH} per loop turn, the baseline all of them "
        "(`delivery_at_once`). 'At delivery': the ticks overlapping the first to the last event. See the module."
    )


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    section = Section(
        "B2 — waiting for evaluations",
        "Requests made while waiting, and the triggerer's event loop with many Cekura triggers.",
    )
    requests_per_wait(section, smoke=smoke)
    triggerer_health(section, smoke=smoke)
    thousand_waits(section, smoke=smoke)
    delivery_lag(section, smoke=smoke)
    section.seconds = time.perf_counter() - started
    return section
