"""The first hour, as a new user lives it: ``make demo`` as a normal (non-root) user, in a fresh clone the
user owns, with only the system's ``python3`` (PEP 668 protected) and ``make``: no ``uv`` on ``PATH``, no way to
build MariaDB's client (no ``pkg-config`` data for libmariadb, no C compiler), and no root to ``apt-get`` any of it.

Needs root to create the user (``cekura-firsthour``, kept with its home so its uv and pip caches make later
runs fast; PyPI must be reachable for the first one). The clone and its temporary directory are removed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

USER = "cekura-firsthour"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root on Linux to add a user"),
    pytest.mark.timeout(1800),
]


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
        return pwd.getpwnam(USER)


def as_user(command: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``command`` in bash as the unprivileged user, with exactly ``env`` (nothing inherited from root)."""
    return subprocess.run(
        ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="module")
def clone() -> Iterator[tuple[Path, dict[str, str]]]:
    """A ``git clone --no-hardlinks`` of this repository (its committed HEAD) in a directory the user owns."""
    user = _user()
    base = Path(tempfile.mkdtemp(prefix="cekura-first-hour-", dir="/var/tmp"))
    try:
        checkout = base / "airflow-provider-cekura"
        subprocess.run(
            ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(checkout)], check=True, capture_output=True
        )
        tmp = base / "tmp"
        tmp.mkdir()
        shutil.chown(base, user.pw_uid, user.pw_gid)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(base)], check=True)
        env = {
            "HOME": user.pw_dir,
            "USER": USER,
            "LANG": "C.UTF-8",
            "PATH": SYSTEM_PATH,  # no uv (root's is under /root), only the system's python3
            "TMPDIR": str(tmp),
            "PKG_CONFIG_LIBDIR": str(tmp / "no-pkgconfig"),  # no .pc files: libmariadb is not findable
            "PKG_CONFIG_PATH": "",
            "CC": "/bin/false",  # and nothing could be compiled anyway
        }
        for key in ("PIP_FIND_LINKS", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "UV_INDEX_URL"):
            if key in os.environ:
                env[key] = os.environ[key]
        yield checkout, env
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_user_has_no_uv_no_mariadb_headers_and_a_pep668_python(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    probe = as_user(
        "command -v uv; pkg-config --exists libmariadb && echo HEADERS; python3 -c 'import sys; print(sys.version_info >= (3, 11))';"
        " python3 -m pip install --quiet --dry-run uv 2>&1 | grep -c externally-managed; id -u",
        checkout,
        env,
        timeout=120,
    )
    lines = probe.stdout.split()
    assert "HEADERS" not in lines and not any(line.endswith("/uv") for line in lines), probe.stdout
    assert lines[0] == "True", probe.stdout
    assert lines[-1] != "0", "not an unprivileged user"


def test_make_demo_as_a_normal_user(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    done = as_user("make demo", checkout, env, timeout=1500)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    assert "result: OK" in output, output[-4000:]
    assert "uv is not on PATH: installing it into" in output  # bootstrapped, not found
    assert (checkout / ".tools" / "bin" / "uv").exists()
    # only the demo's packages: no MySQL driver, nothing built
    site = next((checkout / ".venv" / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("MySQLdb")) and not list(site.glob("mysqlclient*")), "a MySQL driver was installed"
    assert not list(site.glob("pytest")), "make demo installed the test tools"
    # "failure" is explained next to the failed evaluations
    assert "a failure is a call that went badly, not an error" in output
    # the emulator's temporary directory is gone with the emulator
    leftovers = [p.name for p in Path(env["TMPDIR"]).iterdir() if p.name.startswith("cekura-emulator-")]
    assert leftovers == [], leftovers
    # a second run sends nothing twice
    again = as_user("make demo", checkout, env, timeout=900)
    assert again.returncode == 0 and "already in Cekura" in again.stdout, (again.stdout + again.stderr)[-4000:]


def test_make_test_servers_run_as_a_normal_user(clone: tuple[Path, dict[str, str]]) -> None:
    """``make test`` as a normal user: with the servers' packages installed, Postgres and MariaDB start as that
    user (and stop); a missing package is named with the exact command to install it, before anything runs."""
    checkout, env = clone
    started = as_user(
        'bash scripts/with_test_servers.sh bash -c \'echo "PG=$CEKURA_TEST_POSTGRES_URI"; echo "DB=$CEKURA_TEST_MARIADB_URI"\'',
        checkout,
        env,
        timeout=300,
    )
    assert started.returncode == 0, (started.stdout + started.stderr)[-4000:]
    assert "PG=postgresql://postgres@127.0.0.1:" in started.stdout, started.stdout
    assert "DB=mysql://cekura:" in started.stdout and "client=mysql-connector-python" in started.stdout
    assert not (checkout / ".testservers" / "postgres.datadir").exists()  # stopped and removed
    assert not (checkout / ".testservers" / "mariadb.datadir").exists()

    told = as_user("source scripts/_server_dirs.sh; apt_install postgresql mariadb-server", checkout, env, timeout=60)
    assert told.returncode == 1
    assert "sudo apt-get install -y --no-install-recommends postgresql mariadb-server" in told.stderr, told.stderr
