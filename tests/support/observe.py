"""What the observe tests send and read back: a transcript, the stored call logs by ``call_id``, a DAG run's logs."""

from __future__ import annotations

from typing import Any

TRANSCRIPT = [
    {"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0, "end_time": 1.5},
    {"role": "Testing Agent", "content": "I need to move my appointment.", "start_time": 1.7, "end_time": 3.2},
]
"""A valid two-turn ``transcript_json``."""


def captured(capfd: Any, caplog: Any) -> str:
    """Everything the DAG run logged: task logs reach stdout or the logging capture depending on set-up order.

    Reading clears both captures, so that the next call returns only what was logged since.

    :param capfd: pytest's ``capfd`` fixture.
    :param caplog: pytest's ``caplog`` fixture.
    """
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    caplog.clear()
    return text


def by_call_id(emulator: Any) -> dict[str, dict[str, Any]]:
    """The emulator's stored call logs by their ``call_id``.

    :param emulator: the emulator whose call logs are read.
    """
    return {c["call_id"]: c for c in emulator.call_logs()}
