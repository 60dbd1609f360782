"""The emulator's call logs: creation, asynchronous evaluation, the response shapes, state files.

Every public method takes the emulator's lock (a re-entrant one, shared with the rest of the emulator), so
the request handler and tests read and change call logs only through them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, Protocol

from airflow_provider_cekura.testing.emulator._common import _DETAIL_STRINGS, _digest, _iso, _now, _parse_time

Record = dict[str, Any]


class StoreSettings(Protocol):
    """The emulator's settings the store reads at the moment it uses them (tests change them mid-run)."""

    evaluation_delay: float
    evaluation_failure_rate: float
    project_id: int
    response_style: str
    metric_catalog: list[dict[str, Any]]
    agents: dict[int, str]


class CallLogStore:
    """The stored call logs, keyed by id; the emulator's one source of call log data.

    :param settings: where evaluation delay, failure rate, project, response style, metric catalog and
        agent names are read from (the :class:`~airflow_provider_cekura.testing.CekuraEmulator`).
    :param lock: the emulator's lock; every public method holds it.
    """

    def __init__(self, settings: StoreSettings, lock: threading.RLock) -> None:
        self.settings = settings
        self.lock = lock
        self.recordings: dict[int, dict[str, Any]] = {}
        self._records: dict[int, Record] = {}
        self._next_id = 1000

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str) -> None:
        """Write every call log to a JSON file (pending evaluations keep their remaining delay)."""
        now = time.monotonic()
        with self.lock:
            records = []
            for record in self._records.values():
                saved = dict(record)
                saved["_due"] = None if record["_due"] is None else max(record["_due"] - now, 0.0)
                records.append(saved)
            state = {"next_id": self._next_id, "records": records}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def load_state(self, path: str) -> int:
        """Load call logs saved by :meth:`save_state`; returns how many were loaded."""
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        now = time.monotonic()
        with self.lock:
            self._next_id = max(self._next_id, int(state["next_id"]))
            for record in state["records"]:
                record["_due"] = None if record["_due"] is None else now + float(record["_due"])
                self._records[int(record["id"])] = record
        return len(state["records"])

    # ------------------------------------------------------------------ reading and changing call logs

    def call_logs(self) -> list[dict[str, Any]]:
        """Every stored call log (list shape), oldest first."""
        with self.lock:
            return [self._list_view(r) for _, r in sorted(self._records.items())]

    def record(self, call_log_id: int) -> dict[str, Any] | None:
        """One call log in the list shape (its evaluation finished if due), or ``None`` when unknown.

        :param call_log_id: the call log's id.
        """
        with self.lock:
            record = self._records.get(call_log_id)
            return None if record is None else self._list_view(record)

    def detail(self, call_log_id: int) -> dict[str, Any] | None:
        """One call log in the detail shape, or ``None`` when unknown.

        :param call_log_id: the call log's id.
        """
        with self.lock:
            record = self._records.get(call_log_id)
            return None if record is None else self._detail_view(record)

    def record_count(self) -> int:
        """How many call logs are stored (without finishing any evaluation)."""
        with self.lock:
            return len(self._records)

    def pending_evaluations(self) -> int:
        """How many call logs have an evaluation not yet finished (due or not: not read since it became due)."""
        with self.lock:
            return sum(1 for r in self._records.values() if r["_due"] is not None)

    def call_ids(self) -> list[str]:
        """The distinct ``call_id`` values stored, sorted (without finishing any evaluation)."""
        with self.lock:
            return sorted({r["call_id"] for r in self._records.values()})

    def duplicates(self) -> dict[str, int]:
        """``{call_id: count}`` for call_ids stored more than once (what a client must never cause)."""
        counts: dict[str, int] = {}
        with self.lock:
            for record in self._records.values():
                counts[record["call_id"]] = counts.get(record["call_id"], 0) + 1
        return {k: v for k, v in counts.items() if v > 1}

    def finish_evaluations(self) -> None:
        """Make every pending evaluation due now."""
        with self.lock:
            for record in self._records.values():
                record["_due"] = 0.0

    def set_evaluation_due(self, call_log_id: int, when: float | None) -> None:
        """Set when one call log's evaluation finishes.

        :param call_log_id: the call log's id (``KeyError`` when unknown).
        :param when: a :func:`time.monotonic` time (``0.0``: now), or ``None`` for no pending evaluation.
        """
        with self.lock:
            self._records[call_log_id]["_due"] = when

    def add(self, calls: Iterable[dict[str, Any]], *, evaluated: bool = True) -> list[int]:
        """Store calls directly (no HTTP, no validation: what :meth:`CekuraEmulator.seed
        <airflow_provider_cekura.testing.CekuraEmulator.seed>` creates); returns their ids, in order.

        :param calls: observe bodies (``call_id``, ``agent``, ``transcript_json``, ``timestamp``...).
        :param evaluated: their evaluation is due at once (else they stay ``evaluating``).
        """
        with self.lock:
            return [self._create(call, due=0.0 if evaluated else None)["id"] for call in calls]

    def observe(self, call: dict[str, Any], recording: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store an observed call (validated by the caller); returns it in the list shape.

        :param call: the observe request's body.
        :param recording: an uploaded recording's name, size and digest, kept in :attr:`recordings`.
        """
        with self.lock:
            record = self._create(call)
            if recording:
                self.recordings[record["id"]] = recording
                record["voice_recording_url"] = f"https://storage.cekura.test/recordings/{record['id']}.bin"
            return self._list_view(record)

    def rerun(self, ids: list[int], agent_id: int | None) -> list[dict[str, Any]]:
        """Start a new evaluation round for each call log; returns them in the rerun response's shape.

        :param ids: the call log ids.
        :param agent_id: when set, every call log must belong to this agent.
        :raises ValueError: an id is unknown or belongs to another agent (nothing changed for the former;
            the call logs before the first of another agent are rerun, as the server does).
        """
        with self.lock:
            missing = [i for i in ids if i not in self._records]
            if missing:
                raise ValueError(f"Unknown call log id(s): {missing[:10]}")
            out = []
            for i in ids:
                record = self._records[i]
                if agent_id is not None and record["agent"] != agent_id:
                    raise ValueError(f"Call log {i} does not belong to agent {agent_id}.")
                record.update(status="evaluating", success=None, metrics=[], error_message=None,
                              _round=record["_round"] + 1, _due=time.monotonic() + self.settings.evaluation_delay,
                              updated_at=_iso(_now()))  # fmt: skip
                out.append(self._evaluated_view(record))
            return out

    def page(
        self,
        record_filters: Iterable[Callable[[Record], bool]],
        view_filters: Iterable[Callable[[dict[str, Any]], bool]],
        ids: set[int] | None,
        first: int,
        size: int,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The call logs matching every filter, newest id first: how many, and ``size`` of them from ``first``.

        :param record_filters: tests on the stored call log (its raw fields), applied first.
        :param view_filters: tests on its list shape (``filters_v2``), applied to those that passed.
        :param ids: only these call log ids (looked up instead of scanning every call log).
        :param first: index of the first call log returned.
        :param size: how many to return at most.
        """
        predicates = [*record_filters, *(lambda r, f=f: f(self._list_view(r)) for f in view_filters)]
        with self.lock:
            if ids is not None:  # look the ids up instead of scanning every record (same order: newest id first)
                candidates = [self._records[i] for i in sorted(ids, reverse=True) if i in self._records]
            else:
                candidates = [self._records[i] for i in sorted(self._records, reverse=True)]
            matching = [r for r in candidates if all(p(r) for p in predicates)]
            return len(matching), [self._list_view(r) for r in matching[first : first + size]]

    # ------------------------------------------------------------------ internals (the caller holds the lock)

    def _new_id(self, call_id: str) -> int:
        self._next_id += 1 + _digest(call_id) % 3  # ids are integers but not contiguous
        return self._next_id

    def _create(self, call: dict[str, Any], due: float | None = None) -> dict[str, Any]:
        now = _iso(_now())
        new_id = self._new_id(call["call_id"])
        agent = call.get("agent")
        assistant_id = call.get("assistant_id")
        if agent is None:
            agent = 900 + _digest(assistant_id) % 100
        transcript = call.get("transcript_json")
        record = {
            "id": new_id,
            "call_id": call["call_id"],
            "agent": int(agent),
            "agent_name": self.settings.agents.get(int(agent), f"Agent {agent}"),
            "assistant_id": assistant_id,
            "project": self.settings.project_id,
            "status": "evaluating",
            "success": None,
            "is_reviewed": False,
            "metrics": [],
            "critical_categories": [],
            "transcript_type": call.get("transcript_type", "cekura"),
            "transcript_object": [t for t in transcript if isinstance(t, dict)] if isinstance(transcript, list) else [],
            "transcript": _render_transcript(transcript),
            "voice_recording_url": call.get("voice_recording_url") or "",
            "call_ended_reason": call.get("call_ended_reason") or "",
            "customer_number": call.get("customer_number") or "",
            "metadata": call.get("metadata") or {},
            "dynamic_variables": call.get("dynamic_variables") or {},
            "feedback": call.get("feedback") or "",
            "trace_id": call.get("trace_id") or "",
            "timestamp": _iso(_parse_time(call.get("timestamp")) or _now()) if call.get("timestamp") else now,
            "duration": _duration(transcript),
            "error_message": None,
            "topic": "",
            "dropoff_point": "",
            "created_at": now,
            "updated_at": now,
            "_metric_ids": [int(x) for x in str(call.get("metric_ids") or "").split(",") if x.strip()],
            "_round": 0,
            "_due": time.monotonic() + self.settings.evaluation_delay if due is None else due,
        }
        self._records[new_id] = record
        return record

    def _evaluate_if_due(self, record: dict[str, Any]) -> None:
        if record["_due"] is None or time.monotonic() < record["_due"]:
            return
        due, record["_due"] = record["_due"], None
        seed = _digest(record["call_id"], record["_round"])
        # When the evaluation finished (its due time, not when someone first looked), and always after the
        # previous change: a client that watches updated_at sees each evaluation end exactly once.
        previous = _parse_time(record["updated_at"]) or _now()
        finished = _now() - timedelta(seconds=max(0.0, time.monotonic() - due))
        record["updated_at"] = _iso(max(finished, previous + timedelta(microseconds=1)))
        failure_roll = _digest(record["call_id"], "failure") % 10_000 / 10_000
        if failure_roll < self.settings.evaluation_failure_rate:
            record.update(
                status="failure",
                success=None,
                metrics=[],
                error_message="Evaluation failed: the transcript could not be processed",
            )
            return
        catalog = self.settings.metric_catalog
        if record["_metric_ids"]:
            known = {m["id"]: m for m in catalog}
            catalog = [known.get(i, {"id": i, "name": f"Metric {i}", "type": "rating"}) for i in record["_metric_ids"]]
        metrics = []
        for index, metric in enumerate(catalog):
            roll = _digest(seed, metric["id"], index)
            # None: the key does not apply to the metric's type (see _metric_view for how it is sent).
            entry = {
                "id": metric["id"],
                "name": metric["name"],
                "type": metric["type"],
                "score": None,
                "enum": None,
                "value": None,
                "explanation": [f"Assessed on round {record['_round']}."],
            }
            if metric["type"] == "enum":
                options = metric.get("enum") or ["yes", "no"]
                entry["enum"] = entry["value"] = options[roll % len(options)]
            elif metric["type"] == "binary":
                entry["score"] = float(roll % 4 != 0)
                entry["value"] = "true" if entry["score"] else "false"
            else:
                entry["score"] = round(1 + (roll % 400) / 100, 2)
            metrics.append(entry)
        success = seed % 5 != 0
        record.update(
            status="success" if success else "failure",
            success=success,
            metrics=metrics,
            error_message=None,
            topic=["billing", "appointment", "support", "sales"][seed % 4],
            critical_categories=[]
            if success
            else [
                {
                    "category_id": 7,
                    "category": "Unresolved request",
                    "deviation": 1,
                    "wrongly_marked": False,
                    "feedback": "",
                    "priority": "critical",
                }
            ],
        )

    def _list_view(self, record: dict[str, Any]) -> dict[str, Any]:
        self._evaluate_if_due(record)
        view = {k: v for k, v in record.items() if not k.startswith("_")}
        loose = self.settings.response_style == "loose"
        view["metrics"] = [_metric_view(m, loose) for m in view["metrics"]]
        if loose:
            for name in _DETAIL_STRINGS:
                view[name] = view[name] or None
            # The list schema types transcript_object as a string (its example is JSON); metadata as text too.
            for name in ("transcript_object", "metadata", "dynamic_variables"):
                view[name] = json.dumps(view[name])
        elif view["assistant_id"] is None:
            del view["assistant_id"]  # not in the list schema; absent rather than null
        return view

    def _typed_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The detail and rerun schemas: ``agent_id`` as text, ``transcript_object`` a JSON value."""
        view = self._list_view(record)
        view["agent_id"] = str(view["agent"])
        if self.settings.response_style == "loose":
            view["transcript_object"] = json.loads(view["transcript_object"])
        return view

    def _detail_view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = self._typed_view(record)
        if self.settings.response_style == "documented":
            # The detail schema types these as strings: JSON text, as the API may send them.
            view["metrics"] = json.dumps(view["metrics"])
            view["critical_categories"] = json.dumps(view["critical_categories"])
        return view

    def _evaluated_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The rerun response's shape (``CallLogEvaluated``): metrics under ``evaluation``."""
        view = self._typed_view(record)
        view["evaluation"] = {"metrics": view["metrics"]}
        return view


def _metric_view(metric: dict[str, Any], loose: bool) -> dict[str, Any]:
    """A metric as sent: the list schema requires score (number), enum and value (strings) on every metric,
    so a key that does not apply to its type is sent as 0 / "" ("loose": null)."""
    if loose:
        return dict(metric)
    defaults = {"score": 0.0, "enum": "", "value": ""}
    return {k: defaults[k] if v is None and k in defaults else v for k, v in metric.items()}


def _render_transcript(transcript: Any) -> str:
    if not isinstance(transcript, list):
        return ""
    lines = []
    for turn in transcript:
        if isinstance(turn, dict):
            start = turn.get("start_time") or 0
            start = start if isinstance(start, (int, float)) else 0
            lines.append(f"[{int(start) // 60:02d}:{int(start) % 60:02d}] {turn.get('role')}: {turn.get('content')}")
    return "\n".join(lines)


def _duration(transcript: Any) -> str:
    seconds = 0
    if isinstance(transcript, list):
        ends = [t.get("end_time") for t in transcript if isinstance(t, dict)]
        numeric = [e for e in ends if isinstance(e, (int, float))]
        seconds = int(max(numeric, default=0))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
