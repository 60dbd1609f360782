"""_coerce.py: one rule per kind of input, and the same verdict from every entry point of the provider.

The first half tests the rules (tables of values and the verdict each gets). The second half runs every
public door (hook methods, operators, sensor, trigger, SQL transfer) on the same odd ids and requires the
same verdict from each: a ``CekuraValidationError`` and no request in the emulator's request log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_cekura._coerce import (
    IDS_PER_REQUEST,
    MAX_ID,
    MAX_JSON_DEPTH,
    agent_or_assistant,
    check_json_depth,
    format_timestamp,
    is_template,
    json_or_value,
    loads,
    parse_id,
    parse_ids,
    parse_timestamp,
    to_seconds,
)
from airflow_provider_cekura.exceptions import (
    CekuraAgentError,
    CekuraConfigurationError,
    CekuraResponseError,
    CekuraValidationError,
)

# ---------------------------------------------------------------------------------------------- ids

ODD_IDS: list[Any] = [
    5.7,  # a float is never an id (it would have become call log 5)
    5.0,  # not even an integral one
    float("nan"),
    True,  # a bool is never an id
    False,
    2**70,  # larger than the API's 64-bit ids
    MAX_ID + 1,
    "9223372036854775808",
    "0",  # ids start at 1
    0,
    -3,
    "-3",
    "٣",  # Arabic-Indic three: only ASCII digits count
    "³",
    "\uff13",  # fullwidth three
    "",  # empty
    "   ",
    "5.7",
    "1e3",
    "+5",
    "0x10",
    "5 6",
    b"5",
    object(),
    {"id": 5},
]
"""Values that are not ids, whatever the door."""

GOOD_IDS: list[tuple[Any, int]] = [
    (1, 1),
    (MAX_ID, MAX_ID),
    ("7", 7),
    (" 42 ", 42),
    ("007", 7),
    (str(MAX_ID), MAX_ID),
]


@pytest.mark.parametrize("value", ODD_IDS, ids=repr)
def test_parse_id_refuses(value: Any) -> None:
    with pytest.raises(CekuraValidationError) as info:
        parse_id(value, "agent_id", what="agent id")
    assert info.value.field == "agent_id"


@pytest.mark.parametrize(("value", "expected"), GOOD_IDS, ids=repr)
def test_parse_id_accepts(value: Any, expected: int) -> None:
    assert parse_id(value) == expected
    assert type(parse_id(value)) is int


def test_parse_id_accepts_integral_types_with_index() -> None:
    class Index:
        def __index__(self) -> int:
            return 12

    assert parse_id(Index()) == 12


@pytest.mark.parametrize("value", [v for v in ODD_IDS if not (isinstance(v, str) and not v.strip())], ids=repr)
def test_parse_ids_refuses_each_odd_item_in_every_form(value: Any) -> None:
    forms: list[Any] = [[value], [1, value], (value,)]
    if isinstance(value, (int, float, str)):
        forms.append(value)  # bare
    if isinstance(value, (int, float, str)) and not (isinstance(value, float) and value != value):
        forms.append(json.dumps([1, value]))  # JSON text of a list (a rendered XCom)
    if isinstance(value, str) and "," not in value:
        forms.append(f"1,{value}")  # comma string
    for form in forms:
        with pytest.raises(CekuraValidationError):
            parse_ids(form)


def test_parse_ids_forms() -> None:
    assert parse_ids("3, 1,3") == [3, 1]
    assert parse_ids("1,,2,") == [1, 2]  # empty parts of a comma string are skipped
    assert parse_ids("[5, 6]") == [5, 6]
    assert parse_ids('["5", 6]') == [5, 6]
    assert parse_ids(9) == [9]
    assert parse_ids({"1042": {}, "1045": {}}) == [1042, 1045]  # the sensor's result
    assert parse_ids(json.dumps({"1042": {}})) == [1042]
    assert parse_ids({3}) == [3]
    assert parse_ids(x for x in (4, 5)) == [4, 5]
    # a list that rendered to nothing is the empty list (what it means is the door's decision)
    for empty in ("", "  ", "None", "[]", "{}", [], ()):
        assert parse_ids(empty) == []
    with pytest.raises(CekuraValidationError, match="not a JSON list"):
        parse_ids("{'1042': {}}")  # a Python repr: render with `| tojson`
    with pytest.raises(CekuraValidationError, match=r"5\.7"):
        parse_ids([5.7])  # was [5] before _coerce


def test_agent_or_assistant_one_rule_one_error_type() -> None:
    assert agent_or_assistant(7, None) == {"agent_id": 7}
    assert agent_or_assistant("7", "") == {"agent_id": 7}  # blank means "not given"
    assert agent_or_assistant(None, " asst ") == {"assistant_id": "asst"}
    assert agent_or_assistant(7, None, agent_field="agent") == {"agent": 7}
    for agent, assistant in ((None, None), ("", " "), (1, "a"), ("1", "a")):
        with pytest.raises(CekuraAgentError, match="exactly one"):
            agent_or_assistant(agent, assistant)
    for odd in ODD_IDS:
        if isinstance(odd, str) and not odd.strip():
            continue  # blank: "not given" (and then "exactly one" refuses it, above)
        with pytest.raises(CekuraAgentError) as info:
            agent_or_assistant(odd, None)
        assert info.value.field == "agent_id"
    with pytest.raises(CekuraAgentError, match="assistant_id"):
        agent_or_assistant(None, 5)
    # the subclass keeps both families: a validation error, and the rerun operator's old configuration error
    assert issubclass(CekuraAgentError, CekuraValidationError)
    assert issubclass(CekuraAgentError, CekuraConfigurationError)
    with pytest.raises(CekuraAgentError):
        agent_or_assistant(None, None, presence_only=True)
    assert agent_or_assistant("{{ params.agent }}", None, presence_only=True) == {}


def test_one_constant_for_ids_per_request() -> None:
    import airflow_provider_cekura.hooks.cekura as hook_module
    import airflow_provider_cekura.transfers._selection as transfer_module
    import airflow_provider_cekura.triggers._poller as poller_module

    assert IDS_PER_REQUEST == 100
    for module in (hook_module, transfer_module, poller_module):
        assert module.IDS_PER_REQUEST is IDS_PER_REQUEST
        assert not hasattr(module, "RERUN_CHUNK") and not hasattr(module, "PAGE_IDS")


# ---------------------------------------------------------------------------------------------- time


def test_timestamps_parse_and_format() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert parse_timestamp("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_timestamp("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # naive: UTC
    assert parse_timestamp(date(2026, 1, 2)) == datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_timestamp(datetime(2026, 1, 2, 5, tzinfo=plus2)).utcoffset() == timedelta(hours=2)
    for nothing in (None, "", "  ", "None"):
        assert parse_timestamp(nothing) is None
    for bad in ("yesterday", "2026-13-01", 1767225600, 5.5, True):
        with pytest.raises(CekuraValidationError) as info:
            parse_timestamp(bad, "timestamp_from")
        assert info.value.field == "timestamp_from"
    when = datetime(2026, 1, 2, 5, tzinfo=plus2)
    assert format_timestamp(when) == "2026-01-02T03:00:00Z"  # API filters: UTC
    assert format_timestamp(when, utc=False) == "2026-01-02T05:00:00+02:00"  # payloads: the offset kept
    assert format_timestamp(datetime(2026, 1, 2)) == "2026-01-02T00:00:00Z"


def test_the_hook_and_payloads_use_the_same_timestamp_rules() -> None:
    import airflow_provider_cekura.hooks.cekura as hook_module
    import airflow_provider_cekura.payloads as payloads
    import airflow_provider_cekura.transfers._selection as transfer_module
    from airflow_provider_cekura import _coerce

    assert payloads.parse_timestamp is _coerce.parse_timestamp
    assert transfer_module.parse_timestamp is _coerce.parse_timestamp
    assert hook_module._iso is _coerce.format_timestamp
    assert hook_module._to_datetime is _coerce.require_timestamp


@pytest.mark.parametrize(("value", "expected"), [(5, 5.0), (0.25, 0.25), (timedelta(minutes=2), 120.0)], ids=repr)
def test_to_seconds_accepts(value: Any, expected: float) -> None:
    assert to_seconds(value, "timeout") == expected


@pytest.mark.parametrize(
    "value", [0, -1, float("nan"), float("inf"), True, "30", None, timedelta(0), 10**400], ids=repr
)
def test_to_seconds_refuses(value: Any) -> None:
    with pytest.raises(CekuraValidationError, match="timeout"):
        to_seconds(value, "timeout")


def test_to_seconds_zero_when_allowed() -> None:
    assert to_seconds(0, "deadline", allow_zero=True) == 0.0
    with pytest.raises(CekuraValidationError):
        to_seconds(-0.5, "deadline", allow_zero=True)


# ---------------------------------------------------------------------------------------------- JSON


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_depth_is_bounded_without_recursion_error() -> None:
    assert loads(_nested(MAX_JSON_DEPTH), "x") is not None
    for depth in (MAX_JSON_DEPTH + 1, 5_000, 200_000):  # 200,000 levels: RecursionError inside json.loads
        with pytest.raises(CekuraValidationError, match="nested deeper") as info:
            loads(_nested(depth), "filters_v2")
        assert info.value.field == "filters_v2"
    deep: Any = []
    for _ in range(10_000):  # a Python value, not text: checked without recursion too
        deep = [deep]
    with pytest.raises(CekuraValidationError, match="nested deeper"):
        check_json_depth(deep, "call_log_ids")
    with pytest.raises(CekuraValidationError, match="nested deeper"):
        json_or_value({"a": deep}, "filters_v2")
    assert json_or_value({"field": "id", "op": "eq", "value": 1}, "f") == {"field": "id", "op": "eq", "value": 1}
    with pytest.raises(CekuraValidationError, match="not valid JSON"):
        loads("{", "checks")
    with pytest.raises(CekuraValidationError, match="not valid JSON"):
        loads("9" * 5000, "checks")  # too many digits for int()


def test_deep_json_is_refused_at_the_doors(emulator: Any) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.payloads import build_observe_payload, load_calls

    hook = CekuraHook()
    with pytest.raises(CekuraValidationError, match="call_log_ids"):
        hook.get_call_logs(_nested(100_000))
    with pytest.raises(CekuraValidationError, match="filters_v2"):
        list(hook.iter_call_logs(filters_v2='{"field": "id", "op": "eq", "value": ' + _nested(100_000) + "}"))
    with pytest.raises(CekuraValidationError, match="calls"):
        load_calls(_nested(100_000))
    with pytest.raises(CekuraValidationError, match="metadata"):
        build_observe_payload({"call_id": "c", "agent": 1, "metadata": '{"a": ' + _nested(1_000) + "}"})
    assert emulator.count_requests() == 0


class _DeepJsonServer:
    """A hostile server on 127.0.0.1: every answer is 200 with JSON nested 200,000 levels deep."""

    def __init__(self) -> None:
        body = b'{"results": ' + _nested(200_000).encode() + b', "next": null}'

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_deeply_nested_response_is_a_typed_api_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    with _DeepJsonServer() as url:
        conn = {"conn_type": "cekura", "host": url, "password": "k", "extra": {"max_attempts": 1}}
        monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEEP", json.dumps(conn))
        hook = CekuraHook("cekura_deep")
        with pytest.raises(CekuraResponseError, match="not JSON"):
            hook.get_call_logs([1])  # json.loads of the body
        with pytest.raises(CekuraResponseError, match="not JSON"):
            hook.get_evaluations([1])  # msgspec's decoder of the body
        hook.close()


# ---------------------------------------------------------------------------------------------- templates


def test_is_template() -> None:
    for value in ("{{ ds }}", "x {% if a %}", "{# note #}", ["a", "{{ b }}"], {"k": {"n": ["{{ c }}"]}}):
        assert is_template(value)
    for value in ("calls", "{ a }", {"k": "v"}, [1, 2], None, 5):
        assert not is_template(value)


# ---------------------------------------------------------------------------------------------- every door

Door = Callable[[Any], Any]


def _hook() -> Any:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    return CekuraHook()


def _rerun_op(**kwargs: Any) -> Any:
    from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator

    return CekuraRerunEvaluationOperator(task_id="rerun", **kwargs).execute({})  # type: ignore[arg-type]


def _observe_op(**kwargs: Any) -> Any:
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    return CekuraObserveOperator(task_id="observe", **kwargs).execute({})  # type: ignore[arg-type]


def _gate(call_log_ids: Any) -> Any:
    from airflow_provider_cekura.operators.evaluation_check import CekuraEvaluationCheckOperator

    op = CekuraEvaluationCheckOperator(
        task_id="gate", call_log_ids=call_log_ids, checks={"success_rate": {"geq_to": 0}}
    )
    return op.execute({})  # type: ignore[arg-type]


def _sensor(call_log_ids: Any) -> Any:
    from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

    sensor = CekuraCallLogSensor(task_id="wait", call_log_ids=call_log_ids, poke_interval=0.1, timeout=1)
    return sensor.execute({})  # type: ignore[arg-type]


def _trigger(call_log_ids: Any) -> Any:
    from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

    return CekuraCallLogTrigger(call_log_ids=call_log_ids, poll_interval=0.1)


def _transfer(**kwargs: Any) -> Any:
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    op = CekuraCallLogsToSqlOperator(task_id="export", sql_conn_id="cekura_coerce_sql", table="calls", **kwargs)
    return op.execute({})  # type: ignore[arg-type]


CALL_LOG_ID_DOORS: dict[str, Door] = {
    "hook.get_call_logs": lambda ids: _hook().get_call_logs(ids),
    "hook.rerun_evaluation": lambda ids: _hook().rerun_evaluation(ids, agent_id=1),
    "hook.iter_call_logs": lambda ids: list(_hook().iter_call_logs(call_ids=ids)),
    "CekuraRerunEvaluationOperator": lambda ids: _rerun_op(call_log_ids=ids, agent_id=1),
    "CekuraEvaluationCheckOperator": _gate,
    "CekuraCallLogSensor": _sensor,
    "CekuraCallLogsToSqlOperator": lambda ids: _transfer(call_log_ids=ids),
    "CekuraCallLogTrigger": _trigger,
}
"""Every door that takes call log ids (the observe operator takes none: it creates them)."""

AGENT_ID_DOORS: dict[str, Door] = {
    "hook.rerun_evaluation": lambda agent: _hook().rerun_evaluation([1], agent_id=agent),
    "hook.iter_call_logs": lambda agent: list(_hook().iter_call_logs(agent_id=agent)),
    "hook.observe": lambda agent: _hook().observe({"call_id": "c-odd", "agent": agent}),
    "hook.observe_many": lambda agent: _hook().observe_many([{"call_id": "c-odd", "agent": agent}]),
    "CekuraRerunEvaluationOperator": lambda agent: _rerun_op(call_log_ids=[1], agent_id=agent),
    "CekuraObserveOperator": lambda agent: _observe_op(call_id="c-odd", agent=agent),
    "CekuraObserveOperator(calls)": lambda agent: _observe_op(calls=[{"call_id": "c-odd", "agent": agent}]),
    "CekuraCallLogsToSqlOperator": lambda agent: _transfer(call_log_ids=[1], agent_id=agent),
}
"""Every door that takes an agent id."""

PROJECT_ID_DOORS: dict[str, Door] = {
    "hook.iter_call_logs": lambda project: list(_hook().iter_call_logs(project_id=project)),
    "CekuraCallLogsToSqlOperator": lambda project: _transfer(call_log_ids=[1], project_id=project),
}


@pytest.fixture
def doors_env(emulator: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The emulator, plus the SQLite connection the transfer would write to (it must never get there)."""
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_COERCE_SQL", f"sqlite:///{tmp_path / 'export.db'}")
    yield emulator
    assert not (tmp_path / "export.db").exists(), "the transfer touched the database before validating"


