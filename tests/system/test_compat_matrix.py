"""compat/cells.toml is complete: every example DAG and every listed test exists in the matrix (checked in
``make test``, so that a new example DAG or test file fails here before `make test-compat` runs)."""

from __future__ import annotations

import sys
import tomllib
from datetime import date

import pytest
from conftest import ROOT

CELLS = tomllib.loads((ROOT / "compat" / "cells.toml").read_text())


def test_cells_name_a_version_a_python_and_a_date() -> None:
    assert CELLS["cell"], "no cell"
    names = set()
    for cell in CELLS["cell"]:
        assert set(cell) >= {"airflow", "python", "exclude_newer"}, cell
        assert cell["airflow"].count(".") == 2 and cell["python"].startswith("3."), cell
        date.fromisoformat(cell["exclude_newer"])
        names.add((cell["airflow"], cell["python"]))
    assert len(names) == len(CELLS["cell"]), "a cell is listed twice"
    date.fromisoformat(CELLS["current_as_of"])


def test_every_example_dag_runs_in_the_matrix() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from compat_cell import _example_dag_ids  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    example_ids = _example_dag_ids()
    assert len(example_ids) >= 3, example_ids
    not_run = set(CELLS.get("not_run", []))  # asset-triggered: run in the deployment test instead
    assert not_run <= example_ids, not_run - example_ids
    assert example_ids <= {run["dag_id"] for run in CELLS["dag_run"]} | not_run


@pytest.mark.parametrize("node", CELLS["tests"] + CELLS.get("deselect", []))
def test_listed_tests_exist(node: str) -> None:
    path, _, name = node.partition("::")
    assert (ROOT / path).is_file(), node
    if name:
        assert f"def {name}(" in (ROOT / path).read_text(), node


def test_every_check_has_an_expectation() -> None:
    kinds = {"equals", "sample_calls_between", "sample_calls_in_data_interval"}
    for run in CELLS["dag_run"]:
        assert {"name", "dag_id", "logical_date", "warehouse"} <= set(run), run
        for check in run.get("checks", []):
            assert "sql" in check and kinds & set(check), (run["name"], check)


def test_a_prerelease_cell_is_reported_and_never_fails_the_matrix() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import compat  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    prereleases = [c for c in CELLS["cell"] if c.get("prerelease")]
    assert [c["airflow"] for c in prereleases] == ["3.4.0b2"]
    failing = {**prereleases[0], "name": "x", "problems": ["it broke"], "versions": {}, "pytest": {}}
    row = compat._cell_row(failing)
    assert row.startswith("| 3.4.0b2 (pre-release) |") and "fails (pre-release, not counted)" in row
    assert "FAIL**" in compat._cell_row({**failing, "prerelease": False})
