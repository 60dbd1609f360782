"""Shared test fixtures: one Airflow home and metadata DB per session, the emulator, Postgres, MariaDB.

Environment is set before anything imports Airflow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk-cekura-TEST-9f3b7c1d-DO-NOT-LEAK"
"""A distinctive key: tests search logs, XComs and reprs for it."""

if not os.environ.get("CEKURA_TEST_AIRFLOW_HOME"):
    # Exported so that a second import of this module (``from tests.conftest import ...``) and any
    # subprocess a test starts reuse the same Airflow home and metadata DB.
    os.environ["CEKURA_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cekura-airflow-")
_AIRFLOW_HOME = Path(os.environ["CEKURA_TEST_AIRFLOW_HOME"])
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
DAGS_DIR = _AIRFLOW_HOME / "dags"
DAGS_DIR.mkdir(parents=True, exist_ok=True)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
# The OpenLineage provider is a dev dependency (its facets are tested directly); no listener in DAG runs.
os.environ.setdefault("AIRFLOW__OPENLINEAGE__DISABLED", "True")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _fresh_rate_limiters() -> Iterator[None]:
    """Each test starts with no learned rate limit (the limiters are shared per process)."""
    from airflow_provider_cekura.hooks._rate_limit import reset_shared_limiters

    reset_shared_limiters()
    yield


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


def write_dag_file(source: str, name: str) -> Path:
    """Write a DAG file into the session's DAGs folder (``dag.test()`` reads DAGs from its bundle)."""
    path = DAGS_DIR / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def load_dag(path: Path, dag_id: str):
    """Import a DAG file and return the DAG ``dag_id`` defined in it."""
    spec = importlib.util.spec_from_file_location(f"_cekura_test_dag_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.providers.common.compat.sdk import DAG

    dags = [v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id]
    assert dags, f"no DAG {dag_id!r} in {path}"
    return dags[0]


@pytest.fixture
def run_dag(airflow_db: Path) -> Callable[..., object]:
    """``run_dag(source, dag_id, **dag_test_kwargs)``: write the DAG file, import it, ``dag.test()`` it.

    Returns the DagRun. Connections come from ``AIRFLOW_CONN_*`` variables (see ``emulator``).
    """

    def run(source: str, dag_id: str, **kwargs: object) -> object:
        path = write_dag_file(source, dag_id)
        return dag_test(load_dag(path, dag_id), **kwargs)

    return run


def dag_test(dag: Any, **kwargs: Any) -> Any:
    """``dag.test(**kwargs)``; ``logical_date`` is called ``execution_date`` on Airflow 2."""
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS

    if not AIRFLOW_V_3_0_PLUS and "logical_date" in kwargs:
        kwargs["execution_date"] = kwargs.pop("logical_date")
    return dag.test(**kwargs)


def trigger_serde() -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """``(serialize, deserialize)`` that trigger kwargs go through: ``airflow.sdk.serde`` from 3.2."""
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_2_PLUS

    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk.serde import deserialize, serialize
    else:
        from airflow.serialization.serde import deserialize, serialize
    return serialize, deserialize


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


def _test_server_uri(variable: str, name: str) -> str:
    """The URI of a test server that ``make test`` starts (scripts/with_test_servers.sh); skip without it.

    Under ``make test`` or CI a missing server is a failure, not a skip.
    """
    uri = os.environ.get(variable)
    if not uri:
        if os.environ.get("CEKURA_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail(f"{variable} is not set: run the suite with `make test`")
        pytest.skip(f"no {name}: run with `make test` (or scripts/with_test_servers.sh pytest ...)")
    return uri


@pytest.fixture(scope="session")
def postgres_uri() -> str:
    """URI of the real Postgres started by ``make test``."""
    return _test_server_uri("CEKURA_TEST_POSTGRES_URI", "Postgres")


@pytest.fixture(scope="session")
def mariadb_uri() -> str:
    """URI of the real MariaDB started by ``make test``."""
    return _test_server_uri("CEKURA_TEST_MARIADB_URI", "MariaDB")


# ------------------------------------------------------------------ DAG run inspection (shared by tests)


def key_leaks(text: str, key: str = TEST_API_KEY) -> list[str]:
    """The lines of ``text`` that show ``key``, except Airflow 3.0's own: its in-process supervisor
    (``dag.test()`` only) debug-logs every message it sends, including the ``MaskSecret(value=...)`` that
    Airflow's connection lookup sends for the password."""
    return [
        line[:300]
        for line in text.splitlines()
        if key in line and not ("Sending request" in line and "MaskSecret(" in line)
    ]


def errors(logs: str) -> list[str]:
    """The log lines that explain a failed task (for assertion messages)."""
    return [line[:500] for line in logs.splitlines() if "Error" in line or "Traceback" in line][:10]


def xcom_model() -> Any:
    """The XCom table's model: ``XComModel`` on Airflow 3, ``XCom`` (``BaseXCom``) on Airflow 2."""
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.models.xcom import XComModel as model
    else:
        from airflow.models.xcom import XCom as model
    return model


def run_state(dr: Any) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int, str], Any]]:
    """``({(task_id, map_index): state}, {(task_id, map_index, key): value})`` of a finished DagRun."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    model = xcom_model()
    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dr.dag_id, run_id=dr.run_id).all()
        states = {(ti.task_id, ti.map_index): str(getattr(ti.state, "value", ti.state)) for ti in tis}
        rows = session.query(model).filter_by(dag_id=dr.dag_id, run_id=dr.run_id).all()
        xcoms = {(r.task_id, r.map_index, r.key): xcom_value(r) for r in rows}
    return states, xcoms


def xcom_value(row: Any) -> Any:
    """The value of a row of :func:`xcom_model` (Airflow 2 deserializes it when the row is loaded)."""
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS

    return xcom_model().deserialize_value(row) if AIRFLOW_V_3_0_PLUS else row.value
