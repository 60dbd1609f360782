"""CekuraCallLogTrigger: waits in the triggerer until call logs leave "evaluating"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cekura.evaluation import EVENT_ERROR, EVENT_TIMEOUT, EvaluationSummary
from airflow_provider_cekura.exceptions import CekuraAPIError
from airflow_provider_cekura.waiting import event_from_summary


class CekuraCallLogTrigger(BaseTrigger):
    """Poll Cekura until every call log is evaluated (or failed), or the deadline passes.

    HTTP runs in a worker thread (``asyncio.to_thread``) through the same
    :class:`~airflow_provider_cekura.hooks.cekura.CekuraHook` and retry policy
    as the workers use, so the triggerer's event loop never blocks. It
    serializes only plain values (no key: the hook reads the connection
    itself) and always ends with exactly one event:
    ``success``, ``evaluation_failed``, ``timeout`` or ``error``.

    :param call_log_ids: Cekura call log ids to wait for.
    :param cekura_conn_id: connection id of type ``cekura``.
    :param poll_interval: seconds between polls.
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
        self.call_log_ids = [int(i) for i in call_log_ids]
        self.cekura_conn_id = cekura_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = None if deadline is None else float(deadline)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self._hook: Any = None

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

    def _check(self) -> EvaluationSummary:
        """Runs in a worker thread: builds the sync hook there (connection lookup included)."""
        from airflow_provider_cekura.hooks.cekura import CekuraHook
        from airflow_provider_cekura.waiting import check_evaluations

        if self._hook is None:
            self._hook = CekuraHook(cekura_conn_id=self.cekura_conn_id)
        return check_evaluations(self._hook, self.call_log_ids)

    def _event(self, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "call_log_ids": self.call_log_ids, **extra})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        errors = 0
        summary: EvaluationSummary | None = None
        try:
            while True:
                try:
                    summary = await asyncio.to_thread(self._check)
                    errors = 0
                except CekuraAPIError as err:
                    if not err.retryable:
                        yield self._event(EVENT_ERROR, str(err))
                        return
                    errors += 1
                    if errors >= self.max_consecutive_errors:
                        yield self._event(EVENT_ERROR, f"{errors} polls in a row failed, last: {err}")
                        return
                    self.log.warning("Poll failed (%d/%d): %s", errors, self.max_consecutive_errors, err)
                else:
                    if summary.done:
                        yield TriggerEvent({**event_from_summary(summary), "call_log_ids": self.call_log_ids})
                        return
                    self.log.info(
                        "%d of %d call log(s) still evaluating",
                        len(summary.pending) + len(summary.missing),
                        len(self.call_log_ids),
                    )
                wait = self.poll_interval
                if self.deadline is not None:
                    remaining = self.deadline - time.time()
                    if remaining <= 0:
                        pending = summary.pending_message() if summary else "no successful poll"
                        yield self._event(EVENT_TIMEOUT, f"Timed out waiting for evaluation: {pending}")
                        return
                    wait = min(wait, remaining)
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # never crash the triggerer: one error event instead
            yield self._event(EVENT_ERROR, f"{type(err).__name__}: {err}")
        finally:
            if self._hook is not None:
                self._hook.close()
