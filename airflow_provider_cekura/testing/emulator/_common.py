"""Constants, time and id helpers and the request-log entry shared by the emulator's modules."""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TRANSCRIPT_TYPES = {"cekura", "vocera", "vapi", "retell", "deepgram", "pipecat", "livekit", "elevenlabs", "none-mono"}
REDACT_FIELDS = {
    "person_name", "age", "phone_number", "email_address", "date", "time", "location", "origin",
    "gender_sexuality", "physical_attribute", "occupation", "username", "password", "ip_address", "url",
    "filename", "event", "vehicle_id", "dob", "healthcare_number", "medical_professional", "credit_card",
    "account_number", "bank_account", "money", "ssn", "passport_number", "driver_license", "numerical_pii",
}  # fmt: skip
FILTER_OPS = {"eq", "neq", "gt", "gte", "lt", "lte", "contains", "startswith", "in", "isnull"}

DEFAULT_METRICS: list[dict[str, Any]] = [
    {"id": 101, "name": "Customer Satisfaction", "type": "rating"},
    {"id": 102, "name": "Instruction Following", "type": "binary"},
    {"id": 103, "name": "Call Outcome", "type": "enum", "enum": ["resolved", "escalated", "abandoned"]},
]

OBSERVE = "/observability/v1/observe/"
CALL_LOGS = "/observability/v1/call-logs/"
RERUN = "/observability/v1/call-logs/rerun_evaluation/"

RESPONSE_STYLES = ("documented", "loose")

# Fields the documents type as (non-nullable) strings: "" when the call has no value.
_LIST_STRINGS = ("call_ended_reason", "customer_number", "feedback", "trace_id", "topic", "dropoff_point")
_DETAIL_STRINGS = (*_LIST_STRINGS, "voice_recording_url", "assistant_id")


def _route(path: str) -> str:
    """The documented path for ``path``: Cekura's router serves its routes with and without the trailing slash."""
    return path if path.endswith("/") else path + "/"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return _parse_text_time(value)


@functools.lru_cache(maxsize=1 << 18)
def _parse_text_time(value: str) -> datetime | None:
    """Parsed once per distinct text: a list request filters every stored call log by its timestamp."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int | str
    fault: str | None = None
    at: float = field(default_factory=time.monotonic)
    headers: dict[str, str] | None = None
    body: bytes | None = None
