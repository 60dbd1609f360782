"""CekuraRerunEvaluationOperator: re-evaluate existing call logs, optionally wait for the new results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura._coerce import agent_or_assistant, parse_ids
from airflow_provider_cekura.operators._wait import CekuraEvaluationWaitOperator

if TYPE_CHECKING:
    from airflow_provider_cekura.version_compat import Context


class CekuraRerunEvaluationOperator(CekuraEvaluationWaitOperator):
    """Re-run Cekura's evaluation of existing call logs (``POST .../call-logs/rerun_evaluation/``).

    Sends the ids in chunks of 100 (the API's limit), all for one agent. The ids
    and the agent are validated before any request. No ids (say an upstream
    query found nothing) is not an error: the task logs it and returns ``[]``
    without any request.

    Returns (XCom) the list of call log ids rerun, in input order without
    duplicates, with or without waiting. The ids (key ``call_log_ids``) and the
    dashboard URL of the first call log (the "Cekura call log" extra link) are
    pushed before waiting. With ``wait_for_evaluation`` the task waits until the
    new evaluations finish (polling, or in the triggerer when ``deferrable``);
    deferral never repeats the rerun request, which is sent before the task defers.

    :param call_log_ids: Cekura call log ids: an int, a list, a comma string or a JSON list,
        e.g. ``"{{ ti.xcom_pull(task_ids='observe') }}"`` or an upstream task's output (templated).
    :param agent_id: the Cekura agent the call logs belong to; exactly one of ``agent_id`` or
        ``assistant_id`` (templated).
    :param assistant_id: the voice platform's assistant id (templated).

    The waiting arguments belong to :class:`~airflow_provider_cekura.operators._wait.CekuraEvaluationWaitOperator`
    (the same for every Cekura operator; see "Operators: shared behaviour" in ``docs/operators.md``):
    ``cekura_conn_id`` (templated), ``wait_for_evaluation``, ``deferrable`` (default
    ``[operators] default_deferrable``), ``poll_interval``, ``timeout``, ``fail_on_evaluation_failure``.
    """

    template_fields: Sequence[str] = ("call_log_ids", "agent_id", "assistant_id", "cekura_conn_id")
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        call_log_ids: int | str | Sequence[int] | Sequence[str],
        agent_id: int | str | None = None,
        assistant_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        agent_or_assistant(agent_id, assistant_id, presence_only=True)  # the values are checked in execute
        self.call_log_ids = call_log_ids
        self.agent_id = agent_id
        self.assistant_id = assistant_id

    def _owner(self) -> dict[str, Any]:
        """``{"agent_id": int}`` or ``{"assistant_id": str}`` from the rendered values."""
        return agent_or_assistant(self.agent_id, self.assistant_id)

    def execute(self, context: Context) -> list[int]:
        self._start_try()
        ids = parse_ids(self.call_log_ids)
        owner = self._owner()
        if not ids:
            self.log.info("No call log ids to rerun; nothing sent")
            return []
        self.log.info("Rerunning the evaluation of %d call log(s) (%s)", len(ids), owner)
        self.hook.rerun_evaluation(ids, **owner)
        self.log.info("Evaluation rerun requested for %d call log(s)", len(ids))
        self._push_ids(context, list(ids))
        return self.wait_or_defer(context, ids, list(ids))
