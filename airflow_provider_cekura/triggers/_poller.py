"""One shared poll for every deferred Cekura wait of a connection in a triggerer.

Each :class:`~airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger`
subscribes its ids to the :class:`SharedPoller` of its ``cekura_conn_id`` (one
per event loop, i.e. per triggerer process) and awaits its own outcomes. The
poller asks the list endpoint about the pending ids of all subscriptions due
together, one ``call_ids=`` request per :data:`~airflow_provider_cekura._coerce.IDS_PER_REQUEST` ids, at most
:data:`MAX_THREADS` requests at a time, and hands each subscription the
:class:`~airflow_provider_cekura.evaluation.EvaluationSummary` of its own ids.

- Each subscription is polled at least every ``poll_interval`` seconds it asked for
  (and once more at its deadline). A round also takes along the subscriptions due
  within half the shortest interval, so waits that started at different moments
  fall into step and share requests.
- Ids that are done (evaluated or failed) are not asked about again by that subscription.
- A wait is woken (its outcome delivered) as soon as the pages holding its ids have
  answered, and only when it must act: all its ids finished, a poll failed, the first
  answer after a failed one, or any answer after its deadline. Otherwise a poll with
  news (the first one, or some ids finished) calls the wait's ``on_progress`` and one
  without news does nothing: a thousand waits still evaluating cost no task step,
  future or summary per round. A page that fails (after the hook's own retries) fails
  the subscriptions with an id in it for that round only.
- Results are kept packed (JSON text per call log, see
  :func:`~airflow_provider_cekura.evaluation.pack_result`): strings, which the garbage
  collector never scans, rather than a dict and lists per call log until the events.
- HTTP goes through the sync :class:`~airflow_provider_cekura.hooks.cekura.CekuraHook`
  (its one retry policy) on a small thread pool owned by the poller, never the loop's
  default executor; the hook is imported, built and its connection looked up there.
  Each page's call logs are classified there too, so the loop only merges small
  results and hands them out, a batch at a time.
- The poller starts with the first subscription and stops with the last one (its
  threads end and the hook closes once the requests still in flight return).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from airflow_provider_cekura._coerce import IDS_PER_REQUEST

if TYPE_CHECKING:
    from airflow_provider_cekura.evaluation import EvaluationSummary, PackedResult
    from airflow_provider_cekura.hooks.cekura import CekuraHook

ProgressCallback = Callable[[int, int], None]
"""``on_progress(still_pending, total)`` of a wait (see :meth:`Subscription.answer`)."""

MAX_THREADS = 16
"""Requests in flight at once per connection and triggerer (the poller's thread pool size)."""

JOIN_DELAY = 0.1
"""Seconds a new wait waits for its first poll, so that waits created together share it."""

HANDOUT_BATCH = 20
"""Subscriptions woken per event-loop turn when a round hands out its results."""

SETUP_BATCH = 100
"""Subscriptions a round looks at per event-loop turn while it works out which pages to ask for."""

_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SharedPoller]] = weakref.WeakKeyDictionary()


def shared_poller(cekura_conn_id: str) -> SharedPoller:
    """The running event loop's poller for ``cekura_conn_id`` (created on first use)."""
    loop = asyncio.get_running_loop()
    pollers = _POLLERS.setdefault(loop, {})
    poller = pollers.get(cekura_conn_id)
    if poller is None:
        poller = pollers[cekura_conn_id] = SharedPoller(cekura_conn_id, loop)
    return poller


