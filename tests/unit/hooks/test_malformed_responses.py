"""Malformed but 200 answers met by the operators, the sensor and the transfer (tests/unit/hooks/test_cekura.py covers the hook:
HTML, truncated JSON, looping or foreign ``next``, endless empty pages). Here: metrics as unparseable JSON text,
call logs with missing fields, and fields of the wrong type, through the list endpoint end to end.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

ODD_CALL_LOGS: list[dict[str, Any]] = [
    # metrics as JSON text that does not parse, an outcome given: evaluated, no metric rows
    {"id": 1, "call_id": "a", "status": "success", "success": True, "metrics": "[{not json",
     "timestamp": "2026-03-01T00:00:00Z"},
    # only the id: every other field missing
    {"id": 2},
    # wrong types everywhere (id as text, agent not a number, success as text, metadata as non-JSON text)
    {"id": "3", "call_id": 33, "agent": "abc", "success": "yes", "status": 7, "metadata": "not json",
     "metrics": 12, "duration": 42, "timestamp": "2026-03-01T00:10:00Z", "critical_categories": "{bad"},
    # metrics as valid JSON text with entries of the wrong shape
    {"id": 4, "call_id": "d", "status": "success", "success": False,
     "metrics": json.dumps([{"id": "101", "name": "CSAT", "score": "4.5", "value": {"x": 1}}, "junk", {"name": "no id"}]),
     "timestamp": "2026-03-01T00:20:00Z"},
]  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        body = json.dumps({"count": len(ODD_CALL_LOGS), "next": None, "previous": None, "results": ODD_CALL_LOGS})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def odd_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    conn = {"conn_type": "cekura", "host": url, "password": TEST_API_KEY, "extra": {"max_attempts": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_ODD", json.dumps(conn))
    try:
        yield url
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_sensor_classifies_odd_call_logs_without_crashing(odd_server: str) -> None:
    sensor = CekuraCallLogSensor(task_id="s", call_log_ids=[1, 3, 4], cekura_conn_id="cekura_odd")
    result = sensor.poke({})  # type: ignore[arg-type]
    assert result  # all three have an outcome (success True, "yes", False): none pending
    values = result.xcom_value  # type: ignore[union-attr]
    assert values["1"]["metrics"] == [] and values["1"]["state"] == "evaluated"
    assert [m.get("id") for m in values["4"]["metrics"]] == ["101", None]  # the non-object entry is dropped
    # a call log with only its id has no outcome: still pending, the sensor keeps waiting
    assert not CekuraCallLogSensor(task_id="s2", call_log_ids=[2], cekura_conn_id="cekura_odd").poke({})  # type: ignore[arg-type]


def test_export_writes_odd_call_logs_with_nulls_for_what_does_not_convert(
    odd_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "odd.db"
    monkeypatch.setenv("AIRFLOW_CONN_ODD_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    op = CekuraCallLogsToSqlOperator(
        task_id="e",
        cekura_conn_id="cekura_odd",
        sql_conn_id="odd_warehouse",
        table="call_logs",
        metrics_table="call_metrics",
        call_log_ids=[1, 2, 3, 4],
    )
    assert op.execute({}) == 4  # type: ignore[arg-type]
    with sqlite3.connect(db) as conn:
        rows = {
            r[0]: r[1:] for r in conn.execute("SELECT id, call_id, agent, success, metrics, metadata FROM call_logs")
        }
        metrics = conn.execute("SELECT call_log_id, metric_id, score FROM call_metrics").fetchall()
    assert set(rows) == {1, 2, 3, 4}
    assert rows[2] == (None, None, None, None, None)
    call_id, agent, success, _, metadata = rows[3]
    assert (call_id, agent, success) == ("33", None, 1)
    assert json.loads(metadata) == "not json"  # kept, as a JSON string
    assert metrics == [(4, 101, 4.5)]  # only the metric with an integer id


def test_an_answer_over_max_response_bytes_fails_the_sensor_and_the_export_clearly(
    odd_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_cekura.exceptions import CekuraResponseError

    conn = {"conn_type": "cekura", "host": odd_server, "password": TEST_API_KEY}
    conn["extra"] = {"max_attempts": 1, "max_response_bytes": 200}  # the odd page is ~1.2 kB
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_ODD", json.dumps(conn))
    sensor = CekuraCallLogSensor(task_id="s", call_log_ids=[1], cekura_conn_id="cekura_odd")
    with pytest.raises(CekuraResponseError, match=r"max_response_bytes=200 .*'cekura_odd'"):
        sensor.poke({})  # type: ignore[arg-type]
    db = tmp_path / "big.db"
    monkeypatch.setenv("AIRFLOW_CONN_BIG_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    op = CekuraCallLogsToSqlOperator(
        task_id="e", cekura_conn_id="cekura_odd", sql_conn_id="big_warehouse", table="t", call_log_ids=[1, 2]
    )
    with pytest.raises(CekuraResponseError, match="max_response_bytes"):
        op.execute({})  # type: ignore[arg-type]
