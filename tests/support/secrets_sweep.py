"""The secrets sweep: gather what a deployment or a DAG run left behind, and find a key in it.

Used by tests/system/test_secrets.py (an in-process DAG run) and the deployment tests in
tests/integration (their component logs, task logs and the whole Postgres metadata database).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path


def leaks(key: str, places: Mapping[str, str | bytes]) -> list[str]:
    """The names of the places whose text (or raw bytes) contain ``key``."""
    raw = key.encode()
    return [name for name, value in places.items() if (raw if isinstance(value, bytes) else key) in value]


def files_under(*roots: Path) -> dict[str, bytes]:
    """Every file below ``roots``, as raw bytes (logs, SQLite databases, generated configs, ...)."""
    return {str(path): path.read_bytes() for root in roots for path in root.rglob("*") if path.is_file()}


def postgres_tables(uri: str) -> dict[str, bytes]:
    """Every row of every table of a Postgres database, one entry per table.

    Each value is written out as text, except bytes (``bytea``), which are kept raw, so a key
    stored in a binary column is found too. Encrypted columns (the Fernet-encrypted trigger kwargs)
    can only be checked after decrypting them: see the tests.
    """
    import psycopg2

    conn = psycopg2.connect(uri, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            tables = cur.fetchall()
            dump: dict[str, bytes] = {}
            for schema, table in tables:
                cur.execute(f'SELECT * FROM "{schema}"."{table}"')
                dump[f"table {schema}.{table}"] = b"\n".join(_row_bytes(row) for row in cur.fetchall())
            return dump
    finally:
        conn.close()


def _row_bytes(row: Iterable[object]) -> bytes:
    parts = [bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode() for v in row]
    return b"\t".join(parts)