class Subscription:
    """One wait's place in the shared poll: its ids, its interval, its next outcome.

    A context manager: entering joins the poll, leaving takes this wait out of it and nothing else.
    It keeps the few objects a wait needs for its whole life (slots, its ids as a tuple, its results as
    text, one future while the wait awaits its outcome), so that thousands of waits add little to what
    the garbage collector has to look at.
    """

    __slots__ = (
        "_awaited",
        "_context",
        "_must_report",
        "_poller",
        "_progress_shown",
        "_ready",
        "call_log_ids",
        "closed",
        "deadline_at",
        "evaluated",
        "expired",
        "expires_at",
        "failed",
        "in_flight",
        "next_due",
        "on_progress",
        "poll_by",
        "poll_interval",
    )

    def __init__(
        self,
        poller: SharedPoller,
        call_log_ids: list[int],
        poll_interval: float,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.call_log_ids = tuple(call_log_ids)  # a tuple of ints: untracked by the garbage collector
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        """Called on the loop with (still pending, total) when a poll has news but the wait goes on."""
        self._context = contextvars.copy_context()
        """The subscribing trigger's context: ``on_progress`` runs in it (the triggerer routes a trigger's
        log lines to that task's log by context variables)."""
        self._poller = poller
        self.next_due = poller.loop.time() + min(JOIN_DELAY, poll_interval)
        self.poll_by: float | None = None
        self.deadline_at: float | None = None
        """Loop time of the wait's deadline: the poll that answers after it is always reported."""
        self.in_flight = False
        self.closed = False
        self.expired = False
        self.expires_at: float | None = None
        """Loop time from which :meth:`next_outcome` raises :class:`TimeoutError` (the poller's scheduler expires it)."""
        self.evaluated: dict[int, PackedResult] = {}
        """Packed results of the call logs already evaluated: not asked about again."""
        self.failed: dict[int, PackedResult] = {}
        """Packed results of the call logs whose evaluation failed: not asked about again."""
        self._awaited: asyncio.Future[EvaluationSummary] | None = None
        """The future :meth:`next_outcome` handed out, not answered yet."""
        self._ready: asyncio.Future[EvaluationSummary] | None = None
        """An outcome delivered before anybody asked for it."""
        self._must_report = False
        """The next answer wakes the wait even without news: the first one after a failed poll."""
        self._progress_shown = False

    def __enter__(self) -> Subscription:
        self._poller._join(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True
        self._poller._leave(self)

    def is_finished(self, call_log_id: int) -> bool:
        return call_log_id in self.evaluated or call_log_id in self.failed

    def pending_ids(self) -> list[int]:
        return [i for i in self.call_log_ids if not self.is_finished(i)]

    def pending_count(self) -> int:
        return len(self.call_log_ids) - len(self.evaluated) - len(self.failed)

    def has_pending(self) -> bool:
        return self.pending_count() > 0

    def poll_before(self, deadline: float) -> None:
        """Make sure one poll starts by ``deadline`` (epoch seconds), even when the interval is longer."""
        self.poll_by = self.deadline_at = self._poller.loop.time() + (deadline - time.time())
        self._poller.wake(self.due_at)

    def expire_at(self, at: float) -> None:
        """From ``at`` (epoch seconds) on, :meth:`next_outcome` raises :class:`TimeoutError`.

        No timer per wait: the poller's scheduler, which wakes for the polls anyway, expires it.
        """
        self.expires_at = self._poller.loop.time() + (at - time.time())
        self._poller.wake(self.expires_at)

    def expire(self) -> None:
        self.expired = True
        self.expires_at = None
        future, self._awaited = self._awaited, None
        if future is not None and not future.done():
            future.set_exception(TimeoutError())

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

    def next_outcome(self) -> asyncio.Future[EvaluationSummary]:
        """The next poll's summary of this wait's ids, to await; raises what the poll raised, or TimeoutError.

        A plain future (no coroutine, no task, no timer per poll): what a wait keeps alive between two
        polls is what survives into the garbage collector's oldest generation.
        """
        loop = self._poller.loop
        future, self._ready = self._ready, None
        if future is not None:
            return future
        future = loop.create_future()
        if self.expired:
            future.set_exception(TimeoutError())
        else:
            self._awaited = future
        return future

    def answer(self, answers: _Answers) -> None:
        """This poll's answer: wake the wait only when it must act, else report progress or nothing.

        The wait is woken (its future resolved) when every id has finished, when the poll failed, on
        the first answer after a failed one (it resets the wait's error count) and on any answer after
        the deadline. A first answer, or one where some ids finished, while others are still evaluating,
        only calls :attr:`on_progress`: no task step, future or summary per wait and round.
        """
        error = answers.error_for(self)
        if error is not None:
            self._must_report = True
            self.deliver(error)
            return
        finished = answers.record(self)
        past_deadline = self.deadline_at is not None and self._poller.loop.time() >= self.deadline_at
        if not self.has_pending() or self._must_report or past_deadline:
            self._must_report = False
            self.deliver(answers.outcome(self))
            return
        self.in_flight = False
        if (finished or not self._progress_shown) and not self.closed:
            self._progress_shown = True
            if self.on_progress is not None:
                self._context.run(self.on_progress, self.pending_count(), len(self.call_log_ids))

    def deliver(self, outcome: EvaluationSummary | BaseException) -> None:
        self.in_flight = False
        if self.closed:
            return
        future, self._awaited = self._awaited, None
        if future is None or future.done():  # nobody is waiting (or the wait was cancelled): keep it
            if self._ready is not None and not self._ready.cancelled():
                self._ready.exception()  # an outcome nobody took: superseded by this one
            future = self._ready = self._poller.loop.create_future()
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
        self.subscriptions: dict[Subscription, None] = {}
        """The waits in the poll, in joining order (a dict: a wait leaves in O(1), whatever their number)."""
        self._executor: ThreadPoolExecutor | None = None
        self._hook: CekuraHook | None = None
        self._hook_lock = threading.Lock()
        self._stopped = False
        self._runner: asyncio.Task[None] | None = None
        self._round_tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._sleeps_until = float("-inf")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cekura_conn_id={self.cekura_conn_id!r}, waits={len(self.subscriptions)})"

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    def subscribe(
        self, call_log_ids: list[int], poll_interval: float, on_progress: ProgressCallback | None = None
    ) -> Subscription:
        """A place in the shared poll, to use as ``with poller.subscribe(ids, interval) as subscription:``.

        Leaving the block (also by cancellation) takes this wait out and nothing else. ``on_progress``
        is called with (still pending, total) when a poll has news but the wait goes on.
        """
        return Subscription(self, call_log_ids, poll_interval, on_progress)

    def _join(self, subscription: Subscription) -> None:
        self.subscriptions[subscription] = None
        if not self.running:
            with self._hook_lock:
                self._stopped = False  # (re)started: the hook of an earlier run was cancelled with it
            self._executor = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="cekura-poller")
            # Thread.start() waits until the new thread runs: start the pool's threads off the event loop
            threading.Thread(target=_start_threads, args=(self._executor,), name="cekura-poller-start").start()
            # an empty context: the poller belongs to no trigger (the first one's would route its logs there)
            self._runner = self.loop.create_task(
                self._run(), name=f"cekura-poller-{self.cekura_conn_id}", context=contextvars.Context()
            )
        self.wake(subscription.due_at)

    def _leave(self, subscription: Subscription) -> None:
        self.subscriptions.pop(subscription, None)
        if not self.subscriptions:
            self._stop()

    def wake(self, due_at: float | None = None) -> None:
        """Have the scheduler look again (only if ``due_at`` comes before the moment it will anyway)."""
        if due_at is None or due_at < self._sleeps_until:
            self._wakeup.set()

    # ------------------------------------------------------------------ scheduling (on the loop)

    async def _run(self) -> None:
        while self.subscriptions:
            now = self.loop.time()
            for subscription in self.subscriptions:
                if subscription.expires_at is not None and subscription.expires_at <= now:
                    subscription.expire()
            expiries = [s.expires_at for s in self.subscriptions if s.expires_at is not None]
            # a wait whose ids are all done has its outcome and is about to leave
            idle = [s for s in self.subscriptions if not s.in_flight and s.has_pending()]
            if idle and min(s.due_at for s in idle) <= now:
                # take along whatever falls due within half the shortest interval: waits fall into step
                horizon = now + 0.5 * min(s.poll_interval for s in self.subscriptions)
                due = [s for s in idle if s.due_at <= horizon]
                for subscription in due:
                    subscription.scheduled(now)
                task = self.loop.create_task(self._round(due))
                self._round_tasks.add(task)
                task.add_done_callback(self._round_tasks.discard)
                continue
            self._wakeup.clear()
            wake_at = min([s.due_at for s in idle] + expiries, default=None)
            timeout = None if wake_at is None else wake_at - now
            self._sleeps_until = float("inf") if timeout is None else now + timeout
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                self._sleeps_until = float("-inf")

    async def _round(self, asked: list[Subscription]) -> None:
        """Ask about the pending ids of ``asked``; each wait gets its outcome as soon as its pages answered.

        A subscription's pending ids do not change while its round is in flight (only its outcome marks
        ids done), so they are read again where needed rather than kept for the round.
        """
        # Built a slice of waits per loop turn: a thousand waits of ten ids are 10,000 ids to sort and place.
        pending: dict[Subscription, list[int]] = {}
        for n, subscription in enumerate(asked, 1):
            pending[subscription] = subscription.pending_ids()
            if n % SETUP_BATCH == 0:
                await asyncio.sleep(0)
        ids = sorted(set().union(*pending.values()))
        pages = [ids[n : n + IDS_PER_REQUEST] for n in range(0, len(ids), IDS_PER_REQUEST)]
        page_of = {cid: n for n, page in enumerate(pages) for cid in page}
        waits_on: list[list[Subscription]] = [[] for _ in pages]
        unanswered: dict[Subscription, int] = {}
        for n, (subscription, its_ids) in enumerate(pending.items(), 1):
            needed = {page_of[i] for i in its_ids}
            unanswered[subscription] = len(needed)
            for page in needed:
                waits_on[page].append(subscription)
            if n % SETUP_BATCH == 0:
                await asyncio.sleep(0)
        del pending
        answers = _Answers()
        ready = [s for s, count in unanswered.items() if not count]
        # Each page's answer comes back through one queue: no asyncio future, callback or context copy
        # per request (asyncio.wait over a hundred futures adds and removes a callback on each, every time).
        answered: asyncio.Queue[tuple[int, EvaluationSummary | Exception]] = asyncio.Queue()
        jobs = [self._submit(page, n, answered) for n, page in enumerate(pages)]
        remaining = len(pages)
        try:
            while True:
                for n, subscription in enumerate(ready, 1):
                    subscription.answer(answers)
                    if n % HANDOUT_BATCH == 0:
                        await asyncio.sleep(0)  # let the woken triggers (and everything else) run
                if not remaining:
                    break
                batch = [await answered.get()]
                while not answered.empty():
                    batch.append(answered.get_nowait())
                remaining -= len(batch)
                ready = []
                for n, answer in batch:
                    answers.add(pages[n], answer)
                    for subscription in waits_on[n]:
                        unanswered[subscription] -= 1
                        if not unanswered[subscription]:
                            ready.append(subscription)
        finally:
            for job in jobs:
                job.cancel()  # the pages not sent yet (a cancelled round: the poller stopped)
            self.wake()

    def _submit(
        self, page: list[int], n: int, answered: asyncio.Queue[tuple[int, EvaluationSummary | Exception]]
    ) -> Future[None]:
        """Fetch ``page`` on the poller's threads; its answer (or error) is put on ``answered`` as ``(n, ...)``."""
        assert self._executor is not None
        return self._executor.submit(self._fetch_into, page, n, answered)

    def _stop(self) -> None:
        """The last subscription left: stop polling; threads end and the hook closes once idle."""
        pollers = _POLLERS.get(self.loop, {})
        if pollers.get(self.cekura_conn_id) is self:
            del pollers[self.cekura_conn_id]
        for task in (self._runner, *self._round_tasks):
            if task is not None:
                task.cancel()
        self._runner = None  # stopped now, though the cancelled tasks end at their next step
        with self._hook_lock:
            self._stopped = True
            hook, self._hook = self._hook, None
        if hook is not None:
            hook.cancel()  # a request in its retry loop ends now: nobody waits for its answer
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            # A request still in flight ends within the hook's deadlines; the hook is closed after it, by the
            # closer thread (started off the loop with the pool: Thread.start() would block the loop here).
            _CLOSER.put((executor, hook))

    # ------------------------------------------------------------------ HTTP (in the poller's threads)

    def _fetch_into(
        self, page: list[int], n: int, answered: asyncio.Queue[tuple[int, EvaluationSummary | Exception]]
    ) -> None:
        try:
            answer: EvaluationSummary | Exception = self._fetch(page)
        except Exception as err:  # the page failed (after the hook's retries): its waits hear of it
            answer = err
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            self.loop.call_soon_threadsafe(answered.put_nowait, (n, answer))

    def _fetch(self, page: list[int]) -> EvaluationSummary:
        """One list request for ``page``, classified at once (the raw call logs are dropped here, young)."""
        from airflow_provider_cekura.waiting import check_evaluations

        with self._hook_lock:
            if self._hook is None:
                # imports and the connection lookup happen here, off the event loop, once per poller
                from airflow_provider_cekura.hooks.cekura import CekuraHook

                hook = CekuraHook(cekura_conn_id=self.cekura_conn_id, pool_size=MAX_THREADS)
                hook.base_url  # noqa: B018 - resolves the connection (its errors fail this page)
                self._hook = hook
                if self._stopped:  # stopped while this page waited for the connection: send nothing
                    hook.cancel()
            hook = self._hook
        return check_evaluations(hook, page, packed=True)


