"""The hook, the evaluation logic and the transfer read both forms a real server may send.

A string field without a value comes as ``""`` (the documented form) or ``null``; ``metrics``,
``transcript_object``, ``critical_categories`` and ``metadata`` come as JSON text or as JSON values; a
metric key that does not apply to its type as ``0``/``""`` or ``null``. Two emulators hold the same call
logs, one answering in the documented shapes and one in the ``"loose"`` ones: every reader must
come to the same result from both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cekura.evaluation import (
    EvaluationState,
    evaluation_state,
    normalize_call_log,
    normalize_metric,
    parse_metrics,
    summarize,
)
from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.testing import CekuraEmulator
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
from support.transfer import START, sqlite_warehouse
from tests.conftest import TEST_API_KEY

STYLES = ("documented", "loose")
SERVER_CLOCK = ("created_at", "updated_at")  # set by each server's own clock


def _seeded(style: str) -> CekuraEmulator:
    # evaluation_failure_rate: some evaluations fail (no metrics, an error message), the same ones on both
    emulator = CekuraEmulator(
        api_key=TEST_API_KEY, evaluation_delay=3600, evaluation_failure_rate=0.2, response_style=style
    )
    emulator.start()
    emulator.seed(12, start=START, end=START + timedelta(hours=6))
    emulator.seed(3, start=START, end=START + timedelta(hours=6), evaluated=False, call_id_prefix="pending")
    return emulator


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, CekuraEmulator]]:
    started = {style: _seeded(style) for style in STYLES}
    for style, emulator in started.items():
        conn = {"conn_type": "cekura", "host": emulator.base_url, "password": TEST_API_KEY}
        monkeypatch.setenv(f"AIRFLOW_CONN_CEKURA_{style.upper()}", json.dumps(conn))
    try:
        yield started
    finally:
        for emulator in started.values():
            emulator.stop()


def _without_clock(call_log: dict[str, Any]) -> dict[str, Any]:
    """The call log without the servers' clock fields; an absent key and ``None`` read alike."""
    return {k: v for k, v in call_log.items() if k not in SERVER_CLOCK and v is not None}


def test_the_two_styles_really_differ_on_the_wire(servers: dict[str, CekuraEmulator]) -> None:
    import requests

    wire = {}
    for style, emulator in servers.items():
        headers = {"X-CEKURA-API-KEY": TEST_API_KEY}
        listed = requests.get(f"{emulator.base_url}/observability/v1/call-logs/", headers=headers, timeout=5).json()
        first = next(c for c in listed["results"] if c["metrics"])
        detail = requests.get(
            f"{emulator.base_url}/observability/v1/call-logs/{first['id']}/", headers=headers, timeout=5
        )
        wire[style] = (first, detail.json())
    (doc_list, doc_detail), (loose_list, loose_detail) = wire["documented"], wire["loose"]
    assert doc_list["call_ended_reason"] == "" and loose_list["call_ended_reason"] is None
    assert isinstance(doc_list["transcript_object"], list) and isinstance(loose_list["transcript_object"], str)
    assert isinstance(doc_detail["metrics"], str) and isinstance(loose_detail["metrics"], list)
    assert isinstance(doc_detail["critical_categories"], str) and isinstance(loose_detail["critical_categories"], list)
    assert {type(m["score"]) for m in doc_list["metrics"]} == {float}
    assert None in {m["score"] for m in loose_list["metrics"]} and "" in {m["value"] for m in doc_list["metrics"]}


def test_hook_reads_both_forms_alike(servers: dict[str, CekuraEmulator]) -> None:
    read: dict[str, Any] = {}
    for style in STYLES:
        hook = CekuraHook(f"cekura_{style}")
        listed = list(hook.iter_call_logs(timestamp_from=START, timestamp_to=START + timedelta(days=1)))
        details = [hook.get_call_log(c["id"]) for c in listed]
        by_ids = hook.get_call_logs([c["id"] for c in listed])
        reran = hook.rerun_evaluation([listed[1]["id"]], agent_id=listed[1]["agent"])
        read[style] = [[_without_clock(c) for c in group] for group in (listed, details, by_ids, reran)]
        hook.close()
    assert read["documented"] == read["loose"]
    listed, details, _, reran = read["documented"]
    assert len(listed) == 15
    some = next(c for c in details if c["metrics"])
    assert isinstance(some["metrics"], list) and isinstance(some["transcript_object"], list)
    assert isinstance(some["metadata"], dict) and isinstance(some["critical_categories"], list)
    assert "call_ended_reason" not in some and "customer_number" not in some  # "" and null: no value
    assert reran[0]["status"] == "evaluating" and reran[0]["metrics"] == []


