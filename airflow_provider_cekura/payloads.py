"""Observe payload model and validation: the one place that knows what a valid call is.

:func:`build_observe_payload` turns user input (operator arguments, a dict from
a JSON-lines file, an XCom) into the JSON body the API accepts, or raises
:class:`~airflow_provider_cekura.exceptions.CekuraValidationError` naming the
field and the call_id. It never touches the network.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import IO, Any

from airflow_provider_cekura.exceptions import CekuraValidationError

CALL_ID_MAX_LENGTH = 100
TRACE_ID_MAX_LENGTH = 32
TEXT_MAX_LENGTH = 100  # call_ended_reason, customer_number
MAX_ID = 2**63 - 1  # agent and metric ids are 64-bit integers

TRANSCRIPT_TYPES = frozenset(
    {"cekura", "vocera", "vapi", "retell", "deepgram", "pipecat", "livekit", "elevenlabs", "none-mono"}
)
CEKURA_ROLES = frozenset({"Main Agent", "Testing Agent"})
REDACT_FIELDS = frozenset(
    {
        "person_name", "age", "phone_number", "email_address", "date", "time", "location", "origin",
        "gender_sexuality", "physical_attribute", "occupation", "username", "password", "ip_address",
        "url", "filename", "event", "vehicle_id", "dob", "healthcare_number", "medical_professional",
        "credit_card", "account_number", "bank_account", "money", "ssn", "passport_number",
        "driver_license", "numerical_pii",
    }
)  # fmt: skip

OBSERVE_FIELDS = (
    "call_id",
    "agent",
    "assistant_id",
    "transcript_type",
    "transcript_json",
    "voice_recording_url",
    "call_ended_reason",
    "customer_number",
    "metadata",
    "timestamp",
    "dynamic_variables",
    "feedback",
    "redact_fields",
    "metric_ids",
    "main_agent_channel_index",
    "trace_id",
)
"""Fields of an observe request body, in the documented order (``voice_recording`` travels as a file)."""

_TRACE_ID = re.compile(r"^[0-9a-fA-F]{1,32}$")


def _fail(field: str, message: str, call_id: Any) -> CekuraValidationError:
    return CekuraValidationError(field, message, call_id=call_id if isinstance(call_id, str) else None)


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _show(value: Any, limit: int = 80) -> str:
    """``repr()`` for error messages: short, and safe for any value (a 5000-digit int cannot be repr'd)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _optional_text(payload: dict[str, Any], name: str, call_id: str, max_length: int | None = None) -> None:
    value = payload.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, got {type(value).__name__}", call_id)
    if max_length is not None and len(value) > max_length:
        raise _fail(name, f"must be at most {max_length} characters, got {len(value)}", call_id)


def _json_object(payload: dict[str, Any], name: str, call_id: str) -> None:
    value = payload.get(name)
    if value is None:
        return
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as err:  # ValueError: also a number too long for int()
            raise _fail(name, f"is not valid JSON ({getattr(err, 'msg', type(err).__name__)})", call_id) from None
    if not isinstance(value, Mapping):
        raise _fail(name, f"must be an object (dict), got {type(value).__name__}", call_id)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise _fail(name, f"is not JSON-serializable: {err}", call_id) from None
    payload[name] = dict(value)


def _validate_cekura_transcript(turns: Any, call_id: str) -> None:
    if not isinstance(turns, list):
        raise _fail("transcript_json", f"must be a list of turns, got {type(turns).__name__}", call_id)
    for index, turn in enumerate(turns):
        where = f"transcript_json[{index}]"
        if not isinstance(turn, Mapping):
            raise _fail(where, f"must be an object, got {type(turn).__name__}", call_id)
        role = turn.get("role")
        if not isinstance(role, str) or role not in CEKURA_ROLES:
            raise _fail(f"{where}.role", f"must be 'Main Agent' or 'Testing Agent', got {_show(role)}", call_id)
        if not isinstance(turn.get("content"), str):
            raise _fail(f"{where}.content", "must be a string", call_id)
        for key in ("start_time", "end_time"):
            if not _is_number(turn.get(key)):
                raise _fail(f"{where}.{key}", f"must be a finite number, got {_show(turn.get(key))}", call_id)
        if turn["end_time"] < turn["start_time"]:
            raise _fail(f"{where}.end_time", "must not be before start_time", call_id)


def normalize_metric_ids(value: Any, call_id: str | None = None) -> str | None:
    """``[1, 2]``, ``(1, 2)``, ``"1,2"`` or ``1`` → ``"1,2"``; anything else is an error."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        items: Sequence[Any] = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise _fail("metric_ids", f"must be a list of integers or a comma string, got {_show(value)}", call_id)
    ids: list[str] = []
    for item in items:
        if isinstance(item, bool):
            raise _fail("metric_ids", f"{_show(item)} is not an integer metric id", call_id)
        if isinstance(item, int) and 0 < item <= MAX_ID:
            ids.append(str(item))
        elif (
            isinstance(item, str)
            and item.isascii()
            and item.isdigit()
            and len(item.lstrip("0")) <= 19
            and 0 < int(item.lstrip("0") or "0") <= MAX_ID
        ):
            ids.append(str(int(item.lstrip("0"))))
        else:
            raise _fail("metric_ids", f"{_show(item)} is not a positive integer metric id", call_id)
    return ",".join(ids)


def parse_timestamp(value: Any, field: str = "timestamp", call_id: str | None = None) -> datetime | None:
    """The one timestamp parser: a datetime or date (naive means UTC) or ISO 8601 text → an aware datetime.

    ``None``, blank text and the text ``"None"`` (what a template renders for a missing value) give ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or text == "None":
            return None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _fail(field, f"is not an ISO 8601 date-time: {_show(value)}", call_id) from None
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        raise _fail(field, f"must be a datetime or ISO 8601 string, got {type(value).__name__}", call_id)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def normalize_timestamp(value: Any, call_id: str | None = None, field: str = "timestamp") -> str | None:
    """A datetime (naive = UTC) or ISO 8601 string → ISO 8601 text with an offset (``Z`` for UTC)."""
    parsed = parse_timestamp(value, field, call_id)
    return None if parsed is None else parsed.isoformat().replace("+00:00", "Z")


def build_observe_payload(call: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one call and return the JSON body for ``POST /observability/v1/observe/``.

    ``None`` values are dropped. ``metric_ids`` becomes a comma string,
    ``timestamp`` an ISO string, ``transcript_json`` given as JSON text is
    parsed. ``voice_recording`` is not part of the body (the hook sends it as a
    file) and is rejected here so a path never travels as text.

    :raises CekuraValidationError: naming the field and the call_id.
    """
    if not isinstance(call, Mapping):
        raise CekuraValidationError("call", f"must be a mapping of observe fields, got {type(call).__name__}")
    call_id = call.get("call_id")
    unknown = sorted(str(k) for k in call if k not in OBSERVE_FIELDS)
    if unknown:
        raise _fail(unknown[0], f"is not an observe field (known: {', '.join(OBSERVE_FIELDS)})", call_id)
    payload = {k: v for k, v in call.items() if v is not None}

    if not isinstance(call_id, str) or not call_id.strip():
        raise _fail("call_id", "is required and must be a non-empty string", call_id)
    if len(call_id) > CALL_ID_MAX_LENGTH:
        raise _fail("call_id", f"must be at most {CALL_ID_MAX_LENGTH} characters, got {len(call_id)}", call_id)
    if any(unicodedata.category(ch) == "Cc" for ch in call_id):  # C0, DEL and C1
        raise _fail("call_id", "must not contain control characters", call_id)

    agent, assistant_id = payload.get("agent"), payload.get("assistant_id")
    if (agent is None) == (assistant_id is None):
        raise _fail("agent", "give exactly one of agent (Cekura agent id) or assistant_id", call_id)
    if agent is not None:
        if isinstance(agent, str) and agent.isascii() and agent.isdigit() and len(agent) <= 20:
            agent = int(agent)
        if isinstance(agent, bool) or not isinstance(agent, int) or not 0 < agent <= MAX_ID:
            raise _fail("agent", f"must be a positive integer agent id, got {_show(agent)}", call_id)
        payload["agent"] = agent
    if assistant_id is not None and (not isinstance(assistant_id, str) or not assistant_id.strip()):
        raise _fail("assistant_id", "must be a non-empty string", call_id)

    transcript_type = payload.get("transcript_type", "cekura")
    if not isinstance(transcript_type, str) or transcript_type not in TRANSCRIPT_TYPES:
        raise _fail(
            "transcript_type",
            f"must be one of {', '.join(sorted(TRANSCRIPT_TYPES))}, got {_show(transcript_type)}",
            call_id,
        )
    if "transcript_json" in payload:
        transcript = payload["transcript_json"]
        if isinstance(transcript, str):
            try:
                transcript = json.loads(transcript)
            except (ValueError, RecursionError) as err:  # ValueError: also a number too long for int()
                msg = getattr(err, "msg", type(err).__name__)
                raise _fail("transcript_json", f"is not valid JSON ({msg})", call_id) from None
        if transcript_type == "cekura":
            _validate_cekura_transcript(transcript, call_id)
        elif not isinstance(transcript, (list, Mapping)):
            raise _fail("transcript_json", "must be a list or an object", call_id)
        try:
            json.dumps(transcript, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as err:
            raise _fail("transcript_json", f"is not JSON-serializable: {err}", call_id) from None
        payload["transcript_json"] = transcript

    _optional_text(payload, "voice_recording_url", call_id, 2000)
    url = payload.get("voice_recording_url")
    if url is not None and not re.match(r"^https?://\S+$", url):
        raise _fail("voice_recording_url", "must be an http(s) URL", call_id)
    _optional_text(payload, "call_ended_reason", call_id, TEXT_MAX_LENGTH)
    _optional_text(payload, "customer_number", call_id, TEXT_MAX_LENGTH)
    _optional_text(payload, "feedback", call_id)
    _json_object(payload, "metadata", call_id)
    _json_object(payload, "dynamic_variables", call_id)

    if "timestamp" in payload:
        payload["timestamp"] = normalize_timestamp(payload["timestamp"], call_id)

    if "redact_fields" in payload:
        redact = payload["redact_fields"]
        if isinstance(redact, str):
            redact = [part.strip() for part in redact.split(",") if part.strip()]
        if not isinstance(redact, (list, tuple)):
            raise _fail("redact_fields", "must be a list of field names", call_id)
        bad = [r for r in redact if not isinstance(r, str) or r not in REDACT_FIELDS]
        if bad:
            raise _fail("redact_fields", f"unknown value(s) {_show(bad)}; see the documented enum", call_id)
        payload["redact_fields"] = list(dict.fromkeys(redact))

    if "metric_ids" in payload:
        metric_ids = normalize_metric_ids(payload["metric_ids"], call_id)
        if metric_ids is None:
            del payload["metric_ids"]
        else:
            payload["metric_ids"] = metric_ids

    if "main_agent_channel_index" in payload:
        index = payload["main_agent_channel_index"]
        if isinstance(index, bool) or index not in (0, 1):
            raise _fail("main_agent_channel_index", f"must be 0 or 1, got {_show(index)}", call_id)

    if "trace_id" in payload:
        trace_id = payload["trace_id"]
        if not isinstance(trace_id, str) or not _TRACE_ID.match(trace_id):
            raise _fail("trace_id", f"must be a hex string of at most {TRACE_ID_MAX_LENGTH} characters", call_id)

    return {k: payload[k] for k in OBSERVE_FIELDS if k in payload}


def load_calls(calls: Any) -> list[Mapping[str, Any]]:
    """A batch of calls as a list of mappings: from a list, one dict, or JSON text (a rendered template or XCom).

    Only the shape is checked here; :func:`build_observe_payload` validates each call.
    """
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except (ValueError, RecursionError) as err:
            raise CekuraValidationError(
                "calls", f"is not valid JSON ({getattr(err, 'msg', type(err).__name__)})"
            ) from None
    if isinstance(calls, Mapping):
        calls = [calls]
    if not isinstance(calls, (list, tuple)):
        raise CekuraValidationError("calls", f"must be a list of call dicts, got {type(calls).__name__}")
    for index, call in enumerate(calls):
        if not isinstance(call, Mapping):
            raise CekuraValidationError(f"calls[{index}]", f"must be a dict, got {type(call).__name__}")
    return list(calls)


def build_observe_payloads(calls: Any) -> list[dict[str, Any]]:
    """Validate a batch; the first bad call raises before anything is sent.

    Duplicate call_ids within the batch are an error too (the API would hold
    one call log per call_id, so the batch is ambiguous).
    """
    payloads = []
    seen: set[str] = set()
    for call in load_calls(calls):
        payload = build_observe_payload(call)
        if payload["call_id"] in seen:
            raise _fail("call_id", "appears more than once in the batch", payload["call_id"])
        seen.add(payload["call_id"])
        payloads.append(payload)
    return payloads


MULTIPART_ARRAY_FIELDS = frozenset({"redact_fields"})
"""Fields the observe schema types as arrays: in a form body, one part per item (as a form list is read)."""


def multipart_fields(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten a validated payload into multipart form fields, in order.

    A documented array (:data:`MULTIPART_ARRAY_FIELDS`) becomes one field per item; other objects and
    lists (``transcript_json``, ``metadata``, ``dynamic_variables``: JSON per the documents) JSON text.
    """
    fields: list[tuple[str, str]] = []
    for key, value in payload.items():
        if key in MULTIPART_ARRAY_FIELDS and isinstance(value, list):
            fields.extend((key, str(item)) for item in value)
        elif isinstance(value, (dict, list)):
            fields.append((key, json.dumps(value)))
        elif isinstance(value, bool):
            fields.append((key, "true" if value else "false"))
        else:
            fields.append((key, str(value)))
    return fields


def parse_call_log_ids(call_log_ids: Any, name: str = "call_log_ids") -> list[int]:
    """Cekura call log ids from an int, a list, a comma string or JSON text (a rendered XCom).

    The sensor's result, ``{"<id>": {...}}`` (as a dict or as JSON text), gives its keys.
    Duplicates are dropped, order kept; anything that is not a positive integer is an error.
    """
    if isinstance(call_log_ids, str):
        text = call_log_ids.strip()
        if text.startswith(("[", "{")):
            try:
                call_log_ids = json.loads(text)
            except ValueError:
                raise CekuraValidationError(name, f"is not a JSON list or object: {text[:80]!r}") from None
        else:
            call_log_ids = [part for part in text.split(",") if part.strip()]
    if isinstance(call_log_ids, Mapping):
        call_log_ids = list(call_log_ids)
    if isinstance(call_log_ids, (int, str)):
        call_log_ids = [call_log_ids]
    if not isinstance(call_log_ids, Iterable):
        raise CekuraValidationError(name, f"must be ids, got {type(call_log_ids).__name__}")
    ids: list[int] = []
    for item in call_log_ids:
        if isinstance(item, bool):
            raise CekuraValidationError(name, f"{item!r} is not a call log id")
        try:
            value = int(str(item).strip()) if isinstance(item, str) else int(item)
        except (TypeError, ValueError):
            raise CekuraValidationError(name, f"{item!r} is not an integer call log id") from None
        if value <= 0:
            raise CekuraValidationError(name, f"{item!r} is not a positive call log id")
        ids.append(value)
    return list(dict.fromkeys(ids))


RecordingSource = Any
"""A local path (str or ``os.PathLike``), an ``ObjectStoragePath`` (s3://, gs://, file://) or a binary file object."""


def _is_local_path(source: Any) -> bool:
    """A str or ``os.PathLike`` naming a local file. An ``ObjectStoragePath`` is ``os.PathLike`` too on
    Airflow 2.11-3.1 (its ``fspath`` is the URL, ``file:///...``): it has a ``protocol`` and opens itself."""
    return isinstance(source, str) or (isinstance(source, os.PathLike) and not hasattr(source, "protocol"))


def _recording_name(source: Any) -> str:
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return os.path.basename(name) or "recording"
    return os.path.basename(os.fspath(source)) if _is_local_path(source) else "recording"


def _resolve_recording(source: RecordingSource) -> RecordingSource:
    """A ``file://`` URL becomes a local path, another URL (s3://, gs://, ...) an ``ObjectStoragePath``."""
    if isinstance(source, str) and source.startswith("file://"):
        return source[len("file://") :]
    if isinstance(source, str) and "://" in source:
        from airflow_provider_cekura.version_compat import ObjectStoragePath

        return ObjectStoragePath(source)
    return source


def check_recording(source: RecordingSource, call_id: str | None = None) -> None:
    """Fail before any request if ``source`` is not a readable recording."""
    if source is None:
        return
    if hasattr(source, "read"):
        if getattr(source, "closed", False):
            raise _fail("voice_recording", "file object is closed", call_id)
        return
    source = _resolve_recording(source)
    if _is_local_path(source):
        path = os.fspath(source)
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise _fail("voice_recording", f"{path!r} is not a readable file", call_id)
        return
    if hasattr(source, "open") and hasattr(source, "is_file"):
        try:
            ok = source.is_file()
        except Exception as err:
            raise _fail("voice_recording", f"{source} cannot be checked: {err}", call_id) from None
        if not ok:
            raise _fail("voice_recording", f"{source} is not a readable file", call_id)
        return
    raise _fail(
        "voice_recording",
        f"must be a path, ObjectStoragePath or file object, got {type(source).__name__}",
        call_id,
    )


@contextmanager
def open_recording(source: RecordingSource, call_id: str | None = None) -> Iterator[tuple[str, IO[bytes]]]:
    """Open a recording for streaming upload: yields ``(filename, binary stream)``; never reads it whole."""
    check_recording(source, call_id)
    if hasattr(source, "read"):
        yield _recording_name(source), source
        return
    source = _resolve_recording(source)
    if _is_local_path(source):
        with open(os.fspath(source), "rb") as stream:
            yield _recording_name(source), stream
        return
    with source.open("rb") as stream:
        yield _recording_name(source), stream