def _verdict(door: Door, value: Any) -> str:
    try:
        door(value)
    except CekuraValidationError as err:
        return f"refused ({err.field})"
    except Exception as err:  # the door accepted the value and failed further on (no ti in the context...)
        return f"accepted ({type(err).__name__})"
    return "accepted"


def _odd_forms(value: Any) -> list[Any]:
    """A call log id as a door gets it: alone (unless blank: a blank list is the empty list) and in a list."""
    blank = isinstance(value, str) and not value.strip()
    return [[value], [1, value]] if blank else [value, [value], [1, value]]


@pytest.mark.parametrize("door", list(CALL_LOG_ID_DOORS), ids=str)
def test_every_door_refuses_odd_call_log_ids_before_any_request(doors_env: Any, door: str) -> None:
    verdicts = {
        f"{form!r}"[:60]: _verdict(CALL_LOG_ID_DOORS[door], form) for value in ODD_IDS for form in _odd_forms(value)
    }
    accepted = {form: verdict for form, verdict in verdicts.items() if not verdict.startswith("refused")}
    assert not accepted, f"{door} accepted: {accepted}"
    assert doors_env.count_requests() == 0, [(r.method, r.path) for r in doors_env.requests]
    # and the door does take a good id (so that the table above can fail)
    assert _verdict(CALL_LOG_ID_DOORS[door], ["7"]).startswith("accepted")


