"""The README is the package's index page and a manual for the first hour: its links work from the package
index (absolute, pointing at files and pages that exist; no network), its observe call passes the operator's
validation, and its offline recipe runs when pasted as is."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from airflow_provider_cekura.payloads import build_observe_payloads

README = (ROOT / "README.md").read_text(encoding="utf-8")
sys.path.insert(0, str(ROOT))
from scripts.readme_sections import DOCS_URL, REPO_URL  # noqa: E402

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _block(name: str) -> str:
    """The fenced code block between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    section = README.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]
    match = re.search(r"```\w*\n(.*?)```", section, re.S)
    assert match, name
    return match.group(1)


def test_links_are_absolute_and_resolve() -> None:
    headings = {_slug(m) for m in re.findall(r"^#+ (.+)$", README, re.M)}
    docs_pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    links = LINK.findall(README)
    assert len(links) > 20, links
    for target in links:
        if target.startswith("#"):
            assert target[1:] in headings, f"no heading for {target}"
        elif target.startswith(DOCS_URL + "/"):
            page = target[len(DOCS_URL) + 1 :].split("#")[0]
            if page in ("", "index.html"):
                continue
            if page.startswith("autoapi/"):
                module = page.removeprefix("autoapi/").removesuffix("/index.html").replace("/", ".")
                assert (ROOT / module.replace(".", "/")).is_dir() or (ROOT / f"{module.replace('.', '/')}.py").is_file()
                continue
            assert page.endswith(".html") and page.removesuffix(".html") in docs_pages, f"no docs page for {target}"
        elif target.startswith(REPO_URL):
            rest = target[len(REPO_URL) :].strip("/")
            if not rest:
                continue
            kind, _, path = rest.partition("/main/")
            assert kind in ("blob", "tree") and (ROOT / path).exists(), f"no file for {target}"
            assert (ROOT / path).is_dir() == (kind == "tree"), target
        else:
            # someone else's page (Airflow, Cekura, a PEP, an issue): absolute https, never a relative path
            assert target.startswith("https://"), f"relative or insecure link {target!r} breaks on the package index"


def test_project_urls_are_the_ones_the_readme_uses() -> None:
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Documentation"].rstrip("/") == DOCS_URL and urls["Source"].rstrip("/") == REPO_URL
    assert f"{DOCS_URL}/" in README and f"{REPO_URL}/" in README


@pytest.mark.parametrize(
    ("page", "heading"),
    [("README.md", "## Compatibility"), ("README.md", "### Reliability"), ("README.md", "### Benchmarks"),
     ("README.md", "## Testing your DAGs offline with the emulator"), ("README.md", "## User guide"),
     ("README.md", "### What a DAG run can make a worker send"),
     ("docs/connection.md", "## The Cekura connection"), ("docs/connection.md", "### Rate limits"),
     ("docs/export.md", "## Export: `CekuraCallLogsToSqlOperator`"), ("docs/export.md", "### Concurrent fetching"),
     ("docs/events.md", "## `CekuraCallLogsEvaluatedTrigger` (Airflow 3)")],
)  # fmt: skip
def test_sections_other_pages_and_scripts_link_to_are_kept(page: str, heading: str) -> None:
    assert f"\n{heading}\n" in (ROOT / page).read_text(encoding="utf-8")


def test_the_observe_call_is_complete_and_valid() -> None:
    call = json.loads(_block("observe-call"))
    payload = build_observe_payloads([call])[0]
    assert {"call_id", "agent", "timestamp", "transcript_json"} <= set(payload)
    turns = call["transcript_json"]
    assert {t["role"] for t in turns} == {"Main Agent", "Testing Agent"}
    assert all({"role", "content", "start_time", "end_time"} <= set(t) for t in turns)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_offline_recipe_runs_as_pasted(tmp_path: Path) -> None:
    """The README's DAG and call saved where the recipe says, then its shell block run with bash.

    The only change: port 8765 becomes a free port (other checkouts may run the recipe on this machine).
    """
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "first_dag.py").write_text(_block("first-dag"))
    (tmp_path / "dags" / "calls.jsonl").write_text(_block("observe-call"))
    recipe = _block("offline-recipe")
    port = str(_free_port())
    assert recipe.count("8765") == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CEKURA_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = subprocess.Popen(
        ["bash", "-e", "-c", recipe.replace("8765", port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=420)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-6000:]
    # the emulator printed the very line the recipe exports next
    export_line = next(line for line in recipe.splitlines() if line.startswith("export AIRFLOW_CONN_CEKURA_DEFAULT="))
    assert export_line.replace("8765", port) in output.splitlines(), output[:2000]
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        rows = db.execute("SELECT call_id, status FROM cekura_call_logs").fetchall()
        metrics = db.execute("SELECT COUNT(*) FROM cekura_call_metrics").fetchone()[0]
    assert [r[0] for r in rows] == [json.loads(_block("observe-call"))["call_id"]]
    assert rows[0][1] != "evaluating" and metrics > 0
    assert str(rows[0]) in output or rows[0][0] in output  # the recipe's own query shows it
    shutil.rmtree(tmp_path / "airflow-home", ignore_errors=True)
