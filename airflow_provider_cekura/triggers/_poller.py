"""One shared poll for every deferred Cekura wait of a connection in a triggerer.

Each :class:`~airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger`
subscribes its ids to the :class:`SharedPoller` of its ``cekura_conn_id`` (one
per event loop, i.e. per triggerer process) and awaits its own outcomes. The
poller asks the list endpoint about the pending ids of all subscriptions due
together, one ``call_ids=`` request per :data:`PAGE_IDS` ids, at most
:data:`MAX_THREADS` requests at a time, and hands each subscription the
:class:`~airflow_provider_cekura.evaluation.EvaluationSummary` of its own ids.

- Each subscription is polled at least every ``poll_interval`` seconds it asked for
  (and once more at its deadline). A round also takes along the subscriptions due
  within half the shortest interval, so waits that started at different moments
  fall into step and share requests.
- Ids that are done (evaluated or failed) are not asked about again by that subscription.
- A page that fails (after the hook's own retries) fails the subscriptions with an id
  in it for that round only; the others get their summaries.
- HTTP goes through the sync :class:`~airflow_provider_cekura.hooks.cekura.CekuraHook`
  (its one retry policy) on a small thread pool owned by the poller, never the loop's
  default executor; the hook is imported, built and its connection looked up there.
  Grouping ids and classifying call logs run there too, so the loop only hands out
  results, a batch at a time.
- The poller starts with the first subscription and stops with the last one (its
  threads end and the hook closes once the requests still in flight return).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow_provider_cekura.evaluation import EvaluationSummary
    from airflow_provider_cekura.hooks.cekura import CekuraHook

PAGE_IDS = 100
"""Ids per list request (the API's largest page)."""

MAX_THREADS = 16
"""Requests in flight at once per connection and triggerer (the poller's thread pool size)."""

JOIN_DELAY = 0.1
"""Seconds a new wait waits for its first poll, so that waits created together share it."""

HANDOUT_BATCH = 100
"""Subscriptions woken per event-loop turn when a round hands out its results."""

_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SharedPoller]] = (
    weakref.WeakKeyDictionary()
)


def shared_poller(cekura_conn_id: str) -> SharedPoller:
    """The running event loop's poller for ``cekura_conn_id`` (created on first use)."""
    loop = asyncio.get_running_loop()
    pollers = _POLLERS.setdefault(loop, {})
    poller = pollers.get(cekura_conn_id)
    if poller is None:
        poller = pollers[cekura_conn_id] = SharedPoller(cekura_conn_id, loop)
    return poller


class PollSource(Protocol):
    """What a trigger needs from its polls (a :class:`Subscription`, or a benchmark's own polling)."""

    in_flight: bool

    def poll_before(self, deadline: float) -> None: ...

    async def next_outcome(self) -> EvaluationSummary: ...


