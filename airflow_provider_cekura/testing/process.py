"""The emulator in a process of its own, for tests and demos that run Airflow in other processes.

Example::

    from airflow_provider_cekura.testing.process import EmulatorProcess

    with EmulatorProcess(api_key="test-key", evaluation_delay=3) as emulator:
        os.environ["AIRFLOW_CONN_CEKURA_DEFAULT"] = emulator.connection_json()
        ...  # run `airflow dags test ...`
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


class EmulatorProcess:
    """Run ``python -m airflow_provider_cekura.testing`` on a free loopback port.

    The API key travels in the child's environment (``CEKURA_EMULATOR_API_KEY``), not on its
    command line. :meth:`stop` sends SIGTERM, so a ``state_file`` is saved on the way out.

    :param api_key: the key clients must send.
    :param evaluation_delay: seconds a call log stays ``evaluating``.
    :param state_file: load call logs from it at start, save them at stop.
    :param stdout: where the child's output goes (default: discarded).
    :param new_session: start the child in its own process group.
    :param faults: faults injected for the whole run, as ``--fault`` specs
        (``"latency:method=POST,path=/observe/,delay=0.5"``).
    :param log_requests: the child prints one line per request (method, path, status) to ``stdout``.
    :param latency_ms: milliseconds every request waits before its answer (``--latency-ms``).
    :param max_page_size: the largest page served (``--max-page-size``).
    """

    def __init__(
        self,
        api_key: str,
        *,
        evaluation_delay: float = 1.0,
        state_file: str | Path | None = None,
        stdout: IO[Any] | int = subprocess.DEVNULL,
        new_session: bool = False,
        faults: Sequence[str] = (),
        log_requests: bool = False,
        latency_ms: float = 0.0,
        max_page_size: int = 100,
    ) -> None:
        self.api_key = api_key
        self.evaluation_delay = evaluation_delay
        self.state_file = state_file
        self.stdout = stdout
        self.new_session = new_session
        self.faults = tuple(faults)
        self.log_requests = log_requests
        self.latency_ms = latency_ms
        self.max_page_size = max_page_size
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._scratch: Path | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("emulator process not started")
        return f"http://127.0.0.1:{self.port}"

    def connection_json(self) -> str:
        """An ``AIRFLOW_CONN_*`` value pointing at this emulator."""
        return json.dumps({"conn_type": "cekura", "host": self.base_url, "password": self.api_key})

    def start(self, timeout: float = 30.0) -> str:
        """Start the child and wait until it listens; returns the base URL."""
        self._scratch = Path(tempfile.mkdtemp(prefix="cekura-emulator-"))
        port_file = self._scratch / "port"
        command = [sys.executable, "-m", "airflow_provider_cekura.testing", "--port", "0", "--no-export-line"]
        command += ["--port-file", str(port_file), "--evaluation-delay", str(self.evaluation_delay)]
        if self.state_file is not None:
            command += ["--state-file", str(self.state_file)]
        for fault in self.faults:
            command += ["--fault", fault]
        if self.log_requests:
            command.append("--log-requests")
        command += ["--latency-ms", str(self.latency_ms), "--max-page-size", str(self.max_page_size)]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "CEKURA_EMULATOR_API_KEY": self.api_key},
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None:
                self._remove_scratch()
                raise RuntimeError(f"the emulator exited with {self.process.returncode} before listening")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not listen within {timeout:.0f}s")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self.base_url

    def finish_evaluations(self) -> None:
        """Make every pending evaluation finish now (SIGUSR1 to the child)."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("emulator process not running")
        self.process.send_signal(signal.SIGUSR1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the state file is saved), then SIGKILL if it lingers; removes the temporary directory.

        Idempotent.
        """
        try:
            if self.process is None or self.process.poll() is not None:
                return
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        finally:
            self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
