"""B4 — import cost: what importing the provider's task modules adds to ``import airflow.sdk``.

Every DAG file that uses an operator pays this at each parse. Each sample is a
fresh interpreter that times ``import airflow.sdk`` and then our modules with
``time.perf_counter`` (interpreter start-up excluded); the median of the
samples is reported. ``PYTHONDONTWRITEBYTECODE`` is inherited from the
environment (``make bench`` sets it to 1, so nothing is served from a cache
written by an earlier sample unless it was already on disk).

Between the two the probe calls ``gc.freeze()``, as Airflow's DAG processor does
before it forks the parsers: Airflow's import leaves a full collection of its
own heap due, and without the freeze it fell within our imports on Python 3.12
only (60 ms of the 65-71 ms the 3.3.2/py3.12 matrix cell read), a cost of where
the collector's counters stood, not of our modules. Collections our imports
cause still count; their pauses are reported beside the figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import ROOT, Section, median

MODULES = (
    "airflow_provider_cekura.operators.observe",
    "airflow_provider_cekura.sensors.call_log",
    "airflow_provider_cekura.transfers.call_logs_to_sql",
)
BASELINES = {
    "import airflow.sdk": "import airflow.sdk",
    "from airflow.sdk import DAG, BaseOperator, BaseSensorOperator, BaseHook": (
        "from airflow.sdk import DAG, BaseOperator, BaseSensorOperator, BaseHook"
    ),
}
GOAL_MS = 50.0
AIRFLOW_2_BASELINE = "from airflow import DAG"
"""What a DAG file on Airflow 2 pays anyway (``airflow.sdk`` does not exist there)."""

_PROBE = r"""
import gc, importlib, json, sys, time
t0 = time.perf_counter()
exec({baseline!r})
# Airflow's own heap out of the collector's reach, as the DAG processor has it before it forks a parser
# (gc.freeze(), apache/airflow#60505): otherwise a full collection of that heap, which Airflow's import
# left due, lands in whichever import comes next (ours on Python 3.12: +60 ms). Collections that our
# imports cause still count, and their pauses are reported ("gc").
gc.freeze()
pauses = []
def _gc(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append(time.perf_counter() - started[0])
gc.callbacks.append(_gc)
t1 = time.perf_counter()
sys.stderr.write("-- cekura-bench-marker --\n"); sys.stderr.flush()
missing = []
for name in {modules!r}:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("airflow_provider_cekura"):
            missing.append(name)
        else:
            raise
t2 = time.perf_counter()
gc.callbacks.remove(_gc)
print(json.dumps({{"baseline": t1 - t0, "added": t2 - t1, "gc": sum(pauses), "missing": missing}}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _sample(baseline: str, modules: tuple[str, ...], *, importtime: bool = False) -> tuple[dict[str, Any], str]:
    code = _PROBE.format(baseline=baseline, modules=modules)
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"import probe failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _heaviest(stderr: str, limit: int = 8) -> list[tuple[str, int, int]]:
    """Modules first imported by our modules: (name, self us, cumulative us), heaviest cumulative first,
    keeping only the outermost module of each import chain that is not ours (so nothing is counted twice)."""
    after = stderr.split("-- cekura-bench-marker --", 1)[-1]
    entries: list[tuple[str, int, int, int]] = []
    for line in after.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3:
            continue
        raw = fields[2]
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        entries.append((raw.strip(), int(fields[0]), int(fields[1]), depth))
    # importtime prints children before parents; a module's parent is the next entry with a smaller depth
    result: list[tuple[str, int, int]] = []
    for index, (name, self_time, cumulative, depth) in enumerate(entries):
        if name.startswith("airflow_provider_cekura"):
            continue
        parent = next((e for e in entries[index + 1 :] if e[3] < depth), None)
        if cumulative >= 1000 and (parent is None or parent[0].startswith("airflow_provider_cekura")):
            result.append((name, self_time, cumulative))
    result.sort(key=lambda e: e[2], reverse=True)
    return result[:limit]


def _ours(stderr: str) -> int:
    """Self time (us) of our own modules after the marker (compiling them included when there is no cache)."""
    after = stderr.split("-- cekura-bench-marker --", 1)[-1]
    total = 0
    for line in after.splitlines():
        fields = line[len("import time:") :].split("|") if line.startswith("import time:") else []
        if len(fields) == 3 and fields[2].strip().startswith("airflow_provider_cekura"):
            total += int(fields[0])
    return total


def _primary_baseline() -> str:
    """``import airflow.sdk`` on Airflow 3, ``from airflow import DAG`` on Airflow 2 (asked in a child)."""
    code = "import airflow, sys; sys.stdout.write(airflow.__version__)"
    version = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return BASELINES["import airflow.sdk"] if not version.stdout.startswith("2.") else AIRFLOW_2_BASELINE


def measure(samples: int = 3, *, warmup: bool = False) -> dict[str, Any]:
    """The headline figure alone, for the compatibility matrix: median ms over ``samples`` interpreters.

    :param warmup: run one sample first and discard it (with bytecode writing allowed, the later samples then
        load ``.pyc`` files, as a deployment whose installer compiled them does).
    """
    baseline = _primary_baseline()
    if warmup:
        _sample(baseline, MODULES)
    results = [_sample(baseline, MODULES)[0] for _ in range(samples)]
    return {
        "baseline": baseline,
        "baseline_ms": round(median([r["baseline"] for r in results]) * 1000, 1),
        "added_ms": round(median([r["added"] for r in results]) * 1000, 1),
        "added_gc_ms": round(median([r["gc"] for r in results]) * 1000, 1),
        "goal_ms": GOAL_MS,
        "samples": samples,
        "bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE") != "1",
        "missing": results[0]["missing"],
    }


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    samples = 1 if smoke else 5
    baselines = dict(list(BASELINES.items())[:1]) if smoke else BASELINES
    section = Section(
        "B4 — import cost",
        "Time that importing `operators.observe`, `sensors.call_log` and `transfers.call_logs_to_sql` adds "
        f"after the baseline import, measured inside fresh interpreters with `time.perf_counter` (median of "
        f"{samples}; samples of the baselines interleaved; interpreter start-up excluded). The goal applies to "
        "the bare `import airflow.sdk` baseline; the second baseline is what a DAG file that already uses the "
        "SDK's classes has paid anyway.",
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in baselines}
    stderr = ""
    if smoke:  # one interpreter: the -X importtime run gives the figures too (they are meaningless in a smoke run)
        sample, stderr = _sample(BASELINES["import airflow.sdk"], MODULES, importtime=True)
        results["import airflow.sdk"].append(sample)
    for _ in range(0 if smoke else samples):
        for name, code in baselines.items():
            results[name].append(_sample(code, MODULES)[0])
    missing = results["import airflow.sdk"][0]["missing"]
    measured = tuple(m for m in MODULES if m not in missing)
    suffix = f" (without {', '.join(m.rsplit('.', 1)[-1] for m in missing)})" if missing else ""
    for index, name in enumerate(baselines):
        base_ms = median([r["baseline"] for r in results[name]]) * 1000
        added_ms = median([r["added"] for r in results[name]]) * 1000
        gc_ms = median([r["gc"] for r in results[name]]) * 1000
        section.add(f"`{name}` alone (baseline)", f"{base_ms:.0f} ms")
        metric = f"added by our modules after `{name}`{suffix}"
        if index == 0:
            section.check(metric, added_ms, GOAL_MS, higher_is_better=False, fmt=".0f", unit=" ms")
        else:
            section.add(metric, f"{added_ms:.0f} ms")
        section.notes.append(f"Garbage collection within that after `{name}` (median): {gc_ms:.1f} ms.")
    for name in missing:
        section.unavailable(
            f"`{name}`", f"<= {GOAL_MS:.0f} ms with the others", f"`{name}` is not available (not in the tree yet)."
        )
    if not stderr:
        _, stderr = _sample(BASELINES["import airflow.sdk"], measured, importtime=True)
    section.notes.append(
        f"Self time of our own modules (`python -X importtime`, one run): {_ours(stderr) / 1000:.0f} ms."
    )
    heavy = _heaviest(stderr)
    if heavy:
        listing = ", ".join(f"`{n}` {c / 1000:.0f} ms" for n, _, c in heavy)
        section.notes.append(
            "Heaviest third-party imports first pulled in by our modules after `import airflow.sdk` "
            f"(cumulative, same run): {listing}."
        )
    flag = os.environ.get("PYTHONDONTWRITEBYTECODE", "(unset)")
    section.notes.append(
        f"PYTHONDONTWRITEBYTECODE={flag} and the virtualenv has no `.pyc` files, so every sample compiles "
        "Airflow and our modules from source: that is why the baseline takes seconds."
        if flag == "1"
        else f"PYTHONDONTWRITEBYTECODE={flag}."
    )
    section.seconds = time.perf_counter() - started
    return section