_CLOSER: queue.SimpleQueue[tuple[ThreadPoolExecutor, CekuraHook | None]] = queue.SimpleQueue()
"""Stopped pollers whose hook is closed once their last request returned (by :func:`_closer`)."""
_CLOSER_STARTED = threading.Lock()
_closer_thread: threading.Thread | None = None


def _close_after(executor: ThreadPoolExecutor, hook: CekuraHook | None) -> None:
    """Close ``hook`` once the requests still running on ``executor`` have returned."""
    executor.shutdown(wait=True)
    if hook is not None:
        hook.close()


def _closer() -> None:
    while True:
        executor, hook = _CLOSER.get()
        with contextlib.suppress(Exception):
            _close_after(executor, hook)


def _start_closer() -> None:
    """Start the one closer thread of the process, if not yet (called off the loop)."""
    global _closer_thread
    with _CLOSER_STARTED:
        if _closer_thread is None or not _closer_thread.is_alive():
            _closer_thread = threading.Thread(target=_closer, name="cekura-hook-closer", daemon=True)
            _closer_thread.start()


def _start_threads(executor: ThreadPoolExecutor) -> None:
    """Have ``executor`` start all its threads now (each job waits until every thread holds one)."""
    _start_closer()
    barrier = threading.Barrier(MAX_THREADS)

    def hold() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)

    with contextlib.suppress(RuntimeError):  # the poller stopped already
        for _ in range(MAX_THREADS):
            executor.submit(hold)


