"""The one "wait for evaluation, or defer" code path shared by the Cekura operators.

:class:`CekuraEvaluationWaitOperator` is the base of
:class:`~airflow_provider_cekura.operators.observe.CekuraObserveOperator` and
:class:`~airflow_provider_cekura.operators.rerun_evaluation.CekuraRerunEvaluationOperator`.
It owns the common arguments (connection, ``wait_for_evaluation``,
``deferrable``, ``poll_interval``, ``timeout``, ``fail_on_evaluation_failure``),
the hook, the XComs pushed before waiting (dashboard URL and ids), the
blocking or deferred wait, and ``execute_complete``. The policy itself (what
"pending" means, the poll loop, the trigger event) lives in
:mod:`airflow_provider_cekura.waiting`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura._coerce import parse_ids, to_seconds
from airflow_provider_cekura.exceptions import (
    CekuraConfigurationError,
    CekuraValidationError,
    CekuraWaitTimeoutError,
)
from airflow_provider_cekura.links import CALL_LOG_URL_ATTRIBUTE, CALL_LOG_URL_XCOM_KEY, CekuraCallLogLink
from airflow_provider_cekura.version_compat import BaseOperator, conf

if TYPE_CHECKING:
    from airflow_provider_cekura.evaluation import EvaluationSummary
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.version_compat import Context

CALL_LOG_IDS_XCOM_KEY = "call_log_ids"
"""XCom key of the list of call log ids a task worked on (pushed before waiting, and before a partial failure)."""


def _seconds_argument(value: float | timedelta, name: str) -> float:
    """An operator argument in seconds (:func:`~airflow_provider_cekura._coerce.to_seconds`), refused at parse time."""
    try:
        return to_seconds(value, name)
    except CekuraValidationError as err:
        raise CekuraConfigurationError(f"{name} {err.reason}") from None


class CekuraEvaluationWaitOperator(BaseOperator):
    """Base of the Cekura operators that can wait for the evaluation of the call logs they touch.

    Not meant to be used directly. It owns the waiting arguments every subclass shares; a subclass takes
    its own arguments, documents them, and passes the rest on as ``**kwargs``.

    :param cekura_conn_id: connection id of type ``cekura`` (templated).
    :param wait_for_evaluation: wait until Cekura has evaluated the call logs before succeeding.
    :param deferrable: wait in the triggerer instead of a worker slot (needs a running
        triggerer). Defaults to ``[operators] default_deferrable``.
    :param poll_interval: seconds between evaluation checks.
    :param timeout: longest wait for evaluation, seconds or ``timedelta``; then the task fails
        naming the call logs still pending.
    :param fail_on_evaluation_failure: fail when an evaluation ends failed; when False such call
        logs count as done.
    """

    operator_extra_links = (CekuraCallLogLink(),)

    def __init__(
        self,
        *,
        cekura_conn_id: str = "cekura_default",
        wait_for_evaluation: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        timeout: float | timedelta = 3600,
        fail_on_evaluation_failure: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cekura_conn_id = cekura_conn_id
        self.wait_for_evaluation = wait_for_evaluation
        self.deferrable = deferrable
        self.poll_interval = _seconds_argument(poll_interval, "poll_interval")
        self.timeout = _seconds_argument(timeout, "timeout")
        self.fail_on_evaluation_failure = fail_on_evaluation_failure

    # ------------------------------------------------------------------ hook

    def _hook_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the hook (e.g. ``pool_size``)."""
        return {}

    @cached_property
    def hook(self) -> CekuraHook:
        from airflow_provider_cekura.hooks.cekura import CekuraHook

        return CekuraHook(cekura_conn_id=self.cekura_conn_id, **self._hook_kwargs())

    # ------------------------------------------------------------------ results

    def _result_from_ids(self, call_log_ids: list[int]) -> Any:
        """The task's return value for these ids (the list; the observe operator returns an int for one call)."""
        return list(call_log_ids)

    def _push_ids(self, context: Context, call_log_ids: Sequence[int | None]) -> None:
        """Push the ids and the dashboard URL of the first one, before anything can still fail."""
        ti = context["ti"]
        ti.xcom_push(key=CALL_LOG_IDS_XCOM_KEY, value=list(call_log_ids))
        first = next((i for i in call_log_ids if i is not None), None)
        if first is not None:
            url = self.hook.call_log_url(first)
            ti.xcom_push(key=CALL_LOG_URL_XCOM_KEY, value=url)
            setattr(self, CALL_LOG_URL_ATTRIBUTE, url)

    def _start_try(self) -> None:
        """Called first in ``execute``: no dashboard URL pushed yet in this try (read by the extra link)."""
        setattr(self, CALL_LOG_URL_ATTRIBUTE, None)

    # ------------------------------------------------------------------ waiting

    def _finish(self, summary: EvaluationSummary) -> None:
        from airflow_provider_cekura.waiting import finish

        self.log.info("Evaluation finished: %d evaluated, %d failed", len(summary.evaluated), len(summary.failed))
        finish(summary, fail_on_evaluation_failure=self.fail_on_evaluation_failure)

    def wait_or_defer(self, context: Context, call_log_ids: list[int], result: Any) -> Any:
        """Return ``result`` now, after a blocking wait, or (deferrable) after the trigger's event.

        Deferrable: checks once and returns at once when nothing is pending;
        otherwise defers to :class:`~airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger`
        with an absolute deadline and the matching defer timeout. Nothing is
        sent to Cekura after this point, so resuming never repeats a request.
        """
        if not self.wait_for_evaluation or not call_log_ids:
            return result
        from airflow_provider_cekura import waiting

        if not self.deferrable:
            summary = waiting.poll_until_evaluated(
                self.hook, call_log_ids, poll_interval=self.poll_interval, timeout=self.timeout, log=self.log
            )
            self._finish(summary)
            return result
        summary = waiting.check_evaluations(self.hook, call_log_ids)
        if summary.done:
            self._finish(summary)
            return result
        from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

        self.log.info("%s; deferring to the triggerer (timeout %.0fs)", summary.pending_message(), self.timeout)
        self.defer(
            trigger=CekuraCallLogTrigger(
                call_log_ids=list(call_log_ids),
                cekura_conn_id=self.cekura_conn_id,
                poll_interval=self.poll_interval,
                deadline=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
            kwargs={"call_log_ids": result},
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, call_log_ids: Any = None) -> Any:
        """Resume after the trigger: validate the event, fail or return the same value as without waiting.

        Never sends anything to Cekura again: the calls were sent before deferring.
        """
        from airflow_provider_cekura.waiting import result_from_event

        results = result_from_event(event, fail_on_evaluation_failure=self.fail_on_evaluation_failure)
        self.log.info("Evaluation finished for %d call log(s)", len(results))
        if call_log_ids is not None:
            return call_log_ids
        # ``dag.test()`` resumes with the event only; the trigger names its ids in every event.
        ids = event.get("call_log_ids") if isinstance(event, dict) else None
        return self._result_from_ids(parse_ids(ids or []))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Turn a defer timeout raised by the scheduler into a wait timeout that names the pending ids."""
        from airflow_provider_cekura.version_compat import TaskDeferralTimeout, is_deferral_timeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout as error:
            if not is_deferral_timeout(error):
                raise
            pending = "ids unknown"
            try:
                ids = context["ti"].xcom_pull(key=CALL_LOG_IDS_XCOM_KEY)
                ids = parse_ids([i for i in ids or [] if i is not None])
                if ids:
                    from airflow_provider_cekura.waiting import check_evaluations

                    pending = check_evaluations(self.hook, ids).pending_message()
            except Exception as err:  # best effort: the timeout is the error to report
                self.log.warning("Could not check which call logs are still pending: %s", err)
            raise CekuraWaitTimeoutError(
                f"Timed out after {self.timeout:.0f}s waiting for evaluation: {pending}"
            ) from None
