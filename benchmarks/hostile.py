"""Hostile servers (issue #29, server side): the provider before and after the transport rework, in one run.

``python -m benchmarks.hostile [--before REV] [--bound SECONDS]`` exports the package as it was at ``REV``
(default: the commit before the transport rework) into a temporary directory, then runs every case of
``tests/hostile_probe.py`` twice, each in a fresh process: against that export ("before") and against this
tree ("after"). Each run is cut off at ``--bound`` seconds. Prints a Markdown table: requests the server
got, seconds, peak RSS growth (MB), outcome, and whether the key reached the server's answer or another
host. Not part of ``make bench`` (it measures bounds, not speed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "650b837"
CASES = (
    "retry_after_nan",
    "retry_after_inf",
    "retry_after_negative",
    "retry_after_huge",
    "gzip_bomb",
    "trickle",
    "trickle_headers",
    "echo_key_401",
    "redirect_elsewhere",
)


def export(rev: str, into: Path) -> Path:
    """``airflow_provider_cekura`` as of ``rev``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "airflow_provider_cekura"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def probe(case: str, source: Path, bound: float, home: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(source), "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "hostile_probe.py"), case, str(bound)],
        capture_output=True,
        text=True,
        env=env,
        timeout=bound + 60,
        cwd=tempfile.gettempdir(),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"case": case, "outcome": f"probe failed: {done.stderr[-300:]}"}
    return json.loads(lines[-1])


def row(label: str, m: dict[str, Any]) -> str:
    leaked = {True: "yes", False: "no"}.get(m.get("key_leaked"), "")
    return (
        f"| {m['case']} | {label} | {m.get('requests', '')} | {m.get('seconds', '')} | {m.get('peak_mb', '')} "
        f"| {leaked} | {m['outcome'][:110]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--bound", type=float, default=20.0)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    print("| case | code | requests | seconds | peak MB | key sent/shown | outcome |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as home:
        old = export(args.before, Path(tmp))
        for case in args.cases.split(","):
            for label, source in ((f"before ({args.before})", old), ("after", ROOT)):
                measured = probe(case, source, args.bound, home)
                assert Path(measured.get("package", str(source))).is_relative_to(source), measured
                print(row(label, measured), flush=True)


if __name__ == "__main__":
    main()
