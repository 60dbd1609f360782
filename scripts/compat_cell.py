"""One cell of the compatibility matrix, run with the cell's own interpreter (see scripts/compat.py).

In the cell's throwaway virtualenv (Airflow X.Y.Z + the provider's wheel): ``airflow db migrate``, every
``[[dag_run]]`` of compat/cells.toml with the real ``airflow dags test`` against the emulator (its own
process) into SQLite warehouses, the checks on the warehouse, ``airflow providers list`` /
``airflow providers hooks``, and the B4 import cost. Prints one JSON object on the last line of stdout.

Only the standard library and the installed provider are used: this file runs on every Airflow line.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent.parent  # the cell's copy of tests/, example_dags/, benchmarks/
API_KEY = "sk-cekura-COMPAT-5e1d-DO-NOT-LEAK"  # searched for in every command's output
AIRFLOW_MASK_DEBUG = "Sending request"
"""Airflow 3.0's in-process supervisor (``dag.test``) debug-logs every message it sends, including the
``MaskSecret(value=...)`` that Airflow's own connection lookup sends for the password: counted, reported,
not ours (it does not exist in a deployment, where the supervisor is another process)."""
SAMPLE = WORK / "example_dags" / "data" / "sample_calls.jsonl"


def _utc(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace(" ", "T"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _sample_calls_between(start: datetime, end: datetime) -> int:
    calls = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    return sum(1 for call in calls if start <= _utc(call["timestamp"]) < end)


def _airflow(args: list[str], env: dict[str, str], log: Path, timeout: float = 900) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n$ airflow {' '.join(args)}\n(exit {done.returncode})\n{output}\n")
    return done.returncode, output, time.monotonic() - started


def _example_dag_ids() -> set[str]:
    ids: set[str] = set()
    for path in (WORK / "example_dags").glob("*.py"):
        ids.update(re.findall(r"""dag_id\s*=\s*["']([\w.-]+)["']""", path.read_text()))
    return ids


def _latest_run(home: Path, dag_id: str) -> dict[str, Any]:
    with sqlite3.connect(home / "airflow.db") as db:
        row = db.execute(
            "SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run WHERE dag_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        if row is None:
            return {"state": "no run"}
        # Airflow 3.4.0b2's metadata DB has no task_instance.map_index (its task instances carry a region_index).
        columns = {c[1] for c in db.execute("PRAGMA table_info(task_instance)")}
        index = next((c for c in ("map_index", "region_index") if c in columns), "-1")
        tasks = db.execute(
            f"SELECT task_id, {index}, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, row[0])
        ).fetchall()
    return {
        "run_id": row[0],
        "state": row[1],
        "interval": [row[2], row[3]],
        "tasks": {f"{t}{'' if m < 0 else f'[{m}]'}": s for t, m, s in tasks},
    }


def _first_row(database: Path, sql: str, lakehouse: bool) -> list[Any]:
    """The first row of ``sql`` on the SQLite warehouse, or on the DuckDB lakehouse (``lakehouse = true``)."""
    if lakehouse:
        import duckdb  # installed in every cell (compat/cells.toml requirements)

        with duckdb.connect(str(database), read_only=True) as db:
            return list(db.execute(sql).fetchone() or [])
    with sqlite3.connect(database) as db:
        return list(db.execute(sql).fetchone() or [])


def _check(check: dict[str, Any], warehouse: Path, run: dict[str, Any], lakehouse: bool = False) -> str | None:
    """None when the check holds, else what went wrong."""
    try:
        got = _first_row(warehouse, check["sql"], lakehouse)
    except Exception as err:
        return f"{check['sql']}: {type(err).__name__}: {err}"
    if "equals" in check:
        expected = list(check["equals"])
    elif "sample_calls_between" in check:
        start, end = (_utc(v) for v in check["sample_calls_between"])
        expected = [_sample_calls_between(start, end)] * 2
    elif check.get("sample_calls_in_data_interval"):
        start, end = (_utc(v) for v in run["interval"])
        if start >= end:
            return f"the run's data interval is empty: {run['interval']}"
        expected = [_sample_calls_between(start, end)] * 2
        if not expected[0]:
            return f"no sample call in the run's data interval {run['interval']}: pick another logical date"
    else:
        return f"check without an expectation: {check}"
    return None if got == expected else f"{check['sql']}: got {got}, expected {expected}"


def main() -> int:
    cells = tomllib.loads((WORK / "compat" / "cells.toml").read_text())
    home = Path(os.environ["CEKURA_COMPAT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    log = home / "cell.log"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(WORK / "example_dags"),  # pytest's DAG files stay in home/dags
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # cekura_export_to_object_storage: its files and DuckDB database, set before `dags reserialize` (the
        # lake's URL is the task's Asset outlet, which Airflow 3.0 must have registered before `dags test`).
        "CEKURA_LAKE": f"file://{home}/lake",
        "CEKURA_LAKEHOUSE_DB": str(home / "lakehouse.duckdb"),
    }
    result: dict[str, Any] = {"dag_runs": [], "problems": []}

    code, output, seconds = _airflow(["db", "migrate"], env, log)
    result["db_migrate_s"] = round(seconds, 1)
    if code != 0:
        result["problems"].append(f"airflow db migrate failed (exit {code}): {output[-1500:]}")
        print(json.dumps(result))
        return 1

    # What a deployment's dag-processor does before any run: serialize the DAGs and register their assets.
    # Without it Airflow 3.0's `dags test` fails tasks with asset outlets (apache/airflow#51644).
    code, output, seconds = _airflow(["dags", "reserialize"], env, log)
    result["reserialize_s"] = round(seconds, 1)
    if code != 0:
        result["problems"].append(f"airflow dags reserialize failed (exit {code}): {output[-1500:]}")

    missing = _example_dag_ids() - {r["dag_id"] for r in cells["dag_run"]}
    if missing:
        result["problems"].append(f"example DAGs without a [[dag_run]] in compat/cells.toml: {sorted(missing)}")

    from airflow_provider_cekura.testing.process import EmulatorProcess

    with EmulatorProcess(api_key=API_KEY, evaluation_delay=2.0) as emulator:
        env["AIRFLOW_CONN_CEKURA_DEFAULT"] = emulator.connection_json()
        for spec in cells["dag_run"]:
            warehouse = home / f"warehouse-{spec['warehouse']}.db"
            env["AIRFLOW_CONN_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
            lakehouse = bool(spec.get("lakehouse"))
            if lakehouse:  # the object storage example: files under the cell's file:// lake, loaded into DuckDB
                warehouse = Path(env["CEKURA_LAKEHOUSE_DB"])
            args = ["dags", "test", spec["dag_id"], spec["logical_date"]]
            if spec.get("conf"):
                args[2:2] = ["--conf", json.dumps(spec["conf"])]
            code, output, seconds = _airflow(args, env, log)
            run = _latest_run(home, spec["dag_id"])
            failures = [] if run["state"] == "success" else [f"DAG run {run['state']}: {run.get('tasks')}"]
            if run["state"] == "success":
                failures += [p for p in (_check(c, warehouse, run, lakehouse) for c in spec.get("checks", [])) if p]
            leaks = [line for line in output.splitlines() if API_KEY in line]
            airflow_debug = [line for line in leaks if AIRFLOW_MASK_DEBUG in line and "MaskSecret(" in line]
            if len(leaks) > len(airflow_debug):
                failures.append(f"the API key appears in the output of airflow dags test: {len(leaks)} line(s)")
            if airflow_debug:
                result.setdefault("notes", []).append(
                    f"{spec['dag_id']}: Airflow's in-process supervisor debug-logged {len(airflow_debug)} "
                    "MaskSecret message(s) with the key (airflow dags test only)"
                )
            result["dag_runs"].append(
                {"name": spec["name"], "dag_id": spec["dag_id"], "seconds": round(seconds, 1), "exit": code, **run}
            )
            result["problems"] += [f"{spec['name']} ({spec['dag_id']}): {f}" for f in failures]

    for args, expected in ((["providers", "list"], "airflow-provider-cekura"), (["providers", "hooks"], "cekura")):
        code, output, _ = _airflow(args, env, log, timeout=300)
        ok = code == 0 and expected in output
        result[f"providers_{args[1]}"] = ok
        if not ok:
            result["problems"].append(f"`airflow {' '.join(args)}` (exit {code}) does not show {expected!r}")

    sys.path.insert(0, str(WORK))
    from benchmarks.imports import measure

    # B4 as a deployment parses DAG files: .pyc files written by a first, discarded sample (pip and uv
    # compile them at install; `make bench` measures the harsher compile-from-source case).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    result["b4"] = measure(samples=int(os.environ.get("CEKURA_COMPAT_B4_SAMPLES", "5")), warmup=True)
    print(json.dumps(result))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
