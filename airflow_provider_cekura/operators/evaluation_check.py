"""CekuraEvaluationCheckOperator: a quality gate that fails (or feeds a branch) on evaluation results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura._coerce import is_template, parse_ids
from airflow_provider_cekura.exceptions import CekuraEvaluationCheckError, CekuraValidationError
from airflow_provider_cekura.operators._wait import CekuraEvaluationWaitOperator

if TYPE_CHECKING:
    from airflow_provider_cekura.checks import Check, CheckReport
    from airflow_provider_cekura.version_compat import Context

EVALUATION_CHECKS_XCOM_KEY = "evaluation_checks"
"""XCom key of the gate's summary, pushed whether the checks held or not."""


def _union(ids: list[int], baseline: list[int] | None) -> list[int]:
    """Current and baseline ids, each once (an id in both is fetched once)."""
    return list(dict.fromkeys(ids + (baseline or [])))


class CekuraEvaluationCheckOperator(CekuraEvaluationWaitOperator):
    """Check evaluation results against thresholds: fail the task, or report for a branch, when they do not hold.

    Fetches the call logs with the hook's batched list requests (one per 100 ids; baseline ids in the
    same requests), classifies them with :mod:`airflow_provider_cekura.evaluation`, and measures each
    check on the evaluated ones (see :mod:`airflow_provider_cekura.checks` for the statistics)::

        CekuraEvaluationCheckOperator(
            task_id="quality_gate",
            call_log_ids=wait.output,
            checks={
                "success_rate": {"geq_to": 0.9},
                "failed_evaluations": {"leq_to": 0},
                "metrics": {
                    "Customer Satisfaction": {"mean": {"geq_to": 3.5}, "min": {"geq_to": 2}},
                    "Call Outcome": {"share:escalated": {"leq_to": 0.1}},
                },
            },
        )

    Comparison keys are common.sql's column-check keys: ``equal_to``, ``greater_than``, ``geq_to``,
    ``less_than``, ``leq_to``, with an optional ``tolerance`` (a fraction that widens each bound).
    With baseline call logs, ``max_drop`` bounds how far a value may fall below the baseline's.

    When a check does not hold the task fails with
    :class:`~airflow_provider_cekura.exceptions.CekuraEvaluationCheckError`, whose message names every
    such check with its measured value and threshold (``success_rate = 0.50, expected >= 0.9``).
    Either way the full summary (per check: value, threshold, held) is pushed to XCom under
    ``evaluation_checks``, a table of every check is logged, and when the checks hold the summary is
    also the return value. The checks dict, the ids and the baseline ids are validated before any request.

    :param call_log_ids: the call logs to check: a list, a comma string, JSON text, an upstream
        task's output, or the result dict of
        :class:`~airflow_provider_cekura.sensors.call_log.CekuraCallLogSensor` (templated). An empty list is an
        error.
    :param checks: the checks dict (templated: thresholds may be templates, e.g. ``"{{ params.min_rate }}"``;
        JSON text is accepted).
    :param baseline_call_log_ids: call logs to compare against (e.g. the previous evaluation run);
        each check then also reports the baseline's value, and ``max_drop`` is enforced (templated).
    :param require_evaluated: True (default): call logs still pending (or not listed yet) fail the gate,
        named in the message as ``pending_call_logs``. False: they are left out of every statistic and
        only reported in the summary's ``pending``.
    :param fail_on_check_failure: False: never fail on checks; a downstream branch reads ``held``
        from the summary.

    The waiting arguments belong to :class:`~airflow_provider_cekura.operators._wait.CekuraEvaluationWaitOperator`
    (the same for every Cekura operator; see "Operators: shared behaviour" in ``docs/operators.md``):
    ``cekura_conn_id`` (templated), ``wait_for_evaluation``, ``deferrable`` (default
    ``[operators] default_deferrable``), ``poll_interval``, ``timeout``.
    With ``wait_for_evaluation`` the gate first waits until no call log (current or baseline) is pending;
    a failed evaluation is counted by the checks, never raised (no ``fail_on_evaluation_failure``).
    """

    template_fields: Sequence[str] = ("call_log_ids", "baseline_call_log_ids", "checks", "cekura_conn_id")
    template_fields_renderers = {"checks": "json"}
    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        call_log_ids: Any,
        checks: Mapping[str, Any] | str,
        baseline_call_log_ids: Any = None,
        require_evaluated: bool = True,
        fail_on_check_failure: bool = True,
        **kwargs: Any,
    ) -> None:
        # failed evaluations are counted by the checks, not raised
        super().__init__(fail_on_evaluation_failure=False, **kwargs)
        self.call_log_ids = call_log_ids
        self.checks = checks
        self.baseline_call_log_ids = baseline_call_log_ids
        self.require_evaluated = require_evaluated
        self.fail_on_check_failure = fail_on_check_failure
        if isinstance(checks, Mapping) and not is_template(checks):
            # Refuse a bad checks dict when the DAG file is parsed, not only when the task runs.
            from airflow_provider_cekura.checks import parse_checks

            parse_checks(checks, baseline=baseline_call_log_ids is not None)

    # ------------------------------------------------------------------ inputs

    def _inputs(self) -> tuple[list[int], list[int] | None, list[Check]]:
        """Ids, baseline ids and checks from the rendered fields; every error before any request."""
        from airflow_provider_cekura.checks import parse_checks

        ids = parse_ids(self.call_log_ids)
        if not ids:
            raise CekuraValidationError("call_log_ids", "is empty: there is nothing to check")
        baseline: list[int] | None = None
        if self.baseline_call_log_ids is not None:
            baseline = parse_ids(self.baseline_call_log_ids, "baseline_call_log_ids")
            if not baseline:
                raise CekuraValidationError("baseline_call_log_ids", "is empty: give baseline ids or None")
        return ids, baseline, parse_checks(self.checks, baseline=baseline is not None)

    # ------------------------------------------------------------------ running

    def execute(self, context: Context) -> dict[str, Any]:
        self._start_try()
        ids, baseline, checks = self._inputs()
        every = _union(ids, baseline)
        self._push_ids(context, every)
        if self.wait_for_evaluation:
            self.wait_or_defer(context, every, None)  # defers (resuming in execute_complete) or returns when done
        return self._gate(context, ids, baseline, checks)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, call_log_ids: Any = None) -> Any:
        """Resume after the wait: validate the event, then fetch the call logs and run the checks."""
        from airflow_provider_cekura.waiting import result_from_event

        result_from_event(event, fail_on_evaluation_failure=False)
        return self._gate(context, *self._inputs())

    def _gate(
        self, context: Context, ids: list[int], baseline: list[int] | None, checks: list[Check]
    ) -> dict[str, Any]:
        from airflow_provider_cekura.checks import run_checks
        from airflow_provider_cekura.evaluation import summarize

        self.log.info(
            "Checking %d call log(s)%s against %d check(s)",
            len(ids),
            f" and {len(baseline)} baseline call log(s)" if baseline else "",
            len(checks),
        )
        call_logs = self.hook.get_call_logs(_union(ids, baseline))  # one list request per 100 ids
        report = run_checks(
            checks,
            summarize(ids, call_logs),
            baseline=summarize(baseline, call_logs) if baseline else None,
            require_evaluated=self.require_evaluated,
        )
        return self._report(context, report)

    def _report(self, context: Context, report: CheckReport) -> dict[str, Any]:
        summary = report.to_dict()
        context["ti"].xcom_push(key=EVALUATION_CHECKS_XCOM_KEY, value=summary)
        self.log.info(
            "Evaluation checks on %d call log(s) (%d evaluated, %d failed, %d pending):\n%s\n",
            report.call_logs,
            report.evaluated,
            report.failed,
            len(report.pending),
            report.table(),
        )
        if report.held:
            self.log.info("All %d evaluation check(s) held", len(report.results))
            return summary
        message = report.failure_message()
        if self.fail_on_check_failure:
            raise CekuraEvaluationCheckError(message, summary)
        self.log.warning("%s", message)
        return summary
