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
import stat
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

from airflow_provider_cekura._coerce import MAX_ID as MAX_ID  # re-exported: agent and metric ids are 64-bit
from airflow_provider_cekura._coerce import (
    agent_or_assistant,
    format_timestamp,
    json_or_value,
    parse_id,
    parse_ids,
    parse_timestamp,
    show,
)
from airflow_provider_cekura.exceptions import CekuraValidationError

CALL_ID_MAX_LENGTH = 100
TRACE_ID_MAX_LENGTH = 32
TEXT_MAX_LENGTH = 100  # call_ended_reason, customer_number

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


def _call_id(call_id: Any) -> str | None:
    return call_id if isinstance(call_id, str) else None


def _fail(field: str, message: str, call_id: Any) -> CekuraValidationError:
    return CekuraValidationError(field, message, call_id=_call_id(call_id))


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


_show = show


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
    value = json_or_value(value, name, _call_id(call_id))
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
    return ",".join(str(parse_id(item, "metric_ids", what="metric id", call_id=_call_id(call_id))) for item in items)


def normalize_timestamp(value: Any, call_id: str | None = None, field: str = "timestamp") -> str | None:
    """A datetime (naive = UTC) or ISO 8601 string → ISO 8601 text with its offset (``Z`` for UTC).

    Parsing and formatting are :mod:`airflow_provider_cekura._coerce`'s (one rule for every door).
    """
    parsed = parse_timestamp(value, field, call_id)
    return None if parsed is None else format_timestamp(parsed, utc=False)


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
    if agent is None and isinstance(assistant_id, str) and not assistant_id.strip():
        raise _fail("assistant_id", "must be a non-empty string", call_id)
    owner = agent_or_assistant(agent, assistant_id, agent_field="agent", call_id=_call_id(call_id))
    payload.pop("agent", None)  # a blank other one ("") is "not given": it never reaches the API beside the owner
    payload.pop("assistant_id", None)
    payload.update(owner)

    transcript_type = payload.get("transcript_type", "cekura")
    if not isinstance(transcript_type, str) or transcript_type not in TRANSCRIPT_TYPES:
        raise _fail(
            "transcript_type",
            f"must be one of {', '.join(sorted(TRANSCRIPT_TYPES))}, got {_show(transcript_type)}",
            call_id,
        )
    if "transcript_json" in payload:
        transcript = json_or_value(payload["transcript_json"], "transcript_json", _call_id(call_id))
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
        calls = json_or_value(calls, "calls")
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
    """Deprecated: use :func:`airflow_provider_cekura._coerce.parse_ids` (the same rule, one place).

    Cekura call log ids from an int, a list, a comma string or JSON text (a rendered XCom); the
    sensor's result ``{"<id>": {...}}`` gives its keys. Duplicates dropped, order kept.
    """
    warnings.warn(
        "airflow_provider_cekura.payloads.parse_call_log_ids is deprecated; use "
        "airflow_provider_cekura._coerce.parse_ids",
        DeprecationWarning,
        stacklevel=2,
    )
    return parse_ids(call_log_ids, name)


RecordingSource = Any
"""A local path (str or ``os.PathLike``), an ``ObjectStoragePath`` (s3://, gs://, file://) or a binary file object."""

NEVER_RECORDING_ROOTS = ("/proc", "/sys", "/dev")
"""Local trees a recording is never read from, whatever the allowed roots say (``/proc/self/environ`` holds the
worker's ``AIRFLOW_CONN_*`` secrets)."""

_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def recording_roots(*groups: Any) -> tuple[str, ...]:
    """The allowed recording roots from any number of groups (``None``, a path, a list of paths, or a comma
    string), each resolved (symlinks, ``..``) and given once, in order."""
    roots: list[str] = []
    for group in groups:
        if group is None:
            continue
        if isinstance(group, str):
            items: Iterable[Any] = [part.strip() for part in group.split(",") if part.strip()]
        elif isinstance(group, os.PathLike):
            items = [group]
        elif isinstance(group, Iterable):
            items = group
        else:
            raise CekuraValidationError("recording_roots", f"must be paths, got {type(group).__name__}")
        for item in items:
            if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
                raise CekuraValidationError("recording_roots", f"{show(item)} is not a directory path")
            root = os.path.realpath(os.fspath(item))
            if root not in roots:
                roots.append(root)
    return tuple(roots)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _local_path(source: Any) -> str | None:
    """The local file a source names (a path, ``file://`` text, a local ``ObjectStoragePath``), else ``None``."""
    if isinstance(source, str):
        if source.startswith("file://"):
            from urllib.parse import unquote, urlsplit

            parts = urlsplit(source)
            if parts.netloc not in ("", "localhost"):
                return None
            return unquote(parts.path)
        return None if "://" in source else source
    protocol = getattr(source, "protocol", None)
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else None
    if protocol is not None:  # an ObjectStoragePath (os.PathLike too on Airflow 2.11-3.1)
        return str(getattr(source, "path", "")) if protocol in _LOCAL_PROTOCOLS else None
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    return None


