"""CekuraCallLogSensor: wait until call logs leave "evaluating" (poke, reschedule or deferrable)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura._coerce import parse_ids
from airflow_provider_cekura.exceptions import CekuraWaitTimeoutError
from airflow_provider_cekura.version_compat import AirflowSensorTimeout, BaseSensorOperator, PokeReturnValue, conf

if TYPE_CHECKING:
    from airflow_provider_cekura.evaluation import EvaluationSummary
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.version_compat import Context


class CekuraCallLogSensor(BaseSensorOperator):
    """Wait until Cekura has finished evaluating one or many call logs.

    Each poll is one list request per page of ids (``call_ids=``): waiting for
    500 call logs costs ``ceil(500 / page_size)`` requests per poll, not 500.
    A call log is pending while its status is ``evaluating`` or while it has
    neither a ``success`` value nor any metric (see
    :mod:`airflow_provider_cekura.evaluation`).

    Returns (XCom) ``{"<id>": {"status", "success", "state", "metrics"}}`` for every id.

    :param call_log_ids: an id, a list of ids, or a template such as
        ``"{{ ti.xcom_pull(task_ids='observe') }}"`` (templated).
    :param cekura_conn_id: connection id of type ``cekura`` (templated).
    :param fail_on_evaluation_failure: fail the task when an evaluation ends failed (no metrics,
        an ``error_message``), naming the ids and their errors; when False they count as done.
    :param deferrable: wait in the triggerer instead of a worker slot (needs a running triggerer).
        Defaults to ``[operators] default_deferrable``.
    :param max_consecutive_errors: deferrable mode: polls in a row that may fail transiently.
    :param poke_interval: seconds between polls (default 30).
    :param timeout: seconds before the sensor fails, naming the ids still pending.
    :param mode: ``"poke"`` or ``"reschedule"`` (ignored when deferrable).
    """

    template_fields: Sequence[str] = ("call_log_ids", "cekura_conn_id")
    ui_color = "#d9f2ef"

    def __init__(
        self,
        *,
        call_log_ids: int | str | Sequence[int] | Sequence[str],
        cekura_conn_id: str = "cekura_default",
        fail_on_evaluation_failure: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_consecutive_errors: int = 5,
        poke_interval: float = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.call_log_ids = call_log_ids
        self.cekura_conn_id = cekura_conn_id
        self.fail_on_evaluation_failure = fail_on_evaluation_failure
        self.deferrable = deferrable
        self.max_consecutive_errors = max_consecutive_errors
        self._last_summary: EvaluationSummary | None = None

    @cached_property
    def hook(self) -> CekuraHook:
        from airflow_provider_cekura.hooks.cekura import CekuraHook

        return CekuraHook(cekura_conn_id=self.cekura_conn_id)

    @property
    def ids(self) -> list[int]:
        return parse_ids(self.call_log_ids)

    def _check(self) -> EvaluationSummary:
        from airflow_provider_cekura.waiting import check_evaluations

        summary = check_evaluations(self.hook, self.ids)
        self._last_summary = summary
        return summary

    def _finish(self, summary: EvaluationSummary) -> dict[str, Any]:
        from airflow_provider_cekura.waiting import finish

        self.log.info("Evaluation finished: %d evaluated, %d failed", len(summary.evaluated), len(summary.failed))
        return finish(summary, fail_on_evaluation_failure=self.fail_on_evaluation_failure)

    def poke(self, context: Context) -> PokeReturnValue | bool:
        summary = self._check()
        if not summary.done:
            self.log.info("%s", summary.pending_message())
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(summary))

    def execute(self, context: Context) -> Any:
        if not self.ids:
            self.log.info("No call log ids to wait for")
            return {}
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as err:
                pending = self._last_summary.pending_message() if self._last_summary else ""
                raise AirflowSensorTimeout(f"{err} {pending}".strip()) from None
        summary = self._check()
        if summary.done:
            return self._finish(summary)
        self.log.info("%s; deferring to the triggerer", summary.pending_message())
        self.defer(
            trigger=self._trigger(),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def _trigger(self) -> Any:
        from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

        return CekuraCallLogTrigger(
            call_log_ids=self.ids,
            cekura_conn_id=self.cekura_conn_id,
            poll_interval=self.poke_interval,
            deadline=time.time() + self.timeout,
            max_consecutive_errors=self.max_consecutive_errors,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: validate the event, then succeed, fail or time out."""
        from airflow_provider_cekura.waiting import result_from_event

        try:
            results = result_from_event(event, fail_on_evaluation_failure=self.fail_on_evaluation_failure)
        except CekuraWaitTimeoutError as err:
            raise AirflowSensorTimeout(str(err)) from None
        self.log.info("Evaluation finished for %d call log(s)", len(results))
        return results
