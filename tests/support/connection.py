"""The ``cekura_default`` connection for tests: a host (the emulator or a test server) with fast retries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice


def use_connection(monkeypatch: pytest.MonkeyPatch, host: str, password: str = TEST_API_KEY, **extra: Any) -> None:
    """Point ``cekura_default`` at ``host`` with fast retries plus ``extra`` (connection extras).

    :param monkeypatch: sets ``AIRFLOW_CONN_CEKURA_DEFAULT`` for the test only.
    :param host: the base URL, e.g. ``emulator.base_url``.
    :param password: the API key (the distinctive test key unless given).
    :param extra: more connection extras; they override the fast retry settings.
    """
    options = {"backoff_base": 0.01, "backoff_max": 0.05, "retry_after_max": 0.2, "read_timeout": 5, **extra}
    conn = {"conn_type": "cekura", "host": host, "password": password, "extra": options}
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
