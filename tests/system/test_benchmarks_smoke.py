"""The benchmarks run end to end with tiny sizes, so they never rot (figures are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

RESULTS = ROOT / "benchmarks" / "results.md"


def test_benchmarks_smoke(tmp_path: Path) -> None:
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    output = tmp_path / "results.md"
    env = dict(os.environ)
    env.pop("AIRFLOW_HOME", None)  # the run makes its own
    # The run starts several interpreters that import Airflow; a private bytecode cache keeps that quick.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    text = output.read_text()
    for title in (
        "B1 — export to SQL",
        "B2 — waiting for evaluations",
        "B3 — bulk ingest",
        "B4 — import cost",
        "B5 — rate limits",
        "B6 — export to object storage",
    ):
        assert f"## {title}" in text
    assert "crashed" not in text
    assert "| CPUs |" in text and "| Airflow |" in text
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before, "the smoke run must not touch results.md"
    print(f"smoke run took {elapsed:.0f} s")