def test_evaluation_decides_alike_on_both_forms(servers: dict[str, CekuraEmulator]) -> None:
    import requests

    outcomes = {}
    for style, emulator in servers.items():
        headers = {"X-CEKURA-API-KEY": TEST_API_KEY}
        raw = requests.get(f"{emulator.base_url}/observability/v1/call-logs/?page_size=100", headers=headers, timeout=5)
        call_logs = raw.json()["results"]
        details = [
            requests.get(
                f"{emulator.base_url}/observability/v1/call-logs/{c['id']}/", headers=headers, timeout=5
            ).json()
            for c in call_logs
        ]
        ids = [c["id"] for c in call_logs]
        outcomes[style] = (
            [evaluation_state(c) for c in call_logs],
            [evaluation_state(d) for d in details],
            summarize(ids, details).results(),
            [parse_metrics(d) for d in details],
        )
    assert outcomes["documented"] == outcomes["loose"]
    states = outcomes["documented"][0]
    assert set(states) == {EvaluationState.PENDING, EvaluationState.EVALUATED, EvaluationState.FAILED}


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        # a rating metric: the enum key does not apply ("" documented, null loose)
        (
            {"id": 1, "type": "rating", "score": 4.5, "enum": "", "value": ""},
            {"score": 4.5, "enum": None, "value": None},
        ),
        (
            {"id": 1, "type": "rating", "score": 4.5, "enum": None, "value": None},
            {"score": 4.5, "enum": None, "value": None},
        ),
        ({"id": 1, "type": "rating", "score": "4.5"}, {"score": 4.5}),  # a number sent as text
        # an enum metric: the score does not apply (0 documented, null loose)
        (
            {"id": 2, "type": "enum", "score": 0, "enum": "resolved", "value": "resolved"},
            {"score": None, "value": "resolved"},
        ),
        (
            {"id": 2, "type": "enum", "score": None, "enum": "resolved", "value": "resolved"},
            {"score": None, "value": "resolved"},
        ),
        # a binary metric scoring 0 keeps its 0
        (
            {"id": 3, "type": "binary", "score": 0, "enum": "", "value": "false"},
            {"score": 0.0, "enum": None, "value": "false"},
        ),
        ({"id": 3, "type": "binary", "score": "", "value": "false"}, {"score": None, "value": "false"}),
    ],
)
def test_metric_keys_read_alike(sent: dict[str, Any], read: dict[str, Any]) -> None:
    assert {k: normalize_metric(sent)[k] for k in read} == read


@pytest.mark.parametrize("empty", ["", None, "   "])
def test_call_log_strings_without_value_read_as_none(empty: Any) -> None:
    call_log = normalize_call_log(
        {"id": 1, "call_ended_reason": empty, "customer_number": empty, "feedback": empty, "voice_recording_url": empty}
    )
    assert call_log == {"id": 1, "call_ended_reason": None, "customer_number": None, "feedback": None,
                        "voice_recording_url": None}  # fmt: skip


@pytest.mark.parametrize("form", ["text", "value"])
def test_json_fields_read_alike(form: str) -> None:
    values = {
        "metrics": [{"id": 1, "type": "rating", "score": 3.0}],
        "transcript_object": [{"role": "Main Agent", "content": "Hi"}],
        "critical_categories": [{"category": "x"}],
        "metadata": {"k": "v"},
        "dynamic_variables": {"name": "Ada"},
    }
    sent = {k: json.dumps(v) if form == "text" else v for k, v in values.items()}
    read = normalize_call_log({"id": 1, **sent})
    assert read["metrics"] == [{"id": 1, "type": "rating", "score": 3.0}]
    assert {k: read[k] for k in values if k != "metrics"} == {k: v for k, v in values.items() if k != "metrics"}


def test_transfer_writes_the_same_rows_from_both_forms(
    servers: dict[str, CekuraEmulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_cekura.transfers._sql import ALL_CALL_LOG_COLUMNS

    columns = [c for c in ALL_CALL_LOG_COLUMNS if c not in ("exported_at", *SERVER_CLOCK)]
    tables = {}
    for style in STYLES:
        warehouse = sqlite_warehouse(tmp_path / f"{style}.db", monkeypatch)
        op = CekuraCallLogsToSqlOperator(
            task_id=f"export_{style}",
            cekura_conn_id=f"cekura_{style}",
            sql_conn_id=warehouse.conn_id,
            table=warehouse.table,
            metrics_table=warehouse.metrics_table,
            columns=columns,
            timestamp_from=START.isoformat(),
            timestamp_to=(START + timedelta(days=1)).isoformat(),
        )
        assert op.execute({}) == 15  # type: ignore[arg-type]
        tables[style] = (warehouse.rows(", ".join(c for c in columns if c != "id")), warehouse.metrics())
    assert tables["documented"] == tables["loose"]
    rows, metrics = tables["documented"]
    assert {r["call_ended_reason"] for r in rows.values()} == {None}  # "" and null both export as NULL
    assert all(isinstance(r["transcript_object"], list) and isinstance(r["metadata"], dict) for r in rows.values())
    enum_scores = {m["score"] for m in metrics.values() if m["type"] == "enum"}
    rating_values = {m["value"] for m in metrics.values() if m["type"] == "rating"}
    assert enum_scores == {None} and rating_values == {None}
    assert {m["score"] for m in metrics.values() if m["type"] == "rating"} - {None}
