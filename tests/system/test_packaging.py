"""What a ``pip install airflow-provider-cekura`` user gets: the built archives, installed in a clean venv.

Builds the wheel and the sdist with ``uv build``, checks that both carry LICENSE, then installs the
wheel into a fresh virtualenv with only its declared dependencies, at the versions of ``uv.lock``
(``uv export --no-dev`` as constraints: deterministic, and fast from uv's cache), imports every
public module there and runs ``airflow providers list``.

Marked ``packaging``: it costs about half a minute with a warm uv cache (the first run on a
machine downloads the dependencies once). Deselect with ``-m "not packaging"``.
"""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import airflow_provider_cekura
from tests.conftest import ROOT

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

UV = shutil.which("uv")
PUBLIC_MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(airflow_provider_cekura.__path__, "airflow_provider_cekura.")
    if not any(part.startswith("_") for part in name.split(".")[1:])
)


def _run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert result.returncode == 0, (
        f"{args[:3]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if UV is None:
        pytest.fail("uv is not on PATH (make setup installs it)")
    out = tmp_path_factory.mktemp("dist")
    _run(UV, "build", "--quiet", "--out-dir", out, ROOT)
    return out


def test_wheel_and_sdist_carry_the_license(dist: Path) -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in license_text
    version = airflow_provider_cekura.__version__
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(licenses) == 1, names
        assert archive.read(licenses[0]).decode() == license_text
        metadata = archive.read(f"airflow_provider_cekura-{version}.dist-info/METADATA").decode()
        assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
        assert "airflow_provider_cekura/py.typed" in names
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(f"airflow_provider_cekura-{version}/LICENSE")
        assert member is not None and member.read().decode() == license_text


def test_wheel_installs_alone_imports_and_registers_the_provider(dist: Path, tmp_path: Path) -> None:
    assert UV is not None
    (wheel,) = dist.glob("*.whl")
    constraints = tmp_path / "constraints.txt"
    _run(UV, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--quiet", "-o", constraints)
    venv = tmp_path / "venv"
    _run(UV, "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _run(UV, "pip", "install", "--quiet", "--python", python, "--constraint", constraints, wheel)

    # only the declared dependencies: no dev tools, no optional extras
    installed = {p["name"].lower() for p in json.loads(_run(UV, "pip", "list", "--python", python, "--format", "json"))}
    assert {"airflow-provider-cekura", "apache-airflow", "apache-airflow-providers-common-sql", "requests"} <= installed
    assert not installed & {"pytest", "schemathesis", "cekura", "apache-airflow-providers-sqlite", "psycopg2-binary"}

    env = {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "home"),
    }
    script = (
        "import importlib, json, pkgutil, airflow_provider_cekura as p;"
        "names = sorted(n for _, n, _ in pkgutil.walk_packages(p.__path__, 'airflow_provider_cekura.')"
        " if not any(s.startswith('_') for s in n.split('.')[1:]));"
        "[importlib.import_module(n) for n in names];"
        "print(json.dumps({'file': p.__file__, 'modules': names, 'version': p.__version__}))"
    )
    seen = json.loads(_run(python, "-c", script, env=env, cwd=tmp_path))
    assert seen["modules"] == PUBLIC_MODULES and len(PUBLIC_MODULES) >= 15
    assert seen["file"].startswith(str(venv)) and seen["version"] == airflow_provider_cekura.__version__

    providers = _run(venv / "bin" / "airflow", "providers", "list", "--output", "json", env=env, cwd=tmp_path)
    listed = {p["package_name"]: p for p in json.loads(providers[providers.index("[") :])}
    assert listed["airflow-provider-cekura"]["version"] == airflow_provider_cekura.__version__
