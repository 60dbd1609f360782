"""Provider discovery: get_provider_info(), the entry point as Airflow's CLI sees it, cheap import."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from conftest import ROOT  # not tests.conftest: that would import (and run) it twice

import airflow_provider_cekura
from airflow_provider_cekura import get_provider_info


def test_provider_info_keys() -> None:
    info = get_provider_info()
    for key in ("package-name", "name", "description", "versions", "integrations", "hooks", "operators"):
        assert key in info
    assert info["package-name"] == "airflow-provider-cekura"
    assert info["versions"] == [airflow_provider_cekura.__version__]
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == "cekura"
    assert conn_type["hook-class-name"] == "airflow_provider_cekura.hooks.cekura.CekuraHook"
    behaviour = conn_type["ui-field-behaviour"]
    assert behaviour["relabeling"]["password"] == "API key"
    assert "password" not in behaviour["hidden-fields"]
    assert {"project_id", "connect_timeout", "read_timeout"} <= set(conn_type["conn-fields"])
    assert {"max_requests_per_second", "rate_limit_max_wait", "rate_limit_store"} <= set(conn_type["conn-fields"])
    assert conn_type["conn-fields"]["rate_limit_store"]["schema"]["format"] == "password"  # it may hold one
    for name, spec in conn_type["conn-fields"].items():
        assert {"label", "schema"} <= set(spec), name
    json.dumps(info)  # plain data


def test_provider_info_modules_exist() -> None:
    """Every module named in the provider info exists (found without importing the heavy ones)."""
    import importlib
    import importlib.util

    info = get_provider_info()
    modules = [
        m for kind in ("hooks", "operators", "sensors", "triggers") for e in info[kind] for m in e["python-modules"]
    ]
    modules += [t["python-module"] for t in info["transfers"]]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing
    hook_module, _, hook_class = info["connection-types"][0]["hook-class-name"].rpartition(".")
    hook = getattr(importlib.import_module(hook_module), hook_class)
    assert hook.conn_type == info["connection-types"][0]["connection-type"]
    assert hook.default_conn_name == "cekura_default"
    assert hook.conn_name_attr == "cekura_conn_id"


def test_entry_point_is_registered() -> None:
    eps = [
        ep
        for ep in metadata.entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_cekura")
    ]
    assert [ep.value for ep in eps] == ["airflow_provider_cekura:get_provider_info"]
    assert eps[0].load()() == get_provider_info()


def test_importing_the_package_does_not_import_airflow() -> None:
    code = (
        "import sys, airflow_provider_cekura as p\n"
        "p.get_provider_info()\n"
        "import airflow_provider_cekura.testing\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
