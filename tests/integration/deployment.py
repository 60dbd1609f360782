"""A real Airflow 3 deployment for the integration tests (the ``airflow_deployment`` fixture).

What runs (each a separate process in its own process group, logs in files under tmp):

- the Cekura emulator (``python -m airflow_provider_cekura.testing``) as the Cekura endpoint;
- ``airflow api-server`` (REST API v2 and the execution API the workers talk to);
- ``airflow scheduler`` with the LocalExecutor (its task processes are its children);
- ``airflow dag-processor`` and ``airflow triggerer``.

The metadata database and the warehouse are two new databases on the test Postgres (the
``postgres_uri`` fixture), created here and dropped at the end, also when a test fails.
Connections come from ``AIRFLOW_CONN_*`` variables; every process gets the same Fernet key,
JWT secret and API secret key. Everything listens on loopback only; the log servers of the
scheduler and triggerer are not started (``--skip-serve-logs``): all components share one
``AIRFLOW_HOME``, so the API server reads task and trigger logs from the local files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests

from airflow_provider_cekura.testing.process import EmulatorProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = ROOT / "example_dags"

DEPLOY_API_KEY = f"sk-cekura-IT-DEPLOY-{secrets.token_hex(8)}-DO-NOT-LEAK"
"""A distinctive key: the test searches task logs, component logs and log files for it."""

DASHBOARD_URL = "https://dashboard.cekura-it.example"
"""The ``dashboard_url`` extra of ``cekura_default``: extra links must point below it."""

EVALUATION_DELAY = 20.0
"""Seconds the emulator keeps a call log ``evaluating``: long enough for the sensor to defer."""

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
T = TypeVar("T")


class DeploymentError(AssertionError):
    """A wait timed out or a component died; the message carries the tails of the process logs."""


class ApiError(AssertionError):
    """A REST API answer with an unexpected status; ``wait_for`` retries those >= 500 (transient)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def free_port() -> int:
    """A free TCP port on loopback (bound and released: good enough for a test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(uri: str, database: str, scheme: str | None = None) -> str:
    parts = urlsplit(uri)
    return urlunsplit((scheme or parts.scheme, parts.netloc, f"/{database}", "", ""))


class AirflowDeployment:
    """Start, drive (through the REST API) and stop one Airflow deployment.

    :param workdir: an empty directory for ``AIRFLOW_HOME``, DAGs and logs.
    :param postgres_uri: the test server; two databases are created on it.
    :param dag_files: DAG files (relative to ``example_dags``) copied into the DAGs folder,
        together with ``example_dags/data``.
    """

    def __init__(self, workdir: Path, postgres_uri: str, dag_files: tuple[str, ...]) -> None:
        self.workdir = workdir
        self.postgres_uri = postgres_uri
        self.dag_files = dag_files
        self.home = workdir / "airflow"
        self.dags = workdir / "dags"
        self.logs = workdir / "process-logs"
        self.request_log = workdir / "emulator-requests.jsonl"
        """Every request the emulator handled, one JSON line each (see ``requests_logged``)."""
        suffix = secrets.token_hex(4)
        self.meta_db = f"cekura_it_meta_{suffix}"
        self.warehouse_db = f"cekura_it_warehouse_{suffix}"
        self.warehouse_uri = _with_database(postgres_uri, self.warehouse_db)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.emulator_url = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._created_dbs: list[str] = []
        self.transient_errors: list[str] = []
        """Errors a wait retried (5xx answers, refused connections): shown with the diagnostics."""
        self._fernet_key = _fernet_key()
        self._jwt_secret = secrets.token_urlsafe(64)  # >= 64 bytes: HS512 warns below
        self._secret_key = secrets.token_urlsafe(32)
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: never through a proxy from the environment

    # -- databases ---------------------------------------------------------------------------
    def _admin(self, statement: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.postgres_uri, connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def create_databases(self) -> None:
        for name in (self.meta_db, self.warehouse_db):
            self._admin(f'CREATE DATABASE "{name}"')
            self._created_dbs.append(name)

    def drop_databases(self) -> None:
        for name in reversed(self._created_dbs):
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as err:  # report, but go on dropping the others
                print(f"could not drop database {name}: {err}", file=sys.stderr)
        self._created_dbs.clear()

    def requests_logged(self) -> list[dict[str, Any]]:
        """The requests the emulator has handled so far: ``{"at" (epoch s), "method", "path", "call_ids"}``."""
        if not self.request_log.exists():
            return []
        lines = self.request_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def warehouse_query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.warehouse_uri, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    # -- processes ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of every Airflow process: nothing inherited from the test's own Airflow."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CEKURA_EMULATOR"))}
        pg = urlsplit(self.postgres_uri)
        cekura = {
            "conn_type": "cekura",
            "host": self.emulator_url,
            "password": DEPLOY_API_KEY,
            "extra": {"dashboard_url": DASHBOARD_URL, "read_timeout": 15, "backoff_base": 0.2},
        }
        warehouse = {
            "conn_type": "postgres",
            "host": pg.hostname or "127.0.0.1",
            "port": pg.port or 5432,
            "login": pg.username or "postgres",
            "password": pg.password or "",
            "schema": self.warehouse_db,
        }
        return {
            **base,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONDONTWRITEBYTECODE": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0",
            "AIRFLOW__CORE__FERNET_KEY": self._fernet_key,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _with_database(
                self.postgres_uri, self.meta_db, "postgresql+psycopg2"
            ),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secret_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            # a manual run only: unpausing must not add a scheduled run for "yesterday" of the real clock
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.home / "bundles"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW_CONN_CEKURA_DEFAULT": json.dumps(cekura),
            "AIRFLOW_CONN_WAREHOUSE": json.dumps(warehouse),
        }

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills it with its children
            )
        self.processes[name] = process
        return process

    def start_emulator(self) -> None:
        emulator = EmulatorProcess(
            DEPLOY_API_KEY, evaluation_delay=EVALUATION_DELAY, new_session=True, request_log=self.request_log
        )
        with open(self.logs / "emulator.log", "ab") as log:
            emulator.stdout = log
            try:
                self.emulator_url = emulator.start(timeout=30)
            except RuntimeError as err:
                raise DeploymentError(f"{err}{self.diagnostics()}") from None
            finally:
                if emulator.process is not None:
                    self.processes["emulator"] = emulator.process

    def airflow(self, *args: str, timeout: float) -> None:
        """Run one ``airflow`` CLI command to completion (output appended to its log file)."""
        name = f"airflow-{args[0]}-{args[1] if len(args) > 1 else ''}".rstrip("-")
        process = self._spawn(name, [sys.executable, "-m", "airflow", *args], self.env())
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(name, process)
            raise DeploymentError(f"`airflow {' '.join(args)}` took more than {timeout}s{self.diagnostics()}") from None
        finally:
            self.processes.pop(name, None)
        if code:
            raise DeploymentError(f"`airflow {' '.join(args)}` exited with {code}{self.diagnostics(names=[name])}")

    def start(self) -> None:
        for path in (self.home, self.dags, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        for name in self.dag_files:
            shutil.copy2(EXAMPLE_DAGS / name, self.dags / name)
        shutil.copytree(EXAMPLE_DAGS / "data", self.dags / "data", dirs_exist_ok=True)
        self.create_databases()
        self.start_emulator()
        self.airflow("db", "migrate", timeout=240)
        env = self.env()
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }
        for name, args in commands.items():
            self._spawn(name, [sys.executable, "-m", "airflow", *args], env)
        self.wait_for(self._healthy, 180, "the API server, scheduler, dag-processor and triggerer to be healthy")

    def _healthy(self) -> bool:
        self.check_alive()
        try:
            response = self.http.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return False
        if response.status_code != 200:
            return False
        health = response.json()
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def check_alive(self) -> None:
        for name in (*COMPONENTS, "emulator"):
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise DeploymentError(f"{name} exited with {process.returncode}{self.diagnostics()}")

    def _kill(self, name: str, process: subprocess.Popen[bytes], grace: float = 15) -> None:
        self._stop_group({name: process}, grace)

    @staticmethod
    def _stop_group(processes: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
        """SIGTERM every process group at once, wait up to ``grace`` s in all, then SIGKILL what is left."""
        for process in processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for name, process in processes.items():
            # a group may outlive its leader (task processes, the triggerer's runner): finish it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {process.pid}) did not exit", file=sys.stderr)

    def stop(self) -> None:
        """Stop the Airflow components (all at once), then the emulator, then drop both databases."""
        self.http.close()
        emulator = self.processes.pop("emulator", None)
        components, self.processes = self.processes, {}
        self._stop_group(components, grace=15)
        if emulator is not None:
            self._stop_group({"emulator": emulator}, grace=5)
        self.drop_databases()

    # -- waiting and diagnostics -------------------------------------------------------------
    def wait_for(self, probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
        """Call ``probe`` until it returns something truthy; fail after ``timeout`` with the process logs."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = probe()
                if value:
                    return value
            except DeploymentError:
                raise
            except ApiError as err:
                if err.status < 500:
                    raise
                last_error = err
                self.transient_errors.append(str(err)[:500])
            except (requests.RequestException, ValueError) as err:
                last_error = err
                self.transient_errors.append(repr(err)[:500])
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise DeploymentError(f"timed out after {timeout}s waiting for {what}{detail}{self.diagnostics()}")
            time.sleep(interval)

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self, names: list[str] | None = None, lines: int = 40) -> str:
        """The last lines of each process log, for failure messages."""
        out = []
        if self.transient_errors:
            shown = self.transient_errors[-10:]
            out.append(f"\n----- errors retried while waiting (last {len(shown)}) -----\n" + "\n".join(shown))
        for path in sorted(self.logs.glob("*.log")):
            if names and path.stem not in names:
                continue
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"\n----- {path.name} (last {len(tail)} lines) -----\n" + "\n".join(tail))
        return "".join(out)

    # -- REST API ----------------------------------------------------------------------------
    def api(self, method: str, path: str, *, expect: int | tuple[int, ...] = 200, **kwargs: Any) -> Any:
        """One REST API v2 request (no token: ``SIMPLE_AUTH_MANAGER_ALL_ADMINS``); returns the JSON body."""
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("headers", {"Accept": "application/json"})
        response = self.http.request(method, f"{self.api_url}/api/v2{path}", **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in expected:
            raise ApiError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}", response.status_code)
        return response.json() if response.content else None

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log for one try as the API serves it (JSON), as text (trigger logs included)."""
        response = self.http.get(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
            timeout=30,
        )
        assert response.status_code == 200, f"log of {task_id}: {response.status_code} {response.text[:500]}"
        return response.text

    def run_summary(self, dag_id: str, run_id: str) -> str:
        """Task states and the logs of failed tasks: the message of a failed run assertion."""
        lines = []
        for ti in self.task_instances(dag_id, run_id):
            lines.append(f"  {ti['task_id']}: {ti['state']} (try {ti['try_number']})")
            if ti["state"] in ("failed", "upstream_failed") and ti["try_number"]:
                try:
                    log = self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"])
                    events = [e.get("event", "") for e in json.loads(log).get("content", []) if isinstance(e, dict)]
                    lines.append("    " + "\n    ".join(str(e) for e in events[-40:]))
                except Exception as err:
                    lines.append(f"    (log not readable: {err})")
        return "\n".join(lines)

    def wait_for_dag(self, dag_id: str, timeout: float) -> dict[str, Any]:
        def parsed() -> dict[str, Any] | None:
            self.check_alive()
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise DeploymentError("DAG import errors:\n" + "\n".join(e["stack_trace"] for e in errors))
            response = self.http.get(f"{self.api_url}/api/v2/dags/{dag_id}", timeout=10)
            return response.json() if response.status_code == 200 else None

        return self.wait_for(parsed, timeout, f"the dag-processor to parse {dag_id}", interval=1)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            self.check_alive()
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        run = self.wait_for(finished, timeout, f"dag run {run_id} to finish", interval=1)
        assert run["state"] == "success", f"dag run {run_id}: {run['state']}\n{self.run_summary(dag_id, run_id)}"
        return run


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
