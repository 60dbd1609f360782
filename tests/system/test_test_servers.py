"""The test servers' scripts work from a checkout in a private (0700) directory, as root too.

The servers run as their own users (postgres, mysql), which cannot enter such a directory: their data
lives in the system's temporary directory, in a directory they own, and the checkout records where.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture
def private_checkout() -> Iterator[Path]:
    """The scripts in ``<mkdtemp, mode 0700>/checkout/scripts`` (all the server scripts need)."""
    private = Path(tempfile.mkdtemp(prefix="cekura-private-"))
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        checkout = private / "checkout"
        shutil.copytree(ROOT / "scripts", checkout / "scripts")
        yield checkout
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run(checkout: Path, *args: str) -> str:
    done = subprocess.run(
        ["bash", *args], cwd=checkout, capture_output=True, text=True, timeout=180, check=False, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _query(server: str, uri: str) -> object:
    if server == "postgres":
        import psycopg2

        conn = psycopg2.connect(uri)
    else:
        from support.transfer import mariadb_query

        return mariadb_query(uri)("SELECT 1")[0][0]
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0]  # type: ignore[index]
    finally:
        conn.close()


@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_server_starts_from_a_private_checkout_with_its_data_outside(private_checkout: Path, server: str) -> None:
    script = f"scripts/{server}.sh"
    try:
        uri = _run(private_checkout, script, "start")
        datadir = Path((private_checkout / ".testservers" / f"{server}.datadir").read_text().strip())
        assert (private_checkout / ".testservers" / f"{server}.uri").read_text().strip() == uri
        assert not datadir.is_relative_to(private_checkout.parent)
        assert datadir.is_relative_to(Path(os.environ.get("CEKURA_SERVER_TMP", "/tmp")))
        if os.getuid() == 0:
            owner = {"postgres": "postgres", "mariadb": "mysql"}[server]
            assert datadir.owner() == owner
        assert _query(server, uri) == 1
        assert _run(private_checkout, script, "start") == uri  # already running: the same server
    finally:
        _run(private_checkout, script, "stop")
    assert not datadir.exists()
    assert not (private_checkout / ".testservers" / f"{server}.uri").exists()
