"""`make demo`: the whole provider end to end on this machine, nothing but the repository needed.

1. starts the bundled Cekura emulator on a free loopback port (state kept in .demo/ so a re-run
   sees the call logs of the previous one, as the real API would);
2. creates the connections ``cekura_default`` (emulator) and ``warehouse`` (SQLite file) as
   environment variables, with an isolated AIRFLOW_HOME under .demo/;
3. runs ``airflow dags test cekura_ingest_then_evaluate`` for 2026-11-01 of the sample data;
4. stops the emulator and prints what happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_cekura.testing.process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
AIRFLOW_HOME = DEMO / "airflow"
WAREHOUSE = DEMO / "warehouse.db"
STATE = DEMO / "emulator_state.json"
KEY_FILE = DEMO / "api_key"
DAG_ID = "cekura_ingest_then_evaluate"
LOGICAL_DATE = "2026-11-02"  # ingests the day before: 2026-11-01, the day of the sample data


STATUS_HELP = (
    "    (status is Cekura's verdict on each call: 'success' and 'failure' (or 'reviewed_...') are evaluated calls, judged\n"
    "     successful or not by the agent's metrics; a failure is a call that went badly, not an error. A failed\n"
    "     evaluation is different: Cekura could not evaluate the call at all, see 'failed evaluations' above.)"
)


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def airflow(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, check=False
    )
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    return result


def main() -> int:
    started = time.monotonic()
    DEMO.mkdir(exist_ok=True)
    if not KEY_FILE.exists():
        KEY_FILE.write_text(f"demo-{secrets.token_hex(12)}")
    api_key = KEY_FILE.read_text().strip()

    step("starting the Cekura emulator")
    emulator = EmulatorProcess(api_key, evaluation_delay=3, state_file=STATE)
    base_url = emulator.start()
    try:
        print(f"    listening on {base_url}")
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
            "AIRFLOW_CONN_CEKURA_DEFAULT": emulator.connection_json(),
            # JSON form: sqlite provider 4.3.4 turns the URI form sqlite:////abs/path into an invalid sqlite3 URI.
            "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE)}),
        }
        if not (AIRFLOW_HOME / ".migrated").exists():
            step("creating the Airflow metadata database (first run only)")
            AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
            result = airflow("db", "migrate", env=env)
            if result.returncode:
                print(result.stdout[-3000:], result.stderr[-3000:])
                return 1
            (AIRFLOW_HOME / ".migrated").touch()

        step(f"airflow dags test {DAG_ID} {LOGICAL_DATE}")
        log_path = DEMO / "dags_test.log"
        result = airflow("dags", "test", DAG_ID, LOGICAL_DATE, env=env, log=log_path)
    finally:
        step("stopping the emulator")
        emulator.stop()

    output = log_path.read_text()
    leaked = api_key in output
    summary = report(result.returncode, leaked, time.monotonic() - started, log_path)
    return 0 if result.returncode == 0 and not leaked and summary else 1


def report(returncode: int, leaked: bool, elapsed: float, log_path: Path) -> bool:
    metadata = sqlite3.connect(AIRFLOW_HOME / "airflow.db")
    run_id = metadata.execute(
        "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
    ).fetchone()
    print()
    print(f"Demo of airflow-provider-cekura: DAG {DAG_ID}, run {run_id[0] if run_id else '?'}")
    if run_id:
        print("  task states:")
        for task_id, state in metadata.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY start_date",
            (DAG_ID, run_id[0]),
        ):
            print(f"    {task_id:<22} {state}")

        def xcom(task_id: str) -> object:
            row = metadata.execute(
                "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
                (DAG_ID, run_id[0], task_id),
            ).fetchone()
            return json.loads(row[0]) if row and row[0] is not None else None

        ids = xcom("observe")
        if isinstance(ids, list):
            print(f"  call logs ingested: {len(ids)} (ids {min(ids)}..{max(ids)})")
            existing = re.search(r"(\d+) of (\d+) call\(s\) already exist", log_path.read_text())
            if existing:
                print(f"    {existing.group(1)} of them were already in Cekura (an earlier demo run): not sent again")
        quality = xcom("quality_summary")
        if isinstance(quality, dict):
            print(
                f"  evaluation: {quality.get('calls')} calls, success rate {quality.get('success_rate')}, "
                f"failed evaluations {quality.get('evaluation_failed')} (calls Cekura could not evaluate)"
            )
            for name, average in (quality.get("metric_averages") or {}).items():
                print(f"    average {name}: {average}")
    ok = returncode == 0
    if WAREHOUSE.exists():
        warehouse = sqlite3.connect(WAREHOUSE)
        try:
            rows, distinct = warehouse.execute(
                "SELECT COUNT(*), COUNT(DISTINCT call_id) FROM cekura_call_logs"
            ).fetchone()
            metrics = warehouse.execute("SELECT COUNT(*) FROM cekura_call_metrics").fetchone()[0]
            by_status = warehouse.execute(
                "SELECT status, COUNT(*) FROM cekura_call_logs GROUP BY status ORDER BY 2 DESC"
            ).fetchall()
            print(f"  warehouse: {rows} call log rows ({distinct} distinct call_ids), {metrics} metric rows")
            print("    by status: " + ", ".join(f"{s}={n}" for s, n in by_status))
            print(STATUS_HELP)
            ok = ok and rows == distinct
        except sqlite3.Error as err:
            print(f"  warehouse: not readable ({err})")
            ok = False
        print(f"  SQLite warehouse: {WAREHOUSE}")
        print(
            "  try: .venv/bin/python -c \"import sqlite3; print(sqlite3.connect('.demo/warehouse.db').execute("
            "'SELECT call_id, status, success FROM cekura_call_logs LIMIT 5').fetchall())\""
        )
    print(f"  full log: {log_path}")
    print(f"  API key in the output: {'YES (bug!)' if leaked else 'no'}")
    print(f"  took {elapsed:.0f}s; result: {'OK' if ok and not leaked else 'FAILED'}")
    if returncode:
        print(log_path.read_text()[-4000:])
    return ok


if __name__ == "__main__":
    sys.exit(main())
