"""CekuraCallLogsEvaluatedTrigger: an event trigger for an ``AssetWatcher`` that fires when call logs finish evaluation.

A DAG scheduled on an ``Asset`` watched by this trigger runs when Cekura has finished evaluating call
logs (Airflow 3: event-driven scheduling), instead of on a clock::

    from airflow.sdk import DAG, Asset, AssetWatcher

    evaluated = Asset(
        "cekura_evaluated_call_logs",
        watchers=[AssetWatcher(name="cekura_evaluated", trigger=CekuraCallLogsEvaluatedTrigger(poll_interval=60))],
    )
    with DAG(dag_id="on_evaluation", schedule=[evaluated]): ...

How it polls: every ``poll_interval`` seconds one walk of the list endpoint over the calls of the look-back
window (call ``timestamp`` in the last ``lookback``; the API has no filter or ordering on ``updated_at``),
one request per page, through the connection's :class:`~airflow_provider_cekura.hooks.cekura.CekuraHook`
(its retry policy and shared rate limiter) on a thread of the trigger's own, never on the event loop.
Each call log is classified by :func:`airflow_provider_cekura.evaluation.evaluation_state`; the finished
ones (``evaluated`` or ``failed``) not seen before with the same ``updated_at`` are announced, at most
``max_ids_per_event`` per event. A re-evaluation finishes with a new ``updated_at``: announced again.

What survives a restart (delivery is at least once):

- The cursor is a watermark on ``updated_at`` plus the ``(id, updated_at)`` pairs announced within
  :data:`SETTLE` of the newest one (bounded by :data:`MAX_SEEN`). A call log whose ``updated_at`` is older
  than the watermark counts as announced.
- Airflow 3.3+: the cursor is written to the watched asset's state store (AIP-103) under
  :data:`CURSOR_KEY`, once the events it covers are at least :data:`COMMIT_DELAY` seconds old (the
  triggerer has handed them to the database by then). A restarted trigger reads it back: it can repeat
  what it announced in the last :data:`COMMIT_DELAY` seconds before it stopped, never lose a call log that
  finished inside the look-back window.
- Airflow 3.0-3.2, a trigger that watches several assets, or outside a triggerer: the cursor lives in
  memory; a restarted trigger announces again every finished call log of the look-back window.

Sibling watchers (Airflow 3.3+): triggers with the same connection, filters, ``lookback`` and
``poll_interval`` return the same :meth:`~CekuraCallLogsEvaluatedTrigger.shared_stream_key`; the triggerer
then runs one poll for all of them (:meth:`~CekuraCallLogsEvaluatedTrigger.open_shared_stream`) and each
keeps its own cursor, state store and events (:meth:`~CekuraCallLogsEvaluatedTrigger.filter_shared_stream`).

Errors: a transient failure (5xx, 429 beyond the hook's own wait, timeouts, a malformed page) is logged
and the next poll waits longer (doubling up to :data:`MAX_BACKOFF`); the first good poll resets it.
A refused key (401/403), a rejected filter (400) or an unusable connection ends the trigger with an
error naming the connection, never the key, after one more ``poll_interval`` (at most :data:`FATAL_PAUSE`):
Airflow's triggerer starts a watcher that ended again, so a wrong key is retried at the pace of the polls
and its error repeats in the triggerer's log until the connection is fixed. While healthy ``run()`` never
returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.exceptions import (
    CekuraAuthError,
    CekuraBadRequestError,
    CekuraConfigurationError,
    CekuraError,
    CekuraNotFoundError,
    CekuraValidationError,
)
from airflow_provider_cekura.version_compat import (
    BaseEventTrigger,
    TriggerEvent,
    asset_state_store_of,
    require_event_driven_scheduling,
)

if TYPE_CHECKING:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

MAX_LOOKBACK = timedelta(days=30)
"""The widest look-back window (the API's list windows are split at 30 days by default)."""

DEFAULT_LOOKBACK = timedelta(days=1)
"""Look-back window when none is given."""

FUTURE_SLACK = timedelta(minutes=5)
"""The window ends this far after now: calls stamped slightly ahead (clock skew) are listed too."""

MAX_IDS_PER_EVENT = 100
"""Default bound on the call logs one event names (more finished ones: more events)."""

SETTLE = timedelta(minutes=10)
"""The watermark trails the newest announced ``updated_at`` by this much (late commits on the server)."""

MAX_SEEN = 1000
"""Most ``(id, updated_at)`` pairs the cursor keeps (the watermark moves up to keep it there): about 40 KB of
JSON, below the asset state store's default value limit (``[state_store] max_value_storage_bytes``, 64 KB)."""

COMMIT_DELAY = 10.0
"""Seconds an event must be old before the cursor that covers it is written to the state store."""

MAX_BACKOFF = 600.0
"""Longest wait between two polls after failures, seconds (never shorter than ``poll_interval``)."""

FATAL_PAUSE = 60.0
"""Most seconds the trigger waits before it ends on an error another poll cannot cure."""

CURSOR_KEY = "cekura_evaluated_call_logs_cursor"
"""Key of the cursor in the asset state store (Airflow 3.3+)."""

FATAL_ERRORS = (
    CekuraAuthError,
    CekuraBadRequestError,
    CekuraNotFoundError,
    CekuraConfigurationError,
    CekuraValidationError,
)
"""Errors another poll cannot cure: they end the trigger."""

Finished = tuple[int, str, bool | None, str]
"""A finished call log as a poll reports it: ``(id, state, success, updated_at)``."""


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CekuraValidationError(name, f"must be seconds or a timedelta, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise CekuraValidationError(name, f"must be seconds or a timedelta, got {value!r}") from None


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise CekuraValidationError(name, f"must be a positive integer, got {value!r}")
    return int(value)


def _filters(value: Any) -> dict[str, Any] | None:
    """``filters_v2`` as a dict (JSON text accepted), checked for shape; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise CekuraValidationError("filters_v2", "is not valid JSON") from None
    if not isinstance(value, Mapping) or not ({"field", "op"} <= set(value) or "conditions" in value):
        raise CekuraValidationError("filters_v2", "must be {field, op, value} or {operator, conditions: [...]}")
    return dict(value)


class Cursor:
    """Which finished call logs were announced: a watermark on ``updated_at`` and the pairs above it.

    :param watermark: ISO ``updated_at``; older call logs count as announced.
    :param seen: ``{id: updated_at}`` announced at or above the watermark.
    """

    def __init__(self, watermark: str | None = None, seen: Mapping[int, str] | None = None) -> None:
        self.watermark = watermark
        self._watermark_at = _parse_time(watermark) if watermark else None
        self.seen: dict[int, str] = dict(seen or {})

    def is_new(self, call_log_id: int, updated_at: str) -> bool:
        """Whether a finished call log with this ``updated_at`` was not announced yet."""
        if self.seen.get(call_log_id) == updated_at:
            return False
        if self._watermark_at is not None and updated_at:
            at = _parse_time(updated_at)
            if at is not None and at < self._watermark_at:
                return False
        return True

    def record(self, finished: list[Finished]) -> None:
        """Remember ``finished`` as announced; move the watermark up and forget what fell below it."""
        for call_log_id, _, _, updated_at in finished:
            self.seen[call_log_id] = updated_at
        stamped = sorted(
            ((at, cid) for cid, stamp in self.seen.items() if (at := _parse_time(stamp)) is not None),
            reverse=True,
        )
        if not stamped:
            return
        floor = stamped[0][0] - SETTLE
        if len(stamped) > MAX_SEEN:
            floor = max(floor, stamped[MAX_SEEN - 1][0])
        if self._watermark_at is None or floor > self._watermark_at:
            self._watermark_at = floor
            self.watermark = floor.isoformat().replace("+00:00", "Z")
        kept = {cid for at, cid in stamped if at >= self._watermark_at}
        self.seen = {cid: stamp for cid, stamp in self.seen.items() if cid in kept or _parse_time(stamp) is None}

    def to_json(self) -> dict[str, Any]:
        """What the state store keeps (plain JSON)."""
        return {"v": 1, "watermark": self.watermark, "seen": {str(k): v for k, v in self.seen.items()}}

    @classmethod
    def from_json(cls, value: Any) -> Cursor | None:
        """The cursor :meth:`to_json` wrote, or ``None`` when ``value`` is not one."""
        if not isinstance(value, Mapping) or value.get("v") != 1 or not isinstance(value.get("seen"), Mapping):
            return None
        watermark = value.get("watermark")
        try:
            seen = {int(k): str(v) for k, v in value["seen"].items()}
        except (TypeError, ValueError):
            return None
        return cls(watermark if isinstance(watermark, str) else None, seen)


class CekuraCallLogsEvaluatedTrigger(BaseEventTrigger):
    """Fire an event whenever call logs of a project have finished evaluation (for an ``AssetWatcher``).

    Each event's payload is ``{"call_log_ids": [int, ...], "call_logs": [{"id", "state", "success",
    "updated_at"}, ...]}`` with at most ``max_ids_per_event`` call logs, ``state`` being ``evaluated`` or
    ``failed``; a DAG run it starts reads it from ``triggering_asset_events`` (``event.extra["payload"]``).
    A call log still evaluating never appears; a finished one appears once per evaluation (a re-evaluation
    appears again when it finishes). Delivery is at least once across restarts: see the module docstring
    for what a restart can repeat. Airflow 3.0 or later (event-driven scheduling).

    :param cekura_conn_id: connection id of type ``cekura``.
    :param poll_interval: seconds between two polls (> 0).
    :param agent_id: only call logs of this agent.
    :param assistant_id: only call logs of this assistant (the voice platform's id).
    :param project_id: only this project (default: the connection's ``project_id`` extra).
    :param filters_v2: the API's structured filter (dict or JSON text), e.g. only one ``call_ended_reason``.
    :param lookback: how far back (call ``timestamp``) each poll looks, seconds or a timedelta, at most 30
        days (default 1 day). A call log whose call is older is never announced; each poll costs one
        request per page of calls in the window.
    :param max_ids_per_event: most call logs one event names (default 100).
    """

    def __init__(
        self,
        *,
        cekura_conn_id: str = "cekura_default",
        poll_interval: float = 60.0,
        agent_id: int | str | None = None,
        assistant_id: str | None = None,
        project_id: int | str | None = None,
        filters_v2: dict[str, Any] | str | None = None,
        lookback: float | timedelta = DEFAULT_LOOKBACK,
        max_ids_per_event: int = MAX_IDS_PER_EVENT,
    ) -> None:
        require_event_driven_scheduling(type(self).__name__)
        super().__init__()
        if not isinstance(cekura_conn_id, str) or not cekura_conn_id.strip():
            raise CekuraValidationError("cekura_conn_id", f"must be a connection id, got {cekura_conn_id!r}")
        self.cekura_conn_id = cekura_conn_id
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        if not self.poll_interval > 0:
            raise CekuraValidationError("poll_interval", f"must be a positive number of seconds, got {poll_interval!r}")
        self.lookback = _seconds(lookback, "lookback")
        if not 0 < self.lookback <= MAX_LOOKBACK.total_seconds():
            raise CekuraValidationError("lookback", f"must be more than 0 and at most 30 days, got {lookback!r}")
        self.agent_id = _optional_int(agent_id, "agent_id")
        self.project_id = _optional_int(project_id, "project_id")
        if assistant_id is not None and (not isinstance(assistant_id, str) or not assistant_id.strip()):
            raise CekuraValidationError("assistant_id", f"must be a non-empty string, got {assistant_id!r}")
        self.assistant_id = assistant_id
        self.filters_v2 = _filters(filters_v2)
        if isinstance(max_ids_per_event, bool) or not isinstance(max_ids_per_event, int) or max_ids_per_event < 1:
            raise CekuraValidationError("max_ids_per_event", f"must be a positive integer, got {max_ids_per_event!r}")
        self.max_ids_per_event = max_ids_per_event
        self.cursor = Cursor()
        """What this instance announced (restored from the state store at the start of :meth:`run`)."""
        self.polls = 0
        self.requests_per_poll: deque[int] = deque(maxlen=100)
        """List requests of the last 100 successful polls (for tests, benchmarks and the logs)."""
        self._pending_commits: list[tuple[float, dict[str, Any]]] = []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "cekura_conn_id": self.cekura_conn_id,
                "poll_interval": self.poll_interval,
                "agent_id": self.agent_id,
                "assistant_id": self.assistant_id,
                "project_id": self.project_id,
                "filters_v2": self.filters_v2,
                "lookback": self.lookback,
                "max_ids_per_event": self.max_ids_per_event,
            },
        )

    # ------------------------------------------------------------------ the loop

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in self._announce(self._raw_polls()):
            yield event

    def shared_stream_key(self) -> Hashable | None:
        """Watchers of one connection with the same filters, window and interval share one poll (Airflow 3.3+).

        The triggerer then runs one :meth:`open_shared_stream` for them and hands every poll's finished call
        logs to each one's :meth:`filter_shared_stream`, which keeps its own cursor, state store and events.
        """
        filters = None if self.filters_v2 is None else json.dumps(self.filters_v2, sort_keys=True)
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            self.cekura_conn_id,
            self.agent_id,
            self.assistant_id,
            self.project_id,
            filters,
            self.lookback,
            self.poll_interval,
        )

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """The shared poll (Airflow 3.3+): each successful poll's ``(finished call logs, requests)``, forever."""
        async for polled in cls(**kwargs)._raw_polls():
            yield polled

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """This watcher's events from the shared poll (see :meth:`shared_stream_key`)."""
        async for event in self._announce(shared_stream):
            yield event

    async def _announce(self, polls: AsyncIterator[tuple[list[Finished], int]]) -> AsyncIterator[TriggerEvent]:
        """Events for the call logs of each poll that finished since they were last announced."""
        await self._restore_cursor()
        due = asyncio.Event()  # set when a cursor waits to be written
        committer = asyncio.ensure_future(self._commit_when_settled(due))
        try:
            async for finished, requests in polls:
                self.polls += 1
                self.requests_per_poll.append(requests)
                new = [f for f in finished if self.cursor.is_new(f[0], f[3])]
                if not new:
                    continue
                self.log.info(
                    "%d call log(s) finished evaluation (poll %d, %d request(s))", len(new), self.polls, requests
                )
                for start in range(0, len(new), self.max_ids_per_event):
                    yield TriggerEvent(_payload(new[start : start + self.max_ids_per_event]))
                self.cursor.record(new)
                self._pending_commits.append((time.monotonic() + COMMIT_DELAY, self.cursor.to_json()))
                due.set()
        finally:
            committer.cancel()

    async def _raw_polls(self) -> AsyncIterator[tuple[list[Finished], int]]:
        """Poll every ``poll_interval``: each good poll's finished call logs and request count; back off on errors."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cekura-evaluated")
        holder: dict[str, CekuraHook] = {}
        try:
            failures = 0
            while True:
                started = time.monotonic()
                try:
                    polled = await loop.run_in_executor(executor, self._poll, holder)
                except FATAL_ERRORS as err:
                    # Airflow's triggerer starts a watcher that ended again at its next look: pause one poll
                    # interval first (at most a minute), so that a wrong key costs what a healthy poll costs.
                    self.log.error("Connection %r: %s (the trigger ends)", self.cekura_conn_id, err)
                    await asyncio.sleep(min(self.poll_interval, FATAL_PAUSE))
                    raise CekuraError(
                        f"{type(self).__name__} on connection {self.cekura_conn_id!r} stopped: {err}"
                    ) from err
                except Exception as err:  # transient (5xx, 429, timeouts, a bad page): back off, poll again
                    failures += 1
                    delay = min(self.poll_interval * 2**failures, max(self.poll_interval, MAX_BACKOFF))
                    self.log.warning(
                        "Poll of connection %r failed (%d in a row), next in %.1fs: %s: %s",
                        self.cekura_conn_id,
                        failures,
                        delay,
                        type(err).__name__,
                        err,
                    )
                    await asyncio.sleep(delay)
                    continue
                if failures:
                    self.log.info("Connection %r answers again after %d failed poll(s)", self.cekura_conn_id, failures)
                failures = 0
                yield polled
                await asyncio.sleep(max(0.0, started + self.poll_interval - time.monotonic()))
        finally:
            hook = holder.get("hook")
            if hook is not None:
                executor.submit(hook.close)  # after a request still in flight, off the loop
            executor.shutdown(wait=False)

    def _poll(self, holder: dict[str, CekuraHook]) -> tuple[list[Finished], int]:
        """One walk of the look-back window (in the trigger's thread): the finished call logs, requests sent."""
        from airflow_provider_cekura.evaluation import EvaluationState, evaluation_state

        hook = holder.get("hook")
        if hook is None:
            from airflow_provider_cekura.hooks.cekura import CekuraHook

            hook = holder["hook"] = CekuraHook(cekura_conn_id=self.cekura_conn_id)
        end = datetime.now(UTC) + FUTURE_SLACK
        filters: dict[str, Any] = {
            key: value
            for key, value in (
                ("agent_id", self.agent_id),
                ("assistant_id", self.assistant_id),
                ("project_id", self.project_id),
                ("filters_v2", self.filters_v2),
            )
            if value is not None
        }
        finished: dict[int, Finished] = {}
        pages = hook.iter_call_log_pages(
            timestamp_from=end - timedelta(seconds=self.lookback), timestamp_to=end, prefetch=False, **filters
        )
        requests = 0
        for page in pages:
            requests += 1  # one list request per page (the hook's retries aside)
            for call_log in page:
                state = evaluation_state(call_log)
                if state is EvaluationState.PENDING:
                    continue
                call_log_id = int(call_log["id"])
                updated_at = call_log.get("updated_at")
                success = call_log.get("success")
                finished[call_log_id] = (
                    call_log_id,
                    state.value,
                    success if isinstance(success, bool) else None,
                    updated_at if isinstance(updated_at, str) else "",
                )
        ordered = sorted(finished.values(), key=lambda f: (_parse_time(f[3]) or datetime.min.replace(tzinfo=UTC), f[0]))
        return ordered, requests

    # ------------------------------------------------------------------ the cursor in the state store

    async def _restore_cursor(self) -> None:
        store = asset_state_store_of(self)
        if store is None:
            self.log.info(
                "No asset state store (Airflow < 3.3 or outside a triggerer): announcing every finished call "
                "log of the last %.0fs once, then what finishes",
                self.lookback,
            )
            return
        try:
            stored = await store.aget(CURSOR_KEY)
        except Exception as err:  # several watched assets, or the store failed: in memory, at least once
            self.log.warning("Cursor not read from the asset state store (%s): starting from the window", err)
            return
        cursor = Cursor.from_json(stored)
        if cursor is None:
            self.log.info("No cursor in the asset state store yet: starting from the look-back window")
            return
        self.cursor = cursor
        self.log.info("Cursor restored: watermark %s, %d recent call log(s)", cursor.watermark, len(cursor.seen))

    async def _commit_when_settled(self, due: asyncio.Event) -> None:
        """Write each cursor to the state store as soon as its events are :data:`COMMIT_DELAY` old (a task)."""
        while True:
            if not self._pending_commits:
                due.clear()
                await due.wait()
                continue
            wait = self._pending_commits[0][0] - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._commit_settled()

    async def _commit_settled(self) -> None:
        """Write the newest cursor whose events are :data:`COMMIT_DELAY` old to the state store (3.3+)."""
        now = time.monotonic()
        ready = [snapshot for at, snapshot in self._pending_commits if at <= now]
        if not ready:
            return
        self._pending_commits = [(at, snapshot) for at, snapshot in self._pending_commits if at > now]
        store = asset_state_store_of(self)
        if store is None:
            return
        try:
            await store.aset(CURSOR_KEY, ready[-1])
        except Exception as err:  # a restart then repeats more; nothing is lost
            self.log.warning("Cursor not written to the asset state store: %s", err)


def _payload(finished: list[Finished]) -> dict[str, Any]:
    return {
        "call_log_ids": [f[0] for f in finished],
        "call_logs": [{"id": f[0], "state": f[1], "success": f[2], "updated_at": f[3]} for f in finished],
    }


def call_log_ids_from_events(events: Any) -> list[int]:
    """The call log ids named by asset events of this trigger (``triggering_asset_events``), sorted, once each.

    :param events: ``triggering_asset_events`` (a mapping of asset to events) or a list of events; each
        event's ``extra["payload"]["call_log_ids"]`` is read, other events are skipped.
    """
    if isinstance(events, Mapping):
        events = [event for group in events.values() for event in group]
    ids: set[int] = set()
    for event in events or ():
        extra = getattr(event, "extra", None) if not isinstance(event, Mapping) else event.get("extra")
        payload = (extra or {}).get("payload") if isinstance(extra, Mapping) else None
        if isinstance(payload, Mapping):
            ids.update(int(i) for i in payload.get("call_log_ids") or () if not isinstance(i, bool))
    return sorted(ids)


__all__ = ["CekuraCallLogsEvaluatedTrigger", "Cursor", "call_log_ids_from_events"]