def allowed_local_recording(path: str, roots: Sequence[str], call_id: str | None = None) -> str:
    """The resolved ``path`` of a local recording, if it may leave the machine; else a validation error.

    The rule: the path is resolved (symlinks and ``..``), must lie under one of ``roots`` (already resolved,
    see :func:`recording_roots`), never under ``/proc``, ``/sys`` or ``/dev``, and name a readable regular file.
    """
    if not path:
        raise _fail("voice_recording", "is an empty path", call_id)
    real = os.path.realpath(path)
    if any(_under(real, never) for never in NEVER_RECORDING_ROOTS):
        raise _fail("voice_recording", f"{show(path)} is under /proc, /sys or /dev: never uploaded", call_id)
    if not any(_under(real, root) for root in roots):
        allowed = ", ".join(roots) if roots else "none"
        raise _fail(
            "voice_recording",
            f"{show(path)} is not under an allowed recording root ({allowed}); local recordings are read only "
            "from the DAG folder, the DAG's template_searchpath and the roots given by recording_roots= "
            "or the connection's recording_roots extra",
            call_id,
        )
    try:
        info = os.stat(real)
    except OSError:
        raise _fail("voice_recording", f"{show(path)} is not a readable file", call_id) from None
    if not stat.S_ISREG(info.st_mode):
        raise _fail("voice_recording", f"{show(path)} is not a regular file", call_id)
    if not os.access(real, os.R_OK):
        raise _fail("voice_recording", f"{show(path)} is not a readable file", call_id)
    return real


def _recording_name(source: Any) -> str:
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return os.path.basename(name) or "recording"
    local = _local_path(source)
    return (os.path.basename(local) or "recording") if local is not None else "recording"


def _remote(source: Any) -> Any:
    """A remote URL (s3://, gs://, ...) as an ``ObjectStoragePath``; anything else unchanged."""
    if isinstance(source, str) and "://" in source and _local_path(source) is None:
        from airflow_provider_cekura.version_compat import ObjectStoragePath

        return ObjectStoragePath(source)
    return source


def check_recording(source: RecordingSource, call_id: str | None = None, roots: Sequence[str] = ()) -> None:
    """Fail before any request if ``source`` is not a readable recording the DAG author allowed.

    A local path (a ``str``/``os.PathLike``, ``file://`` text or a ``file://`` ``ObjectStoragePath``) follows
    :func:`allowed_local_recording` with ``roots``; a remote ``ObjectStoragePath`` (s3://, gs://, ...) must be a
    file; an open binary file object is the DAG code's own choice and is only checked to be open.
    """
    if source is None:
        return
    if hasattr(source, "read"):
        if getattr(source, "closed", False):
            raise _fail("voice_recording", "file object is closed", call_id)
        return
    local = _local_path(source)
    if local is not None:
        allowed_local_recording(local, roots, call_id)
        return
    source = _remote(source)
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


def _open_local(real: str, call_id: str | None) -> IO[bytes]:
    """Open a checked local recording without following a symlink swapped in since, and re-check it is regular."""
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _fail("voice_recording", f"{show(real)} is not a regular file", call_id)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def open_recording(
    source: RecordingSource, call_id: str | None = None, roots: Sequence[str] = ()
) -> Iterator[tuple[str, IO[bytes]]]:
    """Open a recording for streaming upload: yields ``(filename, binary stream)``; never reads it whole.

    The same rule as :func:`check_recording` applies (checked again here, at the moment of opening).
    """
    check_recording(source, call_id, roots)
    if hasattr(source, "read"):
        yield _recording_name(source), source
        return
    local = _local_path(source)
    if local is not None:
        with _open_local(allowed_local_recording(local, roots, call_id), call_id) as stream:
            yield _recording_name(source), stream
        return
    with _remote(source).open("rb") as stream:
        yield _recording_name(source), stream


def validate_call(call: Any, roots: Sequence[str] = ()) -> tuple[dict[str, Any], RecordingSource | None]:
    """One call (observe fields plus an optional ``voice_recording``) → ``(payload, recording or None)``.

    The one validation every door runs (:meth:`CekuraHook.observe`, :meth:`CekuraHook.observe_many`, the
    observe operator): :func:`build_observe_payload`, then :func:`check_recording` with ``roots``.

    :raises CekuraValidationError: naming the field and the call_id.
    """
    if not isinstance(call, Mapping):
        raise CekuraValidationError("call", f"must be a mapping of observe fields, got {type(call).__name__}")
    payload = build_observe_payload({k: v for k, v in call.items() if k != "voice_recording"})
    recording = call.get("voice_recording")
    check_recording(recording, payload["call_id"], roots)
    return payload, recording


def validate_calls(calls: Any, roots: Sequence[str] = ()) -> list[tuple[dict[str, Any], RecordingSource | None]]:
    """A batch (see :func:`load_calls`) through :func:`validate_call`; duplicate call_ids are an error too.

    The first bad call raises before anything is sent.
    """
    batch = [validate_call(call, roots) for call in load_calls(calls)]
    seen: set[str] = set()
    for payload, _ in batch:
        if payload["call_id"] in seen:
            raise _fail("call_id", "appears more than once in the batch", payload["call_id"])
        seen.add(payload["call_id"])
    return batch
