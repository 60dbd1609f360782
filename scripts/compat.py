"""``make test-compat``: the compatibility matrix of compat/cells.toml, in throwaway virtualenvs.

For each cell: ``uv venv`` with that Python, ``uv pip install`` of ``apache-airflow==X.Y.Z`` and the
provider's wheel (built once from this checkout) resolved as of the cell's date, the test subset with
pytest, then scripts/compat_cell.py (real ``airflow dags test`` runs of the example DAGs against the
emulator, ``airflow providers list/hooks``, B4). Cells run ``--jobs`` at a time (default 2). Writes
compat/last-run.json and the README's Compatibility table; exits 1 if any cell failed, except a cell marked
``prerelease = true`` (the next Airflow, tried early): its problems are reported, never fatal.

Nothing is read from stdin; logs go to ``.compat/<cell>/`` (kept for CI artifacts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CELLS = ROOT / "compat" / "cells.toml"
LAST_RUN = ROOT / "compat" / "last-run.json"
LOGS = ROOT / ".compat"
COPIED = ("tests", "example_dags", "benchmarks", "compat", "scripts/compat_cell.py", "pyproject.toml")
"""What each cell gets from the checkout, without the package itself: the tests import the installed wheel."""
REPORTED = (
    "apache-airflow",
    "apache-airflow-task-sdk",
    "apache-airflow-providers-common-compat",
    "apache-airflow-providers-common-sql",
    "apache-airflow-providers-sqlite",
    "pydantic",
)

sys.path.insert(0, str(ROOT))
from scripts.readme_sections import replace_section  # noqa: E402


def cell_name(cell: dict[str, Any]) -> str:
    return f"airflow-{cell['airflow']}-py{cell['python']}"


def find_python(version: str) -> str:
    """The interpreter for ``3.X``: pyenv's newest 3.X.*, else ``python3.X`` on PATH (uv never downloads one)."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        listed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, check=False).stdout
        found = [v for v in listed.split() if re.fullmatch(rf"{re.escape(version)}\.\d+", v)]
        if found:
            best = max(found, key=lambda v: int(v.rsplit(".", 1)[1]))
            prefix = subprocess.run([pyenv, "prefix", best], capture_output=True, text=True, check=True).stdout
            return str(Path(prefix.strip()) / "bin" / f"python{version}")
    on_path = shutil.which(f"python{version}")
    if on_path:
        return on_path
    raise SystemExit(f"no Python {version} found (pyenv or python{version} on PATH)")


_CHILDREN: set[subprocess.Popen[Any]] = set()
"""Running children, each in its own process group: stopped with everything they started on SIGTERM/SIGINT."""