@pytest.mark.parametrize("door", list(AGENT_ID_DOORS), ids=str)
def test_every_door_refuses_odd_agent_ids_before_any_request(doors_env: Any, door: str) -> None:
    verdicts = {f"{value!r}"[:60]: _verdict(AGENT_ID_DOORS[door], value) for value in ODD_IDS}
    accepted = {value: verdict for value, verdict in verdicts.items() if not verdict.startswith("refused")}
    assert not accepted, f"{door} accepted: {accepted}"
    assert doors_env.count_requests() == 0, [(r.method, r.path) for r in doors_env.requests]
    assert _verdict(AGENT_ID_DOORS[door], "7").startswith("accepted")


@pytest.mark.parametrize("door", list(PROJECT_ID_DOORS), ids=str)
def test_every_door_refuses_odd_project_ids_before_any_request(doors_env: Any, door: str) -> None:
    verdicts = {f"{value!r}"[:60]: _verdict(PROJECT_ID_DOORS[door], value) for value in ODD_IDS}
    accepted = {value: verdict for value, verdict in verdicts.items() if not verdict.startswith("refused")}
    assert not accepted, f"{door} accepted: {accepted}"
    assert doors_env.count_requests() == 0


def test_every_door_treats_a_blank_id_list_as_empty(doors_env: Any) -> None:
    """A template that rendered nothing: each door does what it documents for "no ids", never a request."""
    assert _hook().get_call_logs("") == []
    assert _rerun_op(call_log_ids="", agent_id=1) == []
    assert _sensor(" ") == {}
    with pytest.raises(CekuraValidationError, match="empty"):
        _gate("")
    with pytest.raises(CekuraValidationError, match="empty"):
        _hook().rerun_evaluation("", agent_id=1)
    assert doors_env.count_requests() == 0


def test_payloads_parse_call_log_ids_is_a_deprecated_alias() -> None:
    from airflow_provider_cekura.payloads import parse_call_log_ids

    with pytest.warns(DeprecationWarning, match="parse_ids"):
        assert parse_call_log_ids("3,1") == [3, 1]
    with pytest.warns(DeprecationWarning), pytest.raises(CekuraValidationError):
        parse_call_log_ids([5.7])
