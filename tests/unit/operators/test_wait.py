"""The operators' shared base (``operators/_wait.py``): it owns the waiting arguments of every Cekura operator.

The subclasses take only their own arguments and pass the rest on; Airflow's argument handling (``default_args``,
mapping, unknown arguments) must treat the base's arguments as the operators' own.
"""

from __future__ import annotations

from typing import Any

import pendulum
import pytest

from airflow_provider_cekura.exceptions import CekuraConfigurationError
from airflow_provider_cekura.operators._wait import CekuraEvaluationWaitOperator
from airflow_provider_cekura.operators.evaluation_check import CekuraEvaluationCheckOperator
from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
from airflow_provider_cekura.version_compat import conf

OWN_ARGUMENTS: dict[type, dict[str, Any]] = {
    CekuraObserveOperator: {"call_id": "c-1", "agent": 1},
    CekuraRerunEvaluationOperator: {"call_log_ids": [1], "agent_id": 1},
    CekuraEvaluationCheckOperator: {"call_log_ids": [1], "checks": {"success_rate": {"geq_to": 0.9}}},
}
OPERATORS = list(OWN_ARGUMENTS)


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda c: c.__name__)
def test_default_args_reach_the_waiting_arguments(operator: type) -> None:
    from airflow.providers.common.compat.sdk import DAG

    default_args = {"cekura_conn_id": "cekura_eu", "poll_interval": 5, "timeout": 60, "wait_for_evaluation": True}
    with DAG("waiting", schedule=None, start_date=pendulum.datetime(2026, 1, 1), default_args=default_args):
        op = operator(task_id="op", **OWN_ARGUMENTS[operator])
        given = operator(task_id="given", cekura_conn_id="cekura_us", **OWN_ARGUMENTS[operator])
    assert (op.cekura_conn_id, op.poll_interval, op.timeout, op.wait_for_evaluation) == ("cekura_eu", 5.0, 60.0, True)
    assert given.cekura_conn_id == "cekura_us"  # an explicit argument wins over default_args
    assert op.deferrable is conf.getboolean("operators", "default_deferrable", fallback=False)
    assert isinstance(op, CekuraEvaluationWaitOperator)


@pytest.mark.parametrize("operator", OPERATORS, ids=lambda c: c.__name__)
def test_the_base_checks_the_waiting_arguments_for_every_operator(operator: type) -> None:
    with pytest.raises(CekuraConfigurationError, match="poll_interval"):
        operator(task_id="op", poll_interval=-1, **OWN_ARGUMENTS[operator])
    with pytest.raises(CekuraConfigurationError, match="timeout"):
        operator(task_id="op", timeout="soon", **OWN_ARGUMENTS[operator])
    with pytest.raises(TypeError, match="pol_interval"):  # a misspelt waiting argument is not swallowed
        operator(task_id="op", pol_interval=5, **OWN_ARGUMENTS[operator])


def test_the_gate_never_raises_on_a_failed_evaluation() -> None:
    gate = CekuraEvaluationCheckOperator(task_id="gate", **OWN_ARGUMENTS[CekuraEvaluationCheckOperator])
    assert gate.fail_on_evaluation_failure is False  # failed evaluations are counted by its checks
    with pytest.raises(TypeError, match="fail_on_evaluation_failure"):
        CekuraEvaluationCheckOperator(
            task_id="gate", fail_on_evaluation_failure=True, **OWN_ARGUMENTS[CekuraEvaluationCheckOperator]
        )