class _Answers:
    """What the pages of one round answered so far (packed results), merged into each wait's own summary."""

    def __init__(self) -> None:
        self.evaluated: dict[int, PackedResult] = {}
        self.failed: dict[int, PackedResult] = {}
        self.pending: set[int] = set()
        self.errors: dict[int, BaseException] = {}

    def add(self, page: list[int], answer: EvaluationSummary | BaseException) -> None:
        if isinstance(answer, BaseException):
            self.errors.update(dict.fromkeys(page, answer))
            return
        self.evaluated.update(answer.evaluated)  # type: ignore[arg-type]  # packed in the poller's threads
        self.failed.update(answer.failed)  # type: ignore[arg-type]
        self.pending.update(answer.pending)

    def error_for(self, subscription: Subscription) -> BaseException | None:
        """The error of a page that held one of the wait's pending ids, if one failed."""
        if not self.errors:
            return None
        return next((self.errors[i] for i in subscription.pending_ids() if i in self.errors), None)

    def record(self, subscription: Subscription) -> int:
        """Remember in ``subscription`` the ids that finished in this round; returns how many did."""
        finished = 0
        for cid in subscription.pending_ids():
            if cid in self.evaluated:
                subscription.evaluated[cid] = self.evaluated[cid]
            elif cid in self.failed:
                subscription.failed[cid] = self.failed[cid]
            else:
                continue
            finished += 1
        return finished

    def outcome(self, subscription: Subscription) -> EvaluationSummary:
        """The wait's summary (after :meth:`record`): its finished ids, and the others pending or missing."""
        from airflow_provider_cekura.evaluation import EvaluationSummary

        summary = EvaluationSummary()
        for cid in subscription.call_log_ids:
            if cid in subscription.evaluated:
                summary.evaluated[cid] = subscription.evaluated[cid]
            elif cid in subscription.failed:
                summary.failed[cid] = subscription.failed[cid]
            elif cid in self.pending:
                summary.pending.append(cid)
            else:
                summary.missing.append(cid)
        return summary