class Subscription:
    """One wait's place in the shared poll: its ids, its interval, its next outcome."""

    def __init__(self, poller: SharedPoller, call_log_ids: list[int], poll_interval: float) -> None:
        self.call_log_ids = list(call_log_ids)
        self.poll_interval = poll_interval
        self._poller = poller
        self.next_due = poller.loop.time() + min(JOIN_DELAY, poll_interval)
        self.poll_by: float | None = None
        self.in_flight = False
        self.closed = False
        self.done_logs: dict[int, Mapping[str, Any]] = {}
        """Call logs already evaluated or failed: not asked about again."""
        self._outcome: asyncio.Future[EvaluationSummary] | None = None

    def pending_ids(self) -> list[int]:
        return [i for i in self.call_log_ids if i not in self.done_logs]

    def poll_before(self, deadline: float) -> None:
        """Make sure one poll starts by ``deadline`` (epoch seconds), even when the interval is longer."""
        self.poll_by = self._poller.loop.time() + (deadline - time.time())
        self._poller.wake()

    @property
    def due_at(self) -> float:
        """Loop time of the next poll: one interval after the last one, or the deadline if that comes first."""
        return self.next_due if self.poll_by is None else min(self.next_due, self.poll_by)

    def scheduled(self, started: float) -> None:
        """A round that started at ``started`` (loop time) polls this subscription."""
        self.in_flight = True
        self.next_due = started + self.poll_interval
        if self.poll_by is not None and self.poll_by <= started:
            self.poll_by = None  # this is the poll at the deadline (never taken early)

    async def next_outcome(self) -> EvaluationSummary:
        """The next poll's summary of this wait's ids; raises what the poll raised."""
        future = self._outcome
        if future is None:
            future = self._outcome = self._poller.loop.create_future()
        try:
            return await future
        finally:
            if self._outcome is future and future.done():
                self._outcome = None

    def deliver(self, outcome: EvaluationSummary | BaseException) -> None:
        self.in_flight = False
        if self.closed:
            return
        future = self._outcome
        if future is None or future.done():
            if future is not None and not future.cancelled():
                future.exception()  # an outcome nobody awaited: superseded by this one
            future = self._outcome = self._poller.loop.create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class SharedPoller:
    """The shared poll of one connection in one event loop (see the module docstring).

    :param cekura_conn_id: connection id of type ``cekura``.
    :param loop: the event loop the subscribed triggers run in.
    """

    def __init__(self, cekura_conn_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.cekura_conn_id = cekura_conn_id
        self.loop = loop
        self.subscriptions: list[Subscription] = []
        self.rounds = 0
        self.pages: list[int] = []
        """List requests (pages) of each round, for benchmarks and tests."""
        self._executor: ThreadPoolExecutor | None = None
        self._hook: CekuraHook | None = None
        self._hook_lock = threading.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._round_tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cekura_conn_id={self.cekura_conn_id!r}, waits={len(self.subscriptions)})"

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    @contextmanager
    def subscribe(self, call_log_ids: list[int], poll_interval: float) -> Iterator[Subscription]:
        """Join the shared poll for the block; leaving it (also by cancellation) takes nothing else along."""
        subscription = Subscription(self, call_log_ids, poll_interval)
        self.subscriptions.append(subscription)
        if not self.running:
            self._executor = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="cekura-poller")
            self._runner = self.loop.create_task(self._run(), name=f"cekura-poller-{self.cekura_conn_id}")
        self.wake()
        try:
            yield subscription
        finally:
            subscription.closed = True
            self.subscriptions.remove(subscription)
            if not self.subscriptions:
                self._stop()

    def wake(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------------ scheduling (on the loop)

    async def _run(self) -> None:
        while self.subscriptions:
            now = self.loop.time()
            idle = [s for s in self.subscriptions if not s.in_flight]
            if idle and min(s.due_at for s in idle) <= now:
                # take along whatever falls due within half the shortest interval: waits fall into step
                horizon = now + 0.5 * min(s.poll_interval for s in self.subscriptions)
                due = [s for s in idle if s.due_at <= horizon]
                asked = {s: s.pending_ids() for s in due}
                for subscription in due:
                    subscription.scheduled(now)
                task = self.loop.create_task(self._round(asked))
                self._round_tasks.add(task)
                task.add_done_callback(self._round_tasks.discard)
                continue
            self._wakeup.clear()
            timeout = None if not idle else min(s.due_at for s in idle) - now
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    async def _round(self, asked: dict[Subscription, list[int]]) -> None:
        ids = sorted({i for pending in asked.values() for i in pending})
        pages = [ids[n : n + PAGE_IDS] for n in range(0, len(ids), PAGE_IDS)]
        self.rounds += 1
        self.pages.append(len(pages))
        try:
            answers = await asyncio.gather(
                *(self.loop.run_in_executor(self._executor, self._fetch, page) for page in pages),
                return_exceptions=True,
            )
            outcomes = await self.loop.run_in_executor(self._executor, _outcomes, asked, pages, answers)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # not an answer of the API (say the pool is gone): every wait of the round
            outcomes = dict.fromkeys(asked, err)
        for n, (subscription, outcome) in enumerate(outcomes.items(), 1):
            subscription.deliver(outcome)
            if n % HANDOUT_BATCH == 0:
                await asyncio.sleep(0)  # let the woken triggers (and everything else) run
        self.wake()

    def _stop(self) -> None:
        """The last subscription left: stop polling; threads end and the hook closes once idle."""
        pollers = _POLLERS.get(self.loop, {})
        if pollers.get(self.cekura_conn_id) is self:
            del pollers[self.cekura_conn_id]
        for task in (self._runner, *self._round_tasks):
            if task is not None:
                task.cancel()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            # a request still in flight ends within the hook's timeouts; close the hook after it
            threading.Thread(target=self._close_after, args=(executor,), name="cekura-poller-close", daemon=True).start()

    def _close_after(self, executor: ThreadPoolExecutor) -> None:
        executor.shutdown(wait=True)
        hook, self._hook = self._hook, None
        if hook is not None:
            hook.close()

    # ------------------------------------------------------------------ HTTP (in the poller's threads)

    def _fetch(self, page: list[int]) -> list[dict[str, Any]]:
        with self._hook_lock:
            if self._hook is None:
                # imports and the connection lookup happen here, off the event loop, once per poller
                from airflow_provider_cekura.hooks.cekura import CekuraHook

                hook = CekuraHook(cekura_conn_id=self.cekura_conn_id, pool_size=MAX_THREADS)
                hook.base_url  # noqa: B018 - resolves the connection (its errors fail this page)
                self._hook = hook
            hook = self._hook
        return hook.get_call_logs(page)


def _outcomes(
    asked: dict[Subscription, list[int]], pages: list[list[int]], answers: list[Any]
) -> dict[Subscription, EvaluationSummary | BaseException]:
    """Each subscription's summary of one round (or the error of a page holding one of its ids)."""
    from airflow_provider_cekura.evaluation import summarize

    found: dict[int, Mapping[str, Any]] = {}
    failed: dict[int, BaseException] = {}
    for page, answer in zip(pages, answers, strict=True):
        if isinstance(answer, BaseException):
            failed.update(dict.fromkeys(page, answer))
        else:
            found.update((int(c["id"]), c) for c in answer)
    outcomes: dict[Subscription, EvaluationSummary | BaseException] = {}
    for subscription, pending in asked.items():
        error = next((failed[i] for i in pending if i in failed), None)
        if error is not None:
            outcomes[subscription] = error
            continue
        logs = [*subscription.done_logs.values(), *(found[i] for i in pending if i in found)]
        summary = summarize(subscription.call_log_ids, logs)
        for cid in (*summary.evaluated, *summary.failed):
            if cid not in subscription.done_logs:
                subscription.done_logs[cid] = found[cid]
        outcomes[subscription] = summary
    return outcomes
