"""Input coercion: the one rule for each kind of value a user (or a rendered template) hands the provider.

Every entry point (hook, operators, sensor, trigger, transfers, payloads) calls these functions, so a value
gets the same verdict whichever door it comes through, and always before any request. The rules:

**Ids** (call log ids, agent ids, project ids, metric ids): :func:`parse_id`.

- An ``int`` (or any integral type with ``__index__``, such as NumPy's) or a string of ASCII digits
  (``0``-``9``; surrounding whitespace is ignored; leading zeros are allowed).
- A ``float`` is never an id (``5.7`` is refused, and so is ``5.0``: a float id has been computed, and
  it may already have been rounded); a ``bool`` is never an id.
- Other digits are refused: ``"٣"`` (Arabic-Indic three) or ``"³"`` are not ``3``.
- An id is at least 1 and at most :data:`MAX_ID` (``2**63 - 1``, the API's 64-bit integer):
  ``0``, ``"0"``, ``-3`` and ``2**70`` are refused.
- An empty (or blank) string is refused.

**Lists of ids** (:func:`parse_ids`): an id, a list/tuple/set of ids, a comma string (``"3, 1"``; empty
parts skipped), JSON text of a list (``"[3, 1]"``: a rendered XCom) or a mapping/JSON object whose keys
are ids (the sensor's result). Each item follows the id rule; duplicates are dropped, order kept. A
blank string or ``"None"`` (what a template renders for nothing) is the empty list: what an empty list
means is the caller's decision (nothing to do, or an error).

**Agent or assistant** (:func:`agent_or_assistant`): exactly one of an agent id or an assistant id;
``None`` or a blank string means "not given".

**Timestamps**: :func:`parse_timestamp` (datetime, date or ISO 8601 text; naive means UTC) and
:func:`format_timestamp` (ISO 8601, ``Z`` for UTC).

**Durations**: :func:`to_seconds` (seconds as int/float or a ``timedelta``; finite, positive).

**Counts** (page sizes, requests in flight, rows per file): :func:`positive_int` (an ``int`` of at least 1;
never a bool, a float or text).

**JSON**: :func:`json_or_value` (JSON text parsed, other values kept) and :func:`check_json_depth`; JSON
nested deeper than :data:`MAX_JSON_DEPTH` is refused with a
:class:`~airflow_provider_cekura.exceptions.CekuraValidationError`, never a bare ``RecursionError``.

**Templates**: :func:`is_template`, "does this still hold Jinja" (``{{``, ``{%`` or ``{#``, at any depth
of a list or dict).

Nothing here touches the network or imports Airflow.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from airflow_provider_cekura.exceptions import CekuraAgentError, CekuraValidationError

MAX_ID = 2**63 - 1
"""The largest id the API stores (a signed 64-bit integer)."""

IDS_PER_REQUEST = 100
"""Ids per request: the API's limit for ``rerun_evaluation`` and the size of one ``call_ids=`` list request."""

DEFAULT_MAX_CONCURRENCY = 8
"""List requests in flight at once by default (hook walks, both transfers): enough to keep 100-300 ms round
trips busy, few enough for a plan's limit. Here, not in ``hooks/_pagination``, so that a DAG file importing a
transfer does not import the page walker (threads, URL handling) at parse time."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of JSON a user may give (``call_log_ids``, ``filters_v2``, ``calls``, ``checks``...)."""

