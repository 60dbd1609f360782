"""The airflow CLI sees the provider (a subprocess per command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT  # not tests.conftest: that would import (and run) it twice

import airflow_provider_cekura


def airflow_cli(*args: str) -> str:
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_airflow_providers_list_shows_the_provider() -> None:
    out = airflow_cli("providers", "list", "--output", "json")
    rows: list[dict[str, Any]] = json.loads(out[out.index("[") :])
    ours = [r for r in rows if r.get("package_name") == "airflow-provider-cekura"]
    assert ours, [r.get("package_name") for r in rows]
    assert ours[0]["version"] == airflow_provider_cekura.__version__


@pytest.mark.slow
def test_airflow_providers_hooks_shows_the_connection_type() -> None:
    out = airflow_cli("providers", "hooks", "--output", "json")
    rows: list[dict[str, Any]] = json.loads(out[out.index("[") :])
    ours = [r for r in rows if r.get("connection_type") == "cekura"]
    assert ours, out[-2000:]
    assert ours[0]["class"] == "airflow_provider_cekura.hooks.cekura.CekuraHook"
    assert ours[0]["package_name"] == "airflow-provider-cekura"
    assert ours[0]["hook_name"] == "Cekura"
    assert ours[0]["conn_id_attribute_name"] == "cekura_conn_id"
