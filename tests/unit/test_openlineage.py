"""OpenLineage facets of the transfer: reported when the OpenLineage provider is installed, None otherwise."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from conftest import TEST_API_KEY


def _operator() -> Any:
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    return CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="warehouse", table="analytics.calls", metrics_table="analytics.metrics"
    )


@pytest.mark.slow
def test_facets_name_the_api_as_input_and_the_tables_as_outputs(emulator: Any) -> None:
    from airflow.providers.openlineage.extractors import OperatorLineage

    lineage = _operator().get_openlineage_facets_on_complete(task_instance=None)
    assert isinstance(lineage, OperatorLineage)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(emulator.base_url, "observability/v1/call-logs")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("cekura://warehouse", "analytics.calls"),
        ("cekura://warehouse", "analytics.metrics"),
    ]
    assert TEST_API_KEY not in repr(lineage)


def test_without_the_openlineage_provider_there_are_no_facets(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import raise ImportError, as when the provider is absent.
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)
    assert _operator().get_openlineage_facets_on_complete(task_instance=None) is None
