"""payloads.py: one test per validation rule, helpers, and a property test (never an unexpected exception)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_cekura.exceptions import CekuraValidationError
from airflow_provider_cekura.payloads import (
    OBSERVE_FIELDS,
    REDACT_FIELDS,
    build_observe_payload,
    build_observe_payloads,
    check_recording,
    load_calls,
    multipart_fields,
    normalize_metric_ids,
    normalize_timestamp,
    open_recording,
    parse_call_log_ids,
    recording_roots,
)

TURNS = [
    {"role": "Main Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.5},
    {"role": "Testing Agent", "content": "Hi.", "start_time": 1.6, "end_time": 3},
]


def call(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"call_id": "call-1", "agent": 7, "transcript_json": TURNS}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def rejects(field: str, expect_call_id: str | None = "call-1", **overrides: Any) -> CekuraValidationError:
    """Assert the call is rejected naming ``field`` (and the call_id when it is a string)."""
    with pytest.raises(CekuraValidationError) as info:
        build_observe_payload(call(**overrides))
    err = info.value
    assert err.field == field, str(err)
    assert err.call_id == expect_call_id
    assert field in str(err)
    if expect_call_id is not None:
        assert repr(expect_call_id) in str(err)
    return err


def test_valid_call_is_normalized() -> None:
    payload = build_observe_payload(
        call(
            agent="7",
            metric_ids=[3, "4"],
            redact_fields="email_address, ssn,ssn",
            timestamp=datetime(2026, 1, 2, 3, 4, 5),
            metadata='{"k": 1}',
            transcript_json=json.dumps(TURNS),
            trace_id="abc123",
            main_agent_channel_index=1,
            feedback=None,
        )
    )
    assert payload["agent"] == 7
    assert payload["metric_ids"] == "3,4"
    assert payload["redact_fields"] == ["email_address", "ssn"]
    assert payload["timestamp"] == "2026-01-02T03:04:05Z"
    assert payload["metadata"] == {"k": 1}
    assert payload["transcript_json"] == TURNS
    assert "feedback" not in payload  # None is dropped
    assert list(payload) == [k for k in OBSERVE_FIELDS if k in payload]  # documented order
    json.dumps(payload, allow_nan=False)


def test_call_id_missing() -> None:
    rejects("call_id", None, call_id=...)
    rejects("call_id", "   ", call_id="   ")
    rejects("call_id", None, call_id=42)


def test_call_id_too_long() -> None:
    build_observe_payload(call(call_id="x" * 100))
    err = rejects("call_id", "x" * 101, call_id="x" * 101)
    assert "100" in err.reason


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "tab\there", "del\x7f", "c1\x85x"])
def test_call_id_control_characters(bad: str) -> None:
    rejects("call_id", bad, call_id=bad)


def test_agent_xor_assistant_id() -> None:
    rejects("agent", agent=7, assistant_id="asst_1")
    rejects("agent", agent=...)
    assert build_observe_payload(call(agent=..., assistant_id="asst_1"))["assistant_id"] == "asst_1"
    rejects("assistant_id", agent=..., assistant_id="  ")
    rejects("agent", agent=0)
    rejects("agent", agent=True)
    rejects("agent", agent="seven")


def test_transcript_type_enum() -> None:
    err = rejects("transcript_type", transcript_type="zoom")
    assert "retell" in err.reason
    rejects("transcript_type", transcript_type=["cekura"])  # unhashable: still a validation error
    payload = build_observe_payload(call(transcript_type="vapi", transcript_json={"messages": []}))
    assert payload["transcript_type"] == "vapi"
    rejects("transcript_json", transcript_type="vapi", transcript_json=5)


def test_cekura_transcript_role() -> None:
    turns = [dict(TURNS[0]), dict(TURNS[1], role="Customer")]
    err = rejects("transcript_json[1].role", transcript_json=turns)
    assert "Customer" in str(err)
    rejects("transcript_json[0].role", transcript_json=[dict(TURNS[0], role=["Main Agent"])])


def test_cekura_transcript_shape() -> None:
    rejects("transcript_json", transcript_json={"role": "Main Agent"})
    rejects("transcript_json[0]", transcript_json=["hello"])
    rejects("transcript_json", transcript_json="[not json")


def test_cekura_transcript_content() -> None:
    rejects("transcript_json[0].content", transcript_json=[dict(TURNS[0], content=None)])


@pytest.mark.parametrize("value", ["1.0", None, float("nan"), float("inf"), True, 10**5000], ids=range(6))
def test_cekura_transcript_numeric_times(value: Any) -> None:
    rejects("transcript_json[0].start_time", transcript_json=[dict(TURNS[0], start_time=value)])


def test_cekura_transcript_end_before_start() -> None:
    rejects("transcript_json[0].end_time", transcript_json=[dict(TURNS[0], start_time=2.0, end_time=1.0)])


def test_redact_fields_enum() -> None:
    assert len(REDACT_FIELDS) == 29
    err = rejects("redact_fields", redact_fields=["ssn", "shoe_size"])
    assert "shoe_size" in str(err)
    rejects("redact_fields", redact_fields=[{"ssn": 1}])
    rejects("redact_fields", redact_fields=5)


def test_metric_ids_forms() -> None:
    assert build_observe_payload(call(metric_ids=[1, 2]))["metric_ids"] == "1,2"
    assert build_observe_payload(call(metric_ids="1, 2"))["metric_ids"] == "1,2"
    assert build_observe_payload(call(metric_ids=5))["metric_ids"] == "5"
    assert "metric_ids" not in build_observe_payload(call(metric_ids=[]))
    assert normalize_metric_ids((3, "04")) == "3,4"


@pytest.mark.parametrize("bad", ["1,x", [1, -2], [True], 1.5, "1,,2", ["²"], "9" * 5000, [10**5000]], ids=range(8))
def test_metric_ids_bad(bad: Any) -> None:
    rejects("metric_ids", metric_ids=bad)


def test_main_agent_channel_index() -> None:
    assert build_observe_payload(call(main_agent_channel_index=0))["main_agent_channel_index"] == 0
    for bad in (2, -1, True, "0"):
        rejects("main_agent_channel_index", main_agent_channel_index=bad)


def test_trace_id() -> None:
    assert build_observe_payload(call(trace_id="0af7651916cd43dd8448eb211c80319c"))["trace_id"]
    for bad in ("0" * 33, "not-hex", 12, ""):
        rejects("trace_id", trace_id=bad)


def test_metadata_not_an_object() -> None:
    rejects("metadata", metadata=[1, 2])
    rejects("metadata", metadata="[1, 2]")
    rejects("metadata", metadata="{broken")
    rejects("metadata", metadata={"x": float("nan")})
    rejects("dynamic_variables", dynamic_variables=3)


def test_json_text_that_json_cannot_take() -> None:
    rejects("transcript_json", transcript_json="[" + "9" * 5000 + "]")  # too many digits for int()
    rejects("transcript_json", transcript_json="[" * 100_000)  # nesting deeper than the recursion limit
    rejects("metadata", metadata='{"n": ' + "9" * 5000 + "}")
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    rejects("dynamic_variables", dynamic_variables={"deep": deep})
    with pytest.raises(CekuraValidationError, match="calls"):
        load_calls("[" * 100_000)


def test_unknown_field() -> None:
    err = rejects("voice_recording", voice_recording="/tmp/a.wav")
    assert "not an observe field" in err.reason
    rejects("agent_id", agent_id=3)


def test_text_fields_and_url() -> None:
    rejects("call_ended_reason", call_ended_reason="x" * 101)
    rejects("customer_number", customer_number=5)
    rejects("voice_recording_url", voice_recording_url="ftp://host/a.wav")
    rejects("timestamp", timestamp="yesterday")
    rejects("timestamp", timestamp=12345)


def test_duplicate_call_id_in_a_batch() -> None:
    with pytest.raises(CekuraValidationError) as info:
        build_observe_payloads([call(call_id="a"), call(call_id="b"), call(call_id="a")])
    assert info.value.field == "call_id" and info.value.call_id == "a"
    assert "more than once" in str(info.value)


def test_batch_loading_forms() -> None:
    assert len(build_observe_payloads(json.dumps([call(call_id="a"), call(call_id="b")]))) == 2
    assert len(load_calls(call())) == 1
    with pytest.raises(CekuraValidationError, match="calls"):
        load_calls("not json")
    with pytest.raises(CekuraValidationError, match=r"calls\[1\]"):
        load_calls([call(), 3])
    with pytest.raises(CekuraValidationError, match="call"):
        build_observe_payload([("call_id", "x")])  # type: ignore[arg-type]


def test_normalize_timestamp() -> None:
    assert normalize_timestamp("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05Z"
    plus2 = timezone(timedelta(hours=2))
    assert normalize_timestamp(datetime(2026, 1, 2, 5, tzinfo=plus2)) == "2026-01-02T05:00:00+02:00"
    assert normalize_timestamp(datetime(2026, 1, 2, tzinfo=UTC).date()) == "2026-01-02T00:00:00Z"
    assert normalize_timestamp("") is None


def test_parse_call_log_ids_forms() -> None:
    assert parse_call_log_ids("3, 1,3") == [3, 1]
    assert parse_call_log_ids("[5, 6]") == [5, 6]
    assert parse_call_log_ids(9) == [9]
    for bad in ("[1,", "1,x", [0], [True], object()):
        with pytest.raises(CekuraValidationError):
            parse_call_log_ids(bad)


def test_multipart_fields_flatten() -> None:
    fields = multipart_fields({"call_id": "c", "agent": 3, "metadata": {"a": 1}, "redact_fields": ["ssn"], "x": True})
    assert fields == [
        ("call_id", "c"),
        ("agent", "3"),
        ("metadata", '{"a": 1}'),
        ("redact_fields", "ssn"),
        ("x", "true"),
    ]
    # a documented array is a form list: one part per item (JSON text would be one invalid item)
    two = multipart_fields({"redact_fields": ["ssn", "dob"], "transcript_json": [{"role": "Main Agent"}]})
    assert two == [("redact_fields", "ssn"), ("redact_fields", "dob"), ("transcript_json", '[{"role": "Main Agent"}]')]


def test_recording_sources(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    path.write_bytes(b"RIFF" + os.urandom(64))
    roots = recording_roots(tmp_path)  # local recordings only from allowed roots (test_coerce.py has the rule)
    with open_recording(str(path), roots=roots) as (name, stream):
        assert name == "call.wav" and stream.read(4) == b"RIFF"
    with open_recording(f"file://{path}", roots=roots) as (name, stream):
        assert name == "call.wav" and len(stream.read()) == 68
    with pytest.raises(CekuraValidationError) as info:
        check_recording(str(tmp_path / "missing.wav"), "c-9", roots)
    assert info.value.field == "voice_recording" and info.value.call_id == "c-9"
    with open(path, "rb") as handle:
        pass
    with pytest.raises(CekuraValidationError, match="closed"):
        check_recording(handle)
    with pytest.raises(CekuraValidationError, match="voice_recording"):
        check_recording(12345)


# ---------------------------------------------------------------- property test

ADVERSARIAL_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10),
    st.integers(min_value=4301, max_value=4400).map(lambda n: "9" * n),  # too many digits for int()
    st.integers(min_value=100, max_value=20_000).map(lambda n: "x" * n),
    st.sampled_from(["", " ", "cekura", "Main Agent", "ssn", "1,2", "[1,2]", "{}", "NaN", "\ud800", "1" * 25]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.builds(pow, st.just(10), st.just(5000)),  # an int repr() cannot print
    st.floats(allow_nan=True, allow_infinity=True),
    ADVERSARIAL_TEXT,
    st.datetimes(),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(["role", "content", "start_time", "end_time", "k"]), children, max_size=3),
    ),
    max_leaves=6,
)
TURN = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["Main Agent", "Testing Agent"]), VALUES), "content": VALUES},
    optional={"start_time": VALUES, "end_time": VALUES},
)
FIELD_VALUES = {name: VALUES for name in OBSERVE_FIELDS}
FIELD_VALUES["transcript_json"] = st.one_of(VALUES, st.lists(TURN, max_size=3))
FIELD_VALUES["call_id"] = st.one_of(ADVERSARIAL_TEXT, VALUES)
FIELD_VALUES["agent"] = st.one_of(st.integers(min_value=-5, max_value=5), VALUES)
FIELD_VALUES["redact_fields"] = st.one_of(st.lists(st.sampled_from(sorted(REDACT_FIELDS)), max_size=3), VALUES)
FIELD_VALUES["voice_recording"] = VALUES
# A valid call (or nothing) with a few fields replaced by arbitrary values, so that every rule is reached.
CALLS = st.builds(
    lambda base, changes: {**base, **changes},
    st.sampled_from([{}, call(), call(agent=..., assistant_id="asst")]),
    st.lists(st.sampled_from(sorted(FIELD_VALUES)), unique=True, max_size=4).flatmap(
        lambda names: st.fixed_dictionaries({name: FIELD_VALUES[name] for name in names})
    ),
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),  # CI runs the same examples each time; a local run explores new ones
    print_blob=True,  # a failure prints how to replay it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(CALLS)
def test_build_observe_payload_never_raises_anything_else(candidate: dict[str, Any]) -> None:
    try:
        payload = build_observe_payload(candidate)
    except CekuraValidationError as err:
        str(err)  # the message itself must be buildable
        assert err.field
        return
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["call_id"] == candidate["call_id"]
    assert ("agent" in payload) != ("assistant_id" in payload)
    assert set(payload) <= set(OBSERVE_FIELDS)


def test_a_blank_assistant_id_beside_an_agent_is_left_out() -> None:
    """Found by the property test above: ``assistant_id=""`` with an agent sent both fields to the API."""
    assert "assistant_id" not in build_observe_payload(call(agent=7, assistant_id=""))
    assert "agent" not in build_observe_payload(call(agent="", assistant_id="asst-1"))


def test_call_log_ids_from_the_sensors_result_dict() -> None:
    result = {"1042": {"state": "evaluated"}, "1045": {"state": "failed"}}
    assert parse_call_log_ids(result) == [1042, 1045]
    assert parse_call_log_ids(json.dumps(result)) == [1042, 1045]  # rendered with `| tojson`
    assert parse_call_log_ids("{}") == []
    with pytest.raises(CekuraValidationError, match="not a JSON list or object"):
        parse_call_log_ids("{'1042': {}}")  # a Python repr: render with `| tojson` instead


# ---------------------------------------------------------------- recordings: only from allowed roots


def test_recordings_only_from_allowed_roots(tmp_path: Path) -> None:
    """#29 case 8: a local recording is resolved (symlinks, ``..``) and read only under an allowed root."""
    from airflow_provider_cekura.version_compat import ObjectStoragePath

    root = tmp_path / "dags"
    root.mkdir()
    inside = root / "a.wav"
    inside.write_bytes(b"RIFF" + os.urandom(16))
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"SECRET")
    (root / "alias.wav").symlink_to(inside)  # a symlink that stays inside: fine
    (root / "escape.wav").symlink_to(outside)  # a symlink out of the root: refused
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "sub").mkdir()
    os.mkfifo(root / "pipe.wav")
    roots = recording_roots(root)

    for ok in (inside, str(inside), f"file://{inside}", root / "alias.wav", ObjectStoragePath(f"file://{inside}")):
        check_recording(ok, "c-1", roots)
        with open_recording(ok, "c-1", roots) as (_, stream):
            assert stream.read(4) == b"RIFF"

    refused = [
        "/etc/passwd",
        "file:///etc/passwd",
        ObjectStoragePath("file:///etc/passwd"),
        f"{root}/../outside.wav",
        f"{root}/sub/../../outside.wav",
        "../" * 30 + "etc/passwd",  # relative: resolved from the working directory
        root / "escape.wav",
        root / "passwd",
        "/proc/self/environ",
        f"file://{tmp_path}/outside.wav",
        "",
    ]
    for source in refused:
        with pytest.raises(CekuraValidationError, match=r"allowed recording root|/proc|empty path") as info:
            check_recording(source, "c-1", roots)
        assert info.value.field == "voice_recording" and info.value.call_id == "c-1"
        with pytest.raises(CekuraValidationError), open_recording(source, "c-1", roots):
            pass  # never opened
    for not_regular in (root / "sub", root / "pipe.wav"):
        with pytest.raises(CekuraValidationError, match="not a regular file"):
            check_recording(not_regular, "c-1", roots)
    with pytest.raises(CekuraValidationError, match="allowed recording root"):
        check_recording(inside, "c-1", ())  # no root at all: no local file

    # even a root of "/" never opens /proc, /sys or /dev (/proc/self/environ holds AIRFLOW_CONN_* secrets)
    everything = recording_roots("/")
    check_recording("/etc/passwd", "c-1", everything)  # the DAG author's explicit choice
    for never in ("/proc/self/environ", "file:///proc/self/environ", "/sys/kernel/notes", "/dev/zero"):
        with pytest.raises(CekuraValidationError, match="/proc, /sys or /dev"):
            check_recording(never, "c-1", everything)
    (root / "environ").symlink_to("/proc/self/environ")
    with pytest.raises(CekuraValidationError, match="/proc, /sys or /dev"):
        check_recording(root / "environ", "c-1", everything)


