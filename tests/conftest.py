"""Shared test fixtures: one Airflow home and metadata DB per session, the emulator, Postgres.

Environment is set before anything imports Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk-cekura-TEST-9f3b7c1d-DO-NOT-LEAK"
"""A distinctive key: tests search logs, XComs and reprs for it."""

_AIRFLOW_HOME = Path(os.environ.get("CEKURA_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="cekura-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the session's Airflow metadata DB once (``airflow db migrate``)."""
    marker = _AIRFLOW_HOME / ".migrated"
    if not marker.exists():
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            capture_output=True,
            env=os.environ.copy(),
        )
        marker.touch()
    return _AIRFLOW_HOME


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A running Cekura emulator, with ``cekura_default`` pointing at it (env var connection)."""
    from airflow_provider_cekura.testing import CekuraEmulator

    emu = CekuraEmulator(api_key=TEST_API_KEY, evaluation_delay=0.3)
    emu.start()
    conn = {
        "conn_type": "cekura",
        "host": emu.base_url,
        "password": TEST_API_KEY,
        "extra": {"backoff_base": 0.01, "backoff_max": 0.05, "retry_after_max": 0.2, "read_timeout": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def postgres_uri() -> str:
    """URI of the real Postgres started by ``make test`` (scripts/with_postgres.sh)."""
    uri = os.environ.get("CEKURA_TEST_POSTGRES_URI")
    if not uri:
        if os.environ.get("CEKURA_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail("CEKURA_TEST_POSTGRES_URI is not set: run the suite with `make test`")
        pytest.skip("no Postgres: run with `make test` (or scripts/with_postgres.sh pytest ...)")
    return uri
