"""CekuraCallLogTrigger: waits in the triggerer until call logs leave "evaluating"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow_provider_cekura._coerce import parse_ids, to_seconds
from airflow_provider_cekura.evaluation import EVENT_ERROR, EVENT_TIMEOUT, EvaluationSummary
from airflow_provider_cekura.exceptions import CekuraAPIError
from airflow_provider_cekura.triggers._poller import shared_poller
from airflow_provider_cekura.version_compat import BaseTrigger, TriggerEvent
from airflow_provider_cekura.waiting import event_from_summary

MAX_ANSWER_WINDOW = 5.0
"""Seconds a poll may still answer once the deadline has passed (at most ``poll_interval``)."""


class CekuraCallLogTrigger(BaseTrigger):
    """Poll Cekura until every call log is evaluated (or failed), or the deadline passes.

    All triggers of one ``cekura_conn_id`` in a triggerer share one poll
    (:mod:`airflow_provider_cekura.triggers._poller`): one list request per 100
    pending ids across all of them, each wait polled at least every
    ``poll_interval`` seconds, HTTP on the poller's few threads through the same
    :class:`~airflow_provider_cekura.hooks.cekura.CekuraHook` and retry policy
    as the workers use, so the triggerer's event loop never blocks. Each trigger
    keeps its own deadline and error budget. It serializes only plain values
    (no key: the hook reads the connection itself) and always ends with exactly
    one event: ``success``, ``evaluation_failed``, ``timeout`` or ``error``. The
    deadline bounds the whole wait, a poll that hangs included: the trigger ends
    at most ``min(poll_interval, 5)`` seconds after it.

    :param call_log_ids: Cekura call log ids to wait for.
    :param cekura_conn_id: connection id of type ``cekura``.
    :param poll_interval: seconds between polls (> 0).
    :param deadline: absolute deadline, epoch seconds; ``None`` waits without limit.
    :param max_consecutive_errors: polls in a row that may fail transiently (after the hook's own
        retries) before the trigger gives up with an ``error`` event; a healthy poll resets the count.
    """

    def __init__(
        self,
        *,
        call_log_ids: list[int],
        cekura_conn_id: str = "cekura_default",
        poll_interval: float = 30.0,
        deadline: float | None = None,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        self.call_log_ids = parse_ids(call_log_ids)
        self.cekura_conn_id = cekura_conn_id
        self.poll_interval = to_seconds(poll_interval, "poll_interval")
        self.deadline = None if deadline is None else to_seconds(deadline, "deadline", allow_zero=True)
        self.max_consecutive_errors = max(int(max_consecutive_errors), 1)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_log_ids": list(self.call_log_ids),
                "cekura_conn_id": self.cekura_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    def _progress(self, pending: int, total: int) -> None:
        """A poll had news, but some call logs are still evaluating (the poller calls this, on the loop)."""
        self._wait_log.info("%d of %d call log(s) still evaluating", pending, total)

    @property
    def _wait_log(self) -> Any:
        """The class's logger, shared by every wait (same name and routing as ``self.log``).

        ``self.log`` would build a logger per trigger, which a thousand deferred waits keep alive; and
        ``self.__dict__`` would give each trigger a dict object (attributes live inline until it is read).
        A logger the triggerer set on this trigger (``_log``) is used.
        """
        return getattr(self, "_log", None) or type(self).logger()

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "call_log_ids": self.call_log_ids, **extra})

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def _timeout_event(self, summary: EvaluationSummary | None, why: str = "") -> TriggerEvent:
        if summary is None:  # no poll answered: every id is still pending as far as we know
            summary = EvaluationSummary(pending=list(self.call_log_ids))
        return self._event(EVENT_TIMEOUT, f"Timed out waiting for evaluation{why}: {summary.pending_message()}")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            event = await self._wait()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # never crash the triggerer: one error event instead
            event = self._event(EVENT_ERROR, f"{type(err).__name__}: {err}")
        yield event

    async def _wait(self) -> TriggerEvent:
        """Take each poll's outcome until done, failed for good, or past the deadline; returns the one event."""
        errors = 0
        summary: EvaluationSummary | None = None
        subscription = shared_poller(self.cekura_conn_id).subscribe(
            self.call_log_ids, self.poll_interval, self._progress
        )
        with subscription as polls:
            if self.deadline is not None:
                polls.poll_before(self.deadline)  # one last look at the deadline, whatever the interval
                # A poll may take the hook's whole retry budget (read timeouts included): never let it
                # outlive the deadline by more than a short answer window, so that a deadline already
                # past (a triggerer that picked the trigger up late) still gets one fair look.
                polls.expire_at(self.deadline + min(self.poll_interval, MAX_ANSWER_WINDOW))
            while True:
                try:
                    summary = await polls.next_outcome()
                    errors = 0
                except TimeoutError:
                    why = " (the last poll did not answer before the deadline)" if polls.in_flight else ""
                    return self._timeout_event(summary, why)
                except CekuraAPIError as err:
                    if not err.retryable:
                        return self._event(EVENT_ERROR, str(err))
                    errors += 1
                    if errors >= self.max_consecutive_errors:
                        return self._event(EVENT_ERROR, f"{errors} polls in a row failed, last: {err}")
                    self._wait_log.warning("Poll failed (%d/%d): %s", errors, self.max_consecutive_errors, err)
                else:
                    if summary.done:
                        return TriggerEvent({**event_from_summary(summary), "call_log_ids": self.call_log_ids})
                    self._progress(len(summary.pending) + len(summary.missing), len(self.call_log_ids))
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return self._timeout_event(summary)
