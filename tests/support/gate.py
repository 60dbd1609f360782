"""The quality gate's data: call logs seeded for it, and what it should measure on them computed from the
emulator's own stored call logs (never by the code under test)."""

from __future__ import annotations

from statistics import mean
from typing import Any

CS, OUTCOME = "Customer Satisfaction", "Call Outcome"
"""A rating metric (scores) and a categorical one (values) of the emulator's catalog."""


def stats(emulator: Any, ids: list[int]) -> dict[str, Any]:
    """What the gate should measure on ``ids``, from the emulator's stored call logs.

    :param emulator: the emulator holding the call logs.
    :param ids: the call log ids measured (those not evaluated count in ``failed`` only).
    """
    by_id = {c["id"]: c for c in emulator.call_logs()}
    logs = [by_id[i] for i in ids]
    evaluated = [c for c in logs if c["metrics"]]

    def metric(c: dict[str, Any], name: str) -> dict[str, Any]:
        return next(m for m in c["metrics"] if m["name"] == name)

    scores = [metric(c, CS)["score"] for c in evaluated]
    outcomes = [metric(c, OUTCOME)["value"] for c in evaluated]
    return {
        "success_rate": sum(c["success"] is True for c in evaluated) / len(evaluated),
        "failed": sum(1 for c in logs if c["error_message"]),
        "evaluated": len(evaluated),
        "mean": mean(scores),
        "min": min(scores),
        "max": max(scores),
        "count": len(scores),
        "escalated": outcomes.count("escalated") / len(outcomes),
    }


def seed_gate_window(emulator: Any, window: dict[str, Any]) -> list[int]:
    """Seed the gate's 30 call logs (``call_id`` prefix ``gate``), evaluated with about 20% failed evaluations.

    Evaluations happen on the emulator's first sight of a call log, so they are listed once while the failure
    rate is 0.2; it is 0.0 again on return.

    :param emulator: the emulator to seed.
    :param window: ``emulator.seed`` arguments: ``start``, ``end`` and ``agents``.
    :return: their ids.
    """
    emulator.evaluation_failure_rate = 0.2
    ids = emulator.seed(30, call_id_prefix="gate", **window)
    emulator.call_logs()  # evaluations happen on first sight: with 20% failures
    emulator.evaluation_failure_rate = 0.0
    return ids