def test_a_remote_recording_is_not_limited_by_the_roots() -> None:
    """A remote ObjectStoragePath is not a local file: the roots do not apply to it."""
    from airflow_provider_cekura.version_compat import ObjectStoragePath

    remote = ObjectStoragePath("memory://recordings/r.wav")
    try:
        remote.write_bytes(b"RIFFremote")
    except ValueError as err:  # Airflow 2.11 and 3.0 register no "memory" file system
        pytest.skip(str(err))
    check_recording(remote, "c-1", ())  # (Airflow's own fs registry has no "memory" scheme to open it by)


def test_recording_roots_forms(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    real = os.path.realpath(tmp_path / "a")
    assert recording_roots(None, f"{tmp_path}/a, {tmp_path}/link", [tmp_path / "a"]) == (real,)
    with pytest.raises(CekuraValidationError, match="recording_roots"):
        recording_roots(5)
    with pytest.raises(CekuraValidationError, match="recording_roots"):
        recording_roots([""])


def test_validate_call_checks_the_recording_inside_a_call(tmp_path: Path) -> None:
    from airflow_provider_cekura.payloads import validate_call, validate_calls

    good = tmp_path / "a.wav"
    good.write_bytes(b"RIFF")
    payload, recording = validate_call({**call(), "voice_recording": str(good)}, recording_roots(tmp_path))
    assert recording == str(good) and "voice_recording" not in payload
    with pytest.raises(CekuraValidationError, match="voice_recording") as info:
        validate_calls([call(), {**call(call_id="c-2"), "voice_recording": "/etc/passwd"}], recording_roots(tmp_path))
    assert info.value.call_id == "c-2"
    with pytest.raises(CekuraValidationError, match="more than once"):
        validate_calls([call(), call()])