def _call(command: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``command`` in its own session (no stdin) and wait for it."""
    if _STOPPING:
        raise SystemExit("stopped")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
    _CHILDREN.add(process)
    try:
        process.communicate()
    finally:
        _CHILDREN.discard(process)
    return process


_STOPPING = False


def _stop_children(signum: int, _frame: Any) -> None:
    """SIGTERM to every child's process group, SIGKILL 10 s later (Airflow's task runner traps SIGTERM)."""
    global _STOPPING
    _STOPPING = True
    for sig, pause in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        for process in list(_CHILDREN):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + pause
        while _CHILDREN and time.monotonic() < deadline:
            time.sleep(0.2)
    raise SystemExit(128 + signum)


def _run(command: list[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        code = _call(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
        handle.write(f"(exit {code})\n")
    return code


def _pytest_counts(log: Path) -> dict[str, int]:
    summary = [line for line in log.read_text(errors="replace").splitlines() if re.search(r" in [\d.]+s", line)]
    counts: dict[str, int] = {}
    for number, word in re.findall(
        r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", summary[-1:][0] if summary else ""
    ):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return counts


def run_cell(cell: dict[str, Any], matrix: dict[str, Any], wheel: Path, work: Path, scratch: Path) -> dict[str, Any]:
    name = cell_name(cell)
    logs = LOGS / name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started = time.monotonic()
    result: dict[str, Any] = {**cell, "name": name, "problems": []}
    venv = scratch / name / "venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT", "AIRFLOW"))}
    env.pop("UV_FROZEN", None)

    install = logs / "install.log"
    step = time.monotonic()
    if _run(["uv", "venv", "--quiet", "--python", find_python(cell["python"]), str(venv)], install, env=env):
        result["problems"].append(f"uv venv failed: see {install.relative_to(ROOT)}")
        return result
    command = ["uv", "pip", "install", "--quiet", "--python", str(python), "--exclude-newer", cell["exclude_newer"]]
    for package in matrix["current_packages"]:
        command += ["--exclude-newer-package", f"{package}={matrix['current_as_of']}"]
    command += [f"apache-airflow=={cell['airflow']}", f"{wheel}[sqlite,parquet]", *matrix["requirements"]]
    if _run(command, install, env=env):
        result["problems"].append(f"uv pip install failed: see {install.relative_to(ROOT)}")
        return result
    result["install_s"] = round(time.monotonic() - step, 1)
    listed = subprocess.run(
        ["uv", "pip", "list", "--python", str(python), "--format", "json"], capture_output=True, text=True, env=env
    )
    versions = {p["name"]: p["version"] for p in json.loads(listed.stdout or "[]")}
    result["versions"] = {k: versions.get(k) for k in REPORTED if versions.get(k)}
    if versions.get("apache-airflow") != cell["airflow"]:
        result["problems"].append(f"resolved apache-airflow {versions.get('apache-airflow')}, not {cell['airflow']}")

    # One Airflow home per cell: pytest migrates its metadata DB, the DAG runs reuse it.
    home = scratch / name / "airflow-home"
    cell_env = {**env, "CEKURA_TEST_AIRFLOW_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    pytest_log = logs / "pytest.log"
    step = time.monotonic()
    command = [
        str(python),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--durations=10",
        "-m",
        "not postgres and not integration",
    ]
    command += [f"--deselect={node}" for node in matrix.get("deselect", [])]
    code = _run([*command, *matrix["tests"]], pytest_log, cwd=work, env=cell_env)
    result["pytest_s"] = round(time.monotonic() - step, 1)
    result["pytest"] = _pytest_counts(pytest_log)
    if code != 0:
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", pytest_log.read_text(errors="replace"), re.M)
        where = pytest_log.relative_to(ROOT)
        result["problems"].append(f"pytest subset failed ({', '.join(failed) or result['pytest']}): see {where}")

    dags_log = logs / "cell.log"
    step = time.monotonic()
    out, err = logs / "cell.stdout.log", logs / "cell.stderr.log"
    with out.open("w") as stdout, err.open("w") as stderr:
        done = _call(
            [str(python), str(work / "scripts" / "compat_cell.py")],
            cwd=work,
            env={**cell_env, "CEKURA_COMPAT_HOME": str(home)},
            stdout=stdout,
            stderr=stderr,
        )
    result["dags_s"] = round(time.monotonic() - step, 1)
    if (home / "cell.log").exists():
        shutil.copy(home / "cell.log", dags_log)
    try:
        report = json.loads(out.read_text().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        report = {"problems": [f"compat_cell.py crashed (exit {done.returncode}): {err.read_text()[-1500:]}"]}
    result["problems"] += report.pop("problems", [])
    result.update(report)
    result["seconds"] = round(time.monotonic() - started, 1)
    (logs / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _cell_row(result: dict[str, Any]) -> str:
    versions = result.get("versions", {})
    counts = result.get("pytest", {})
    tests = f"{counts.get('passed', 0)} passed" + "".join(
        f", {counts[k]} {k}" for k in ("failed", "error", "skipped") if counts.get(k)
    )
    runs = result.get("dag_runs", [])
    ok_runs = sum(1 for r in runs if r.get("state") == "success")
    providers = "yes" if result.get("providers_list") and result.get("providers_hooks") else "no"
    b4 = result.get("b4", {})
    b4_text = f"{b4['added_ms']:.0f} ms" if "added_ms" in b4 else "n/a"
    if result.get("prerelease"):
        status = "pass (pre-release)" if not result["problems"] else "fails (pre-release, not counted)"
    else:
        status = "**pass**" if not result["problems"] else "**FAIL**"
    sdk = versions.get("apache-airflow-task-sdk", "—")
    airflow = f"{result['airflow']} (pre-release)" if result.get("prerelease") else result["airflow"]
    return (
        f"| {airflow} | {result['python']} | {result['exclude_newer']} | {sdk} | "
        f"{versions.get('apache-airflow-providers-common-compat', '?')} | {tests} | {ok_runs}/{len(runs)} | "
        f"{providers} | {b4_text} | {status} |"
    )


def readme_table(run: dict[str, Any]) -> str:
    lines = [
        f"Generated by `make test-compat` on {run['date']} in {run['minutes']:.1f} min ({run['jobs']} cells at a time, "
        f"{run['cpus']} CPUs). Each cell is a fresh virtualenv: `apache-airflow==X` and its dependencies as of the "
        f"date shown (what its constraints file pins), the provider packages current (as of {run['current_as_of']}), "
        f"this provider's wheel. In each: the test subset listed in `compat/cells.toml` ({run['subset']}), real "
        f"`airflow dags test` runs of every example DAG against the emulator into SQLite ({run['dag_runs']}) with "
        "the warehouse checked after each, `airflow providers list` / `airflow providers hooks`, and B4: the import "
        "cost of the provider's modules after `import airflow.sdk` (on 2.11 after `from airflow import DAG`), "
        "median of 5 fresh interpreters with `.pyc` files present and Airflow's heap frozen before our imports "
        "(`gc.freeze()`, as the DAG processor does); goal < 50 ms.",
        "",
        "| Airflow | Python | resolved as of | task-sdk | common-compat | tests | example DAG runs | providers "
        "list/hooks | B4 | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(_cell_row(r) for r in run["cells"]),
    ]
    problems = [f"- {r['name']}: {p}" for r in run["cells"] for p in r["problems"]]
    if problems:
        lines += ["", "Problems in that run:", "", *problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("COMPAT_JOBS", "2")))
    parser.add_argument("--only", help="comma-separated substrings of cell names (e.g. 2.11,py3.13)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_children)
    signal.signal(signal.SIGINT, _stop_children)
    matrix = tomllib.loads(CELLS.read_text())
    cells = matrix["cell"]
    if args.only:
        cells = [c for c in cells if any(part in cell_name(c) for part in args.only.split(","))]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cekura-compat-") as tmp:
        scratch = Path(tmp)
        dist = scratch / "dist"
        subprocess.run(
            ["uv", "build", "--wheel", "--quiet", "-o", str(dist)], cwd=ROOT, check=True, stdin=subprocess.DEVNULL
        )
        wheel = next(dist.glob("*.whl"))
        work = scratch / "work"
        for item in COPIED:
            source, target = ROOT / item, work / item
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".work"))
            else:
                shutil.copy(source, target)
        print(f"compat: {len(cells)} cell(s), {args.jobs} at a time; logs in {LOGS}", flush=True)

        def one(cell: dict[str, Any]) -> dict[str, Any]:
            result = run_cell(cell, matrix, wheel, work, scratch)
            verdict = "pass" if not result["problems"] else "FAIL"
            if result.get("prerelease"):
                verdict += " (pre-release, not counted)"
            print(f"compat: {result['name']}: {verdict} in {result.get('seconds', 0):.0f} s", flush=True)
            for problem in result["problems"]:
                print(f"    {problem}", flush=True)
            return result

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, cells))
    minutes = (time.monotonic() - started) / 60
    run = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": round(minutes, 2),
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "current_as_of": matrix["current_as_of"],
        "subset": ", ".join(Path(t).stem.removeprefix("test_") for t in matrix["tests"]),
        "dag_runs": "; ".join(r["name"] for r in matrix["dag_run"]),
        "cells": results,
    }
    failed = [r["name"] for r in results if r["problems"] and not r.get("prerelease")]
    early = [r["name"] for r in results if r["problems"] and r.get("prerelease")]
    if not args.only:
        LAST_RUN.write_text(json.dumps(run, indent=2) + "\n")
        if not args.no_readme:
            replace_section("compatibility", readme_table(run))
    passed = sum(1 for r in results if not r["problems"])
    print(f"compat: {passed}/{len(results)} cells passed in {minutes:.1f} min", flush=True)
    if early:
        print(f"compat: pre-release cell(s) failing, not counted: {', '.join(early)}", flush=True)
    if failed:
        print(f"compat: FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
