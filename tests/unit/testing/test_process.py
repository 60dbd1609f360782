"""The emulator's command line and ``EmulatorProcess``: faults for the whole run, the request log, SIGUSR1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import TEST_API_KEY

from airflow_provider_cekura.testing.__main__ import parse_fault
from airflow_provider_cekura.testing.process import EmulatorProcess

CALL = {
    "call_id": "proc-1",
    "agent": 1,
    "transcript_json": [{"role": "Main Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.0}],
}


def test_faults_request_log_and_finishing_evaluations(tmp_path: Path) -> None:
    log_path = tmp_path / "emulator.log"
    with open(log_path, "wb") as log:
        emulator = EmulatorProcess(
            TEST_API_KEY,
            evaluation_delay=3600,
            stdout=log,
            faults=["5xx:method=POST,path=/observe/,times=1,status=502"],
            log_requests=True,
        )
        url = emulator.start()
        try:
            headers = {"X-CEKURA-API-KEY": TEST_API_KEY}
            observe = f"{url}/observability/v1/observe/"
            assert requests.post(observe, json=CALL, headers=headers, timeout=10).status_code == 502  # the fault
            created = requests.post(observe, json=CALL, headers=headers, timeout=10)
            assert created.status_code == 201 and created.json()["status"] == "evaluating"  # times=1: once only
            detail = f"{url}/observability/v1/call-logs/{created.json()['id']}/"

            def status() -> str:
                return str(requests.get(detail, headers=headers, timeout=10).json()["status"])

            assert status() == "evaluating"  # an hour to go...
            emulator.finish_evaluations()  # ...until SIGUSR1
            for _ in range(200):  # the child handles SIGUSR1 when it gets the CPU: poll for up to 10 s
                if status() != "evaluating":
                    break
                time.sleep(0.05)
            assert status() == "success"
        finally:
            emulator.stop()
    lines = log_path.read_text().splitlines()
    assert "POST /observability/v1/observe/ 502 fault=5xx" in lines
    assert lines.count("POST /observability/v1/observe/ 201") == 1
    assert not any(TEST_API_KEY in line for line in lines)  # method, path and status only
    with pytest.raises(RuntimeError, match="not running"):
        emulator.finish_evaluations()


@pytest.mark.slow
def test_every_sigusr1_finishes_the_pending_evaluations() -> None:
    """Each signal is handled at once, whichever thread the kernel hands it to (it used to wait, ~1 in 20)."""
    headers = {"X-CEKURA-API-KEY": TEST_API_KEY}
    late: list[int] = []
    with EmulatorProcess(TEST_API_KEY, evaluation_delay=3600) as emulator:
        for n in range(300):
            observe = f"{emulator.base_url}/observability/v1/observe/"
            created = requests.post(observe, json={**CALL, "call_id": f"sig-{n}"}, headers=headers, timeout=10)
            detail = f"{emulator.base_url}/observability/v1/call-logs/{created.json()['id']}/"
            emulator.finish_evaluations()
            deadline = time.monotonic() + 2
            while requests.get(detail, headers=headers, timeout=10).json()["status"] == "evaluating":
                if time.monotonic() > deadline:
                    late.append(n)
                    break
                time.sleep(0.01)
    assert late == []


def test_fault_specs_are_parsed_by_the_fault_fields() -> None:
    assert parse_fault("latency:method=POST,path=/observe/,delay=0.5") == (
        "latency",
        {"method": "POST", "path": "/observe/", "delay": 0.5},
    )
    assert parse_fault("429:every=3,times=2,retry_after=7") == ("429", {"every": 3, "times": 2, "retry_after": "7"})
    assert parse_fault("hang") == ("hang", {})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("latency:speed=1", "bad fault option 'speed=1'"),
        ("latency:delay=soon", "fault option 'delay' needs a number"),
        ("latency:delay", "bad fault option 'delay'"),
        ("tsunami", "unknown fault kind 'tsunami'"),
    ],
)
def test_a_bad_fault_spec_is_refused_before_serving(spec: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_cekura.testing", "--port", "0", "--fault", spec],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "listening" not in result.stdout


def test_stop_removes_the_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `make demo` used to leave a cekura-emulator-* directory behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    emulator = EmulatorProcess(TEST_API_KEY)
    emulator.start()
    assert [p.name[:16] for p in tmp_path.iterdir()] == ["cekura-emulator-"]
    emulator.stop()
    assert list(tmp_path.iterdir()) == []
    emulator.stop()  # idempotent


@pytest.mark.slow
def test_cli_prints_the_connection_line_to_export(tmp_path: Path) -> None:
    """The offline recipe's line: what `python -m airflow_provider_cekura.testing` prints, ready to paste."""
    import json
    import os
    import shlex
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_cekura.testing", "--port", "0", "--api-key", "k-1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        listening = process.stdout.readline()
        line = process.stdout.readline().rstrip("\n")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    url = listening.rsplit(" ", 1)[1].strip()
    assert line.startswith("export AIRFLOW_CONN_CEKURA_DEFAULT='"), line
    value = shlex.split(line.removeprefix("export "))[0].split("=", 1)[1]
    assert json.loads(value) == {"conn_type": "cekura", "host": url, "password": "k-1"}
    # pasted into a shell, Airflow reads it as the cekura_default connection
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"{line}\n{shlex.quote(sys.executable)} -c 'from airflow_provider_cekura.hooks.cekura import CekuraHook; "
            'c = CekuraHook.get_connection("cekura_default"); print(c.conn_type, c.host)\'',
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_CEKURA_DEFAULT"},
        check=True,
    )
    assert done.stdout.split()[-2:] == ["cekura", url], done.stdout


@pytest.mark.slow
def test_latency_and_page_size_cap_from_the_command_line() -> None:
    headers = {"X-CEKURA-API-KEY": TEST_API_KEY}
    with EmulatorProcess(TEST_API_KEY, latency_ms=150, max_page_size=3) as emulator:
        observe = f"{emulator.base_url}/observability/v1/observe/"
        for n in range(4):
            created = requests.post(observe, json={**CALL, "call_id": f"lat-{n}"}, headers=headers, timeout=10)
            assert created.status_code == 201
            assert created.elapsed.total_seconds() >= 0.15  # every request waits --latency-ms
        listed = requests.get(
            f"{emulator.base_url}/observability/v1/call-logs/", params={"page_size": 10}, headers=headers, timeout=10
        )
        page = listed.json()
        assert listed.elapsed.total_seconds() >= 0.15
        assert (page["count"], len(page["results"])) == (4, 3) and page["next"]  # capped at --max-page-size


@pytest.mark.parametrize("option", [["--latency-ms", "-1"], ["--max-page-size", "0"]])
def test_bad_latency_or_page_size_is_refused(option: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_cekura.testing", "--port", "0", *option],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--latency-ms must be >= 0" in done.stderr
