"""API paths the tests count the emulator's requests on (``emulator.count_requests(method, path)`` matches a part)."""

from __future__ import annotations

LIST_PATH = "/call-logs/"
"""The call log list endpoint: every poll of a wait for evaluations, every fetch of a gate."""

RERUN_PATH = "/rerun_evaluation/"
"""The endpoint that starts a call log's evaluation again."""