_MAX_ID_DIGITS = len(str(MAX_ID))
_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def show(value: Any, limit: int = 80) -> str:
    """``repr()`` for error messages: short, and safe for any value (a 5000-digit int cannot be repr'd)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # NumPy's bool has __index__


# ---------------------------------------------------------------------------------------------- ids


def parse_id(value: Any, field: str = "id", *, what: str = "id", call_id: str | None = None) -> int:
    """One id as an ``int``, by the rule of this module (see the module docstring).

    :param value: the id as given.
    :param field: the argument named in the error.
    :param what: what the id is, for the error message (``"call log id"``, ``"agent id"``...).
    :param call_id: the call the value belongs to, named in the error.
    :raises CekuraValidationError: when ``value`` is not an id.
    """
    if type(value) is int and 1 <= value <= MAX_ID:  # the common case, first
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise CekuraValidationError(field, f"must be a {what}, got an empty string", call_id=call_id)
        if not (text.isascii() and text.isdigit()):
            raise CekuraValidationError(
                field, f"{show(value)} is not a {what}: ids are written with the digits 0-9 only", call_id=call_id
            )
        digits = text.lstrip("0") or "0"
        number = int(digits) if len(digits) <= _MAX_ID_DIGITS else MAX_ID + 1
    elif _is_bool(value) or isinstance(value, float):
        raise CekuraValidationError(
            field, f"{show(value)} is not a {what} (a {type(value).__name__} is never an id)", call_id=call_id
        )
    else:
        try:
            number = operator.index(value)
        except TypeError:
            raise CekuraValidationError(
                field, f"must be a {what} (an integer), got {type(value).__name__}", call_id=call_id
            ) from None
    if not 1 <= number <= MAX_ID:
        raise CekuraValidationError(field, f"{show(value)} is not a {what}: ids run from 1 to 2**63-1", call_id=call_id)
    return number


def parse_optional_id(value: Any, field: str, *, what: str = "id") -> int | None:
    """:func:`parse_id`, with ``None`` (not given) passed through as ``None``."""
    return None if value is None else parse_id(value, field, what=what)


def parse_ids(value: Any, field: str = "call_log_ids", *, what: str = "call log id") -> list[int]:
    """A list of ids from any accepted form (see the module docstring); duplicates dropped, order kept.

    :raises CekuraValidationError: naming ``field`` and the first item that is not an id.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):  # iterable, but of byte values: never ids
        raise CekuraValidationError(field, f"must be {what}s, got {type(value).__name__}")
    if isinstance(value, str):
        text = value.strip()
        if not text or text == "None":
            return []
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                raise CekuraValidationError(field, f"is not a JSON list or object: {show(text)}") from None
            check_json_depth(value, field)
        else:
            value = [part for part in text.split(",") if part.strip()]
    if isinstance(value, Mapping):
        value = list(value)
    elif isinstance(value, (str, int, float)) or not isinstance(value, Iterable):
        if not isinstance(value, (str, int, float)) and not hasattr(value, "__index__"):
            raise CekuraValidationError(field, f"must be {what}s, got {type(value).__name__}")
        value = [value]
    ids = [parse_id(item, field, what=what) for item in value]
    return list(dict.fromkeys(ids))


def agent_or_assistant(
    agent_id: Any,
    assistant_id: Any,
    *,
    agent_field: str = "agent_id",
    call_id: str | None = None,
    presence_only: bool = False,
) -> dict[str, Any]:
    """Exactly one of an agent id or an assistant id: ``{agent_field: int}`` or ``{"assistant_id": str}``.

    ``None`` or a blank string means "not given" (a template rendered nothing).

    :param agent_field: the name the agent id has at this door (``agent_id``, or ``agent`` in a payload).
    :param call_id: the call the values belong to, named in the error.
    :param presence_only: only check that exactly one of the two is not ``None`` (an operator's
        ``__init__``: the values may still be templates) and return ``{}``.
    :raises CekuraAgentError: (a :class:`CekuraValidationError`) when both or neither are given, or the
        one given is not valid.
    """
    if presence_only:
        if (agent_id is None) == (assistant_id is None):
            raise CekuraAgentError(agent_field, f"give exactly one of {agent_field} or assistant_id", call_id=call_id)
        return {}
    agent = None if agent_id is None or (isinstance(agent_id, str) and not agent_id.strip()) else agent_id
    assistant = (
        None if assistant_id is None or (isinstance(assistant_id, str) and not assistant_id.strip()) else assistant_id
    )
    if (agent is None) == (assistant is None):
        raise CekuraAgentError(
            agent_field, f"give exactly one of {agent_field} (Cekura agent id) or assistant_id", call_id=call_id
        )
    if agent is not None:
        try:
            return {agent_field: parse_id(agent, agent_field, what="agent id", call_id=call_id)}
        except CekuraValidationError as err:
            raise CekuraAgentError(agent_field, err.reason, call_id=call_id) from None
    if not isinstance(assistant, str):
        raise CekuraAgentError(
            "assistant_id", f"must be a non-empty string, got {type(assistant).__name__}", call_id=call_id
        )
    return {"assistant_id": assistant.strip()}


