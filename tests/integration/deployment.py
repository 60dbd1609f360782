"""A real Airflow 3 deployment for the integration tests (the ``airflow_deployment`` and
``celery_deployment`` fixtures).

What runs (each a separate process in its own process group, logs in files under tmp):

- the Cekura emulator (``python -m airflow_provider_cekura.testing``) as the Cekura endpoint;
- ``airflow api-server`` (REST API v2 and the execution API the workers talk to);
- ``airflow scheduler``: with the LocalExecutor its task processes are its children;
  with the CeleryExecutor (:class:`CeleryDeployment`) it queues workloads on a Redis broker for
  ``airflow celery worker`` processes (two by default, each with its own ``--celery-hostname``);
- ``airflow dag-processor`` and ``airflow triggerer``.

The metadata database and the warehouse are two new databases on the test Postgres (the
``postgres_uri`` fixture), created here and dropped at the end, also when a test fails.
Connections come from ``AIRFLOW_CONN_*`` variables; every process gets the same Fernet key,
JWT secret and API secret key. Each component has its own working directory, which is also its
``AIRFLOW_HOME``; what they share is what machines of a deployment share: the databases, the
broker, the DAGs folder and the log folder (a shared volume; in production remote logging or the
workers' log servers). Everything listens on loopback only; the log servers are not started
(``--skip-serve-logs``): the API server reads task and trigger logs from the shared folder.
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
CELERY_DAGS = Path(__file__).resolve().parent / "dags"

DEPLOY_API_KEY = f"sk-cekura-IT-DEPLOY-{secrets.token_hex(8)}-DO-NOT-LEAK"
"""A distinctive key: the test searches task logs, component logs and log files for it."""

DASHBOARD_URL = "https://dashboard.cekura-it.example"
"""The ``dashboard_url`` extra of ``cekura_default``: extra links must point below it."""

EVALUATION_DELAY = 20.0
"""Seconds the emulator keeps a call log ``evaluating``: long enough for the sensor to defer."""

OBSERVE_LATENCY = 0.5
"""Seconds each observe request takes in the Celery deployment (so a kill lands mid-batch)."""

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

    :param workdir: an empty directory for the components' working directories, DAGs and logs.
    :param postgres_uri: the test server; two databases are created on it.
    :param dag_files: DAG files (relative to ``dags_source``) copied into the DAGs folder,
        together with ``dags_source/data`` if it exists.
    :param dags_source: where the DAG files come from (default ``example_dags``).
    :param evaluation_delay: seconds the emulator keeps a call log ``evaluating``.
    :param emulator_faults: ``--fault`` specs for the emulator (e.g. latency on observe).
    """

    executor = "LocalExecutor"

    def __init__(
        self,
        workdir: Path,
        postgres_uri: str,
        dag_files: tuple[str, ...],
        *,
        dags_source: Path = EXAMPLE_DAGS,
        evaluation_delay: float = EVALUATION_DELAY,
        emulator_faults: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.postgres_uri = postgres_uri
        self.dag_files = dag_files
        self.dags_source = dags_source
        self.evaluation_delay = evaluation_delay
        self.emulator_faults = emulator_faults
        self.emulator: EmulatorProcess | None = None
        self.home = workdir / "airflow"
        """Shared by all components: the log folder (``home/logs``), plugins and DAG bundles."""
        self.dags = workdir / "dags"
        self.logs = workdir / "process-logs"
        suffix = secrets.token_hex(4)
        self.meta_db = f"cekura_it_meta_{suffix}"
        self.warehouse_db = f"cekura_it_warehouse_{suffix}"
        self.warehouse_uri = _with_database(postgres_uri, self.warehouse_db)
        self.meta_uri = _with_database(postgres_uri, self.meta_db)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.emulator_url = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._created_dbs: list[str] = []
        self._log_starts: dict[str, int] = {}
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
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
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

    def component_dir(self, name: str) -> Path:
        """The working directory and ``AIRFLOW_HOME`` of one component (created on first use)."""
        path = self.workdir / "components" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def component_env(self, name: str) -> dict[str, str]:
        return {**self.env(), "AIRFLOW_HOME": str(self.component_dir(name))}

    def component_commands(self) -> dict[str, list[str]]:
        """The long-running components: name -> ``airflow`` arguments."""
        return {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }

    def start_component(self, name: str) -> subprocess.Popen[bytes]:
        """Start one component (again, after :meth:`stop_component`); its log file is appended to."""
        if name in self.processes and self.processes[name].poll() is None:
            raise DeploymentError(f"{name} is already running")
        command = [sys.executable, "-m", "airflow", *self.component_commands()[name]]
        log = self.logs / f"{name}.log"
        self._log_starts[name] = log.stat().st_size if log.exists() else 0
        return self._spawn(name, command, self.component_env(name))

    def stop_component(self, name: str, sig: signal.Signals = signal.SIGTERM, grace: float = 60) -> int:
        """Send ``sig`` to a component's process group and wait for it; returns its exit code.

        SIGTERM goes to the component's main process only (as ``docker stop`` or Kubernetes send it),
        which then has ``grace`` seconds to shut down its children and itself before the rest is
        killed. SIGKILL goes to every process the component started at once (a machine, or a
        container, that died): nothing of it can clean up. Either way nothing of it is left.
        """
        process = self.processes.pop(name)
        if sig == signal.SIGKILL:
            kill_session(process.pid)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            print(f"{name} did not exit within {grace}s of {sig.name}: killed", file=sys.stderr)
        self._stop_group({name: process}, grace=0)
        return process.returncode

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=env.get("AIRFLOW_HOME", self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills it with its children
            )
        self.processes[name] = process
        return process

    def start_emulator(self) -> None:
        emulator = self.emulator = EmulatorProcess(
            DEPLOY_API_KEY,
            evaluation_delay=self.evaluation_delay,
            new_session=True,
            faults=self.emulator_faults,
            log_requests=True,
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
        process = self._spawn(name, [sys.executable, "-m", "airflow", *args], self.component_env(name))
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
            shutil.copy2(self.dags_source / name, self.dags / name)
        if (self.dags_source / "data").is_dir():
            shutil.copytree(self.dags_source / "data", self.dags / "data", dirs_exist_ok=True)
        self.create_databases()
        self.start_emulator()
        self.airflow("db", "migrate", timeout=240)
        for name in self.component_commands():
            self.start_component(name)
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
        for name in (*self.component_commands(), "emulator"):
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
            # a session may outlive its leader (task processes, the triggerer's runner): finish it
            kill_session(process.pid)
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

    def log_text(self, name: str, since_start: bool = False) -> str:
        """A process log; with ``since_start`` only what its latest start wrote."""
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(self._log_starts.get(name, 0) if since_start else 0)
            return handle.read().decode(errors="replace")

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

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The task's log for one try as the API serves it (JSON), as text (trigger logs included)."""
        response = self.http.get(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true", "map_index": map_index},
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


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (a component and all it started), at once.

    Not just its process group: Airflow's task supervisor puts each task process in a group of its
    own, and a worker killed by group would leave its running tasks behind as orphans that go on
    sending. Everything is stopped (SIGSTOP) first, so nothing forks or exits while it is gathered.
    """
    for _ in range(5):
        members = _session_members(sid)
        if not members:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in members if sig == signal.SIGSTOP else _session_members(sid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        time.sleep(0.1)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
                if state != "Z" and os.getsid(int(entry)) == sid and int(entry) != os.getpid():
                    members.append(int(entry))  # (a zombie is dead already: only not yet reaped)
    return members


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


HOSTNAME_MODULE = "cekura_it_hostname"
"""Written into each worker's ``AIRFLOW_HOME/config`` (on ``sys.path``): its ``[core] hostname_callable``."""


class CeleryDeployment(AirflowDeployment):
    """The same deployment with the CeleryExecutor: Redis as broker, Postgres as result backend.

    The workers are separate ``airflow celery worker`` processes with their own
    ``--celery-hostname``; each reports that name as the task instances' ``hostname`` (its
    ``[core] hostname_callable``), as workers on separate machines would.

    :param broker_url: the Redis broker (``scripts/redis.sh start``).
    :param workers: the workers' Celery hostnames.
    :param worker_concurrency: task slots per worker.
    """

    executor = "CeleryExecutor"

    def __init__(
        self,
        workdir: Path,
        postgres_uri: str,
        dag_files: tuple[str, ...],
        *,
        broker_url: str,
        workers: tuple[str, ...] = ("worker-a", "worker-b"),
        worker_concurrency: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(workdir, postgres_uri, dag_files, **kwargs)
        self.broker_url = broker_url
        self.workers = workers
        self.worker_concurrency = worker_concurrency

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
            + _with_database(self.postgres_uri, self.meta_db, "postgresql+psycopg2"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            # one message reserved per free slot, so a busy worker leaves new tasks to the other one
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            "AIRFLOW__CELERY__OPERATION_TIMEOUT": "30",  # a loaded machine: publishing may take a while
            # a message of a worker that died is redelivered only after this (the scheduler retries the
            # task long before): longer than any task, as in production
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            # a task whose worker died is failed (and retried) once it missed heartbeats this long
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        }

    def component_env(self, name: str) -> dict[str, str]:
        env = super().component_env(name)
        if name in self.workers:
            env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = f"{HOSTNAME_MODULE}.hostname"
        return env

    def component_commands(self) -> dict[str, list[str]]:
        worker = ["celery", "worker", "--concurrency", str(self.worker_concurrency), "--skip-serve-logs"]
        workers = {name: [*worker, "--celery-hostname", name, "--without-mingle"] for name in self.workers}
        return {**super().component_commands(), **workers}

    def start_component(self, name: str) -> subprocess.Popen[bytes]:
        if name in self.workers:
            config = self.component_dir(name) / "config"
            config.mkdir(exist_ok=True)
            (config / f"{HOSTNAME_MODULE}.py").write_text(f"def hostname() -> str:\n    return {name!r}\n")
        return super().start_component(name)

    def start(self) -> None:
        super().start()
        for name in self.workers:
            self.wait_for_worker(name)

    def wait_for_worker(self, name: str, timeout: float = 180) -> None:
        """Wait until the Celery worker ``name`` says it is ready (consuming from the broker)."""

        def ready() -> bool:
            self.check_alive()
            return f"celery@{name} ready" in self.log_text(name, since_start=True)

        self.wait_for(ready, timeout, f"Celery worker {name} to be ready", interval=1)
