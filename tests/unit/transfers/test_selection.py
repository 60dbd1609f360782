"""The transfers' shared base (``transfers/_selection.py``): it owns the selection arguments of both transfers.

The subclasses take only their own arguments and pass the rest on; Airflow's argument handling (``default_args``,
mapping, unknown arguments) must treat the base's arguments as the operators' own. The base also walks the
selection: an export by ids is as concurrent as an export of a window.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest

from airflow_provider_cekura.exceptions import CekuraError
from airflow_provider_cekura.transfers._selection import SELECTION_TEMPLATE_FIELDS, CallLogExportOperator
from airflow_provider_cekura.transfers.call_logs_to_object_storage import CekuraCallLogsToObjectStorageOperator
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
from support.request_log import most_in_flight
from support.transfer import CALL_LOGS, START, api_call_logs, check_exact, export, sqlite_warehouse

OWN_ARGUMENTS: dict[type, dict[str, Any]] = {
    CekuraCallLogsToSqlOperator: {"sql_conn_id": "warehouse", "table": "call_logs"},
    CekuraCallLogsToObjectStorageOperator: {"path": "file:///tmp/cekura-selection-test/"},
}
TRANSFERS = list(OWN_ARGUMENTS)


@pytest.mark.parametrize("operator", TRANSFERS, ids=lambda c: c.__name__)
def test_default_args_reach_the_selection_arguments(operator: type) -> None:
    from airflow.providers.common.compat.sdk import DAG

    default_args = {"cekura_conn_id": "cekura_eu", "max_concurrency": 3, "page_size": 20, "agent_id": 7}
    with DAG("selection", schedule=None, start_date=pendulum.datetime(2026, 1, 1), default_args=default_args):
        op = operator(task_id="export", **OWN_ARGUMENTS[operator])
        given = operator(task_id="given", cekura_conn_id="cekura_us", **OWN_ARGUMENTS[operator])
    assert (op.cekura_conn_id, op.max_concurrency, op.page_size, op.agent_id) == ("cekura_eu", 3, 20, 7)
    assert given.cekura_conn_id == "cekura_us"  # an explicit argument wins over default_args


@pytest.mark.parametrize("operator", TRANSFERS, ids=lambda c: c.__name__)
def test_the_base_checks_its_arguments_for_every_transfer(operator: type) -> None:
    with pytest.raises(CekuraError, match="max_concurrency"):
        operator(task_id="export", max_concurrency=0, **OWN_ARGUMENTS[operator])
    with pytest.raises(CekuraError, match="page_size"):
        operator(task_id="export", page_size=True, **OWN_ARGUMENTS[operator])
    with pytest.raises(CekuraError, match="columns"):
        operator(task_id="export", columns=["id", "no_such_column"], **OWN_ARGUMENTS[operator])
    with pytest.raises(TypeError, match="timestamp_form"):  # a misspelt selection argument is not swallowed
        operator(task_id="export", timestamp_form="2026-01-01", **OWN_ARGUMENTS[operator])


@pytest.mark.filterwarnings("ignore:Task 'typo' was never mapped")
@pytest.mark.parametrize("operator", TRANSFERS, ids=lambda c: c.__name__)
def test_selection_arguments_can_be_mapped_and_are_templated(operator: type) -> None:
    from airflow.providers.common.compat.sdk import DAG

    with DAG("mapped", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        mapped = operator.partial(task_id="export", **OWN_ARGUMENTS[operator]).expand(call_log_ids=[[1], [2, 3]])
        with pytest.raises(TypeError, match="call_log_idz"):
            operator.partial(task_id="typo", **OWN_ARGUMENTS[operator]).expand(call_log_idz=[[1]])
    assert mapped is not None
    assert tuple(operator.template_fields[: len(SELECTION_TEMPLATE_FIELDS)]) == SELECTION_TEMPLATE_FIELDS
    assert issubclass(operator, CallLogExportOperator)


@pytest.mark.slow
def test_call_log_ids_are_fetched_max_concurrency_requests_at_once(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export by ids asks 100 ids per list request, ``max_concurrency`` requests open at once (as a window's
    pages are), and writes exactly those call logs; ``max_concurrency=1`` keeps one request open."""
    warehouse = sqlite_warehouse(tmp_path / "warehouse.db", monkeypatch)
    created = emulator.seed(520, start=START, end=START + timedelta(days=60))
    chosen = created[::-1][:430]
    emulator.latency = 0.15
    most = most_in_flight(emulator, lambda: export(warehouse, call_log_ids=chosen, max_concurrency=4), CALL_LOGS)
    assert warehouse.ids() == set(chosen) and warehouse.count() == 430
    check_exact(warehouse, {cid: c for cid, c in api_call_logs(emulator).items() if cid in set(chosen)})
    asked = [len(r.query["call_ids"].split(",")) for r in emulator.requests_snapshot() if r.path == CALL_LOGS]
    assert sorted(asked, reverse=True) == [100, 100, 100, 100, 30]  # one request per 100 ids (sent in any order)
    assert 1 < most <= 4  # requests overlapped, never more than max_concurrency (the connection's limiter
    # starts with fewer in flight and opens up as answers come: it may keep the first round below 4)

    emulator.reset_log()
    one = most_in_flight(emulator, lambda: export(warehouse, call_log_ids=chosen, max_concurrency=1), CALL_LOGS)
    assert one == 1 and warehouse.count() == 430


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"filters_v2": {"value": 1}}, "filters_v2"),
        ({"assistant_id": 3}, "assistant_id"),
        ({"agent_id": "0"}, "agent_id"),
    ],
)
def test_bad_filters_fail_before_the_table_is_created(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: dict[str, Any], field: str
) -> None:
    warehouse = sqlite_warehouse(tmp_path / "warehouse.db", monkeypatch)
    with pytest.raises(CekuraError, match=field):
        export(warehouse, timestamp_from="2026-03-01T00:00:00Z", timestamp_to="2026-03-02T00:00:00Z", **filters)
    assert warehouse.query("SELECT name FROM sqlite_master WHERE type = 'table'") == []
    assert emulator.count_requests() == 0