def positive_int(value: Any, field: str) -> int:
    """A count: an ``int`` of at least 1 (a bool, a float or text is refused).

    :param value: the count as given.
    :param field: the argument named in the error.
    :raises CekuraValidationError: when ``value`` is not a positive int.
    """
    if _is_bool(value) or not isinstance(value, int) or value < 1:
        raise CekuraValidationError(field, f"must be a positive integer, got {show(value)}")
    return value


# ---------------------------------------------------------------------------------------------- time


def parse_timestamp(value: Any, field: str = "timestamp", call_id: str | None = None) -> datetime | None:
    """The one timestamp parser: a datetime or date (naive means UTC) or ISO 8601 text -> an aware datetime.

    ``None``, blank text and the text ``"None"`` (what a template renders for a missing value) give ``None``.

    :raises CekuraValidationError: when ``value`` is not a timestamp.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or text == "None":
            return None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise CekuraValidationError(
                field, f"is not an ISO 8601 date-time: {show(value)}", call_id=call_id
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        raise CekuraValidationError(
            field, f"must be a datetime or ISO 8601 string, got {type(value).__name__}", call_id=call_id
        )
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def require_timestamp(value: Any, field: str) -> datetime:
    """:func:`parse_timestamp` for a value that must be given."""
    parsed = parse_timestamp(value, field)
    if parsed is None:
        raise CekuraValidationError(field, "must not be empty")
    return parsed


def format_timestamp(value: datetime, *, utc: bool = True) -> str:
    """ISO 8601 text: converted to UTC with a ``Z`` (``utc=True``, what the API's filters get), or with the
    value's own offset (``utc=False``; still ``Z`` when that offset is zero). A naive datetime is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if utc:
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def to_seconds(value: Any, field: str, *, allow_zero: bool = False) -> float:
    """Seconds as a float from a number of seconds or a ``timedelta``: finite and positive (or zero if allowed).

    :raises CekuraValidationError: for ``nan``, infinities, negatives, bools, text and other types.
    """
    number = value.total_seconds() if isinstance(value, timedelta) else value
    if _is_bool(number) or not isinstance(number, (int, float)):
        raise CekuraValidationError(field, f"must be a number of seconds or a timedelta, got {show(value)}")
    try:
        seconds = float(number)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise CekuraValidationError(field, f"must be {kind} finite number of seconds, got {show(value)}")
    return seconds


# ---------------------------------------------------------------------------------------------- JSON


def check_json_depth(value: Any, field: str, limit: int = MAX_JSON_DEPTH, call_id: str | None = None) -> None:
    """Refuse lists/dicts nested deeper than ``limit`` (iteratively: never a ``RecursionError``)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise CekuraValidationError(field, f"is nested deeper than {limit} levels", call_id=call_id)
        stack.extend((child, depth + 1) for child in children)


def loads(text: str | bytes | bytearray, field: str, call_id: str | None = None) -> Any:
    """``json.loads`` with the error a user can act on, and at most :data:`MAX_JSON_DEPTH` levels.

    :raises CekuraValidationError: on invalid JSON, a number too long for ``int()``, or too deep nesting.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise CekuraValidationError(field, f"is nested deeper than {MAX_JSON_DEPTH} levels", call_id=call_id) from None
    except ValueError as err:  # also a number too long for int()
        raise CekuraValidationError(
            field, f"is not valid JSON ({getattr(err, 'msg', type(err).__name__)})", call_id=call_id
        ) from None
    check_json_depth(value, field, call_id=call_id)
    return value


def json_or_value(value: Any, field: str, call_id: str | None = None) -> Any:
    """JSON text parsed (by :func:`loads`); any other value returned as it is, its depth checked."""
    if isinstance(value, (str, bytes, bytearray)):
        return loads(value, field, call_id)
    check_json_depth(value, field, call_id=call_id)
    return value


# ---------------------------------------------------------------------------------------------- templates


def is_template(value: Any) -> bool:
    """Whether ``value`` (a string, or a list/tuple/dict holding strings) still holds Jinja markup."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any(marker in item for marker in _TEMPLATE_MARKERS):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


__all__ = [
    "IDS_PER_REQUEST",
    "MAX_ID",
    "MAX_JSON_DEPTH",
    "agent_or_assistant",
    "check_json_depth",
    "format_timestamp",
    "is_template",
    "json_or_value",
    "loads",
    "parse_id",
    "parse_ids",
    "parse_optional_id",
    "parse_timestamp",
    "positive_int",
    "require_timestamp",
    "show",
    "to_seconds",
]
