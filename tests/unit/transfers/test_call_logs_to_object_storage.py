"""CekuraCallLogsToObjectStorageOperator against the emulator, on file:// and on a real S3 API (moto's server on
127.0.0.1), read back with pyarrow and DuckDB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_API_KEY

from airflow_provider_cekura.exceptions import CekuraError
from airflow_provider_cekura.transfers.call_logs_to_object_storage import CekuraCallLogsToObjectStorageOperator
from support.transfer import CALL_LOGS, START, api_call_logs, as_datetime, check_row, sqlite_warehouse, window

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
duckdb = pytest.importorskip("duckdb")

PARTITION = "date=2026-03-01/hour=00"
"""The partition of a window starting at START (2026-03-01T00:00Z)."""


@dataclass
class Store:
    """Where a test exports: a root URL, the Airflow connection (if any) and an fsspec filesystem to read back."""

    kind: str
    url: str
    conn_id: str | None
    fs: Any
    root: str  # the root in the filesystem's terms
    local: Path  # where the files are read by DuckDB (file://: the root itself; s3://: a downloaded copy)

    def sub(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}/"

    def names(self, dataset: str = "call_logs", partition: str = PARTITION) -> list[str]:
        """Every object name in a partition, hidden ones included."""
        self.fs.invalidate_cache()
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/{dataset}/{partition}"))
        except FileNotFoundError:
            return []

    def manifest(self, dataset: str = "call_logs", partition: str = PARTITION) -> dict[str, Any] | None:
        path = f"{self.root}/{dataset}/{partition}/_manifest.json"
        self.fs.invalidate_cache()
        if not self.fs.exists(path):
            return None
        return json.loads(self.fs.cat_file(path))

    def table(self, dataset: str = "call_logs", partition: str = PARTITION) -> Any:
        """The dataset's rows in the partition, read with pyarrow from the files the manifest lists."""
        manifest = self.manifest(dataset, partition)
        assert manifest is not None
        tables = []
        for entry in manifest["files"]:
            with self.fs.open(f"{self.root}/{dataset}/{partition}/{entry['path']}", "rb") as handle:
                table = pq.read_table(handle)
            assert table.num_rows == entry["rows"]
            tables.append(table)
        return pa.concat_tables(tables) if tables else None

    def download(self, dataset: str = "call_logs") -> Path:
        """The dataset's directory on local disk (for DuckDB, which reads S3 only through an extension)."""
        if self.kind == "file":
            return self.local / dataset
        target = self.local / uuid.uuid4().hex / dataset
        target.mkdir(parents=True)
        self.fs.invalidate_cache()
        self.fs.get(f"{self.root}/{dataset}/", str(target), recursive=True)
        return target


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """A real S3 API over HTTP on 127.0.0.1 (moto's ThreadedMotoServer), stopped at the end."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "file":
        from fsspec.implementations.local import LocalFileSystem

        root = tmp_path / "lake"
        root.mkdir()
        return Store("file", f"file://{root}", None, LocalFileSystem(), str(root), root)
    for module in ("moto.server", "s3fs", "airflow.providers.amazon.aws.fs.s3"):
        pytest.importorskip(module, reason="the S3 tests need the dev group's moto, s3fs and amazon provider")
    endpoint = request.getfixturevalue("moto_server")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    extra = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_MOTO", json.dumps(conn))
    import s3fs

    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
    )
    fs.mkdir(bucket)
    (tmp_path / "s3copy").mkdir()
    return Store("s3", f"s3://{bucket}/cekura", "aws_moto", fs, f"{bucket}/cekura", tmp_path / "s3copy")


def export(store: Store, *, metrics: bool = True, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("path", store.sub("call_logs"))
    if metrics:
        kwargs.setdefault("metrics_path", store.sub("metrics"))
    op = CekuraCallLogsToObjectStorageOperator(task_id="export", conn_id=store.conn_id, **kwargs)
    return op.execute({})  # type: ignore[arg-type]


def check_exact(table: Any, expected: dict[int, dict]) -> None:
    """The table holds exactly ``expected``, with the API's values."""
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == len(expected)
    assert set(rows) == set(expected)
    for cid, call_log in expected.items():
        row = rows[cid]
        check_row(row, call_log, json_text=True)
        assert row["success"] is call_log["success"]  # a real bool (or None), not 0/1
        assert row["updated_at"] == as_datetime(call_log["updated_at"])  # an aware datetime, not text
        assert row["timestamp"] == as_datetime(call_log["timestamp"])


def check_metrics(table: Any, expected: dict[int, dict]) -> None:
    rows = {(r["call_log_id"], r["metric_id"]): r for r in table.to_pylist()}
    wanted = {(cid, m["id"]): m for cid, c in expected.items() for m in c["metrics"]}
    assert len(rows) == table.num_rows and set(rows) == set(wanted)
    for key, metric in wanted.items():
        row = rows[key]
        assert (row["name"], row["type"], row["score"], row["value"]) == (
            metric["name"],
            metric["type"],
            metric["score"],
            metric["value"],
        )
        assert json.loads(row["explanation"]) == metric["explanation"]


@pytest.mark.slow
def test_parquet_rows_equal_the_api_with_documented_types(emulator: Any, store: Store) -> None:
    emulator.seed(230, start=START - timedelta(hours=1), end=START + timedelta(hours=3))
    result = export(store, page_size=50, max_rows_per_file=70, row_group_rows=30, **window(0, 2))
    expected = api_call_logs(emulator, START, START + timedelta(hours=2))
    assert result["rows"] == len(expected) > 100
    assert result["metric_rows"] == sum(len(c["metrics"]) for c in expected.values())
    assert result["manifest"] == f"{store.sub('call_logs').rstrip('/')}/{PARTITION}/_manifest.json"

    manifest = store.manifest()
    assert manifest is not None
    assert manifest["schema_version"] == 1 and manifest["format"] == "parquet" and manifest["rows"] == len(expected)
    assert manifest["window"] == {"start": START.isoformat(), "end": (START + timedelta(hours=2)).isoformat()}
    # Deterministic names, bounded rows per file, no temporary file left.
    count = -(-len(expected) // 70)
    assert [f["path"] for f in manifest["files"]] == [f"part-{n:05d}.parquet" for n in range(count)]
    assert all(f["rows"] <= 70 for f in manifest["files"])
    assert store.names() == sorted(["_manifest.json", *(f["path"] for f in manifest["files"])])

    table = store.table()
    types = {field.name: field.type for field in table.schema}
    assert types["id"] == pa.int64() and types["agent"] == pa.int64()
    assert types["timestamp"] == pa.timestamp("us", tz="UTC") == types["exported_at"] == types["updated_at"]
    assert types["success"] == pa.bool_() and types["is_reviewed"] == pa.bool_()
    assert types["metrics"] == pa.string() and types["metadata"] == pa.string()
    assert table.schema.names == [c["name"] for c in manifest["columns"]]
    with store.fs.open(f"{store.root}/call_logs/{PARTITION}/part-00000.parquet", "rb") as handle:
        assert pq.ParquetFile(handle).metadata.num_row_groups == 3  # 70 rows in groups of 30: pages as they came
    check_exact(table, expected)
    metrics = store.table("metrics")
    assert {f.name: f.type for f in metrics.schema}["score"] == pa.float64()
    check_metrics(metrics, expected)

    # DuckDB over the whole dataset, Hive partitions included: every call log exactly once.
    local = store.download()
    with duckdb.connect() as db:
        got = db.execute(
            "SELECT count(*), count(DISTINCT id), min(date), min(hour), typeof(min(timestamp)) "
            f"FROM read_parquet('{local}/**/*.parquet', hive_partitioning = true)"
        ).fetchone()
    assert got[:2] == (len(expected), len(expected))
    assert (str(got[2]), int(got[3])) == ("2026-03-01", 0)
    assert got[4] == "TIMESTAMP WITH TIME ZONE"


@pytest.mark.slow
def test_rerun_replaces_the_window_and_leaves_other_windows(emulator: Any, store: Store) -> None:
    emulator.seed(120, start=START, end=START + timedelta(hours=2))
    first = export(store, page_size=25, max_rows_per_file=20, **window(0, 1))
    other = export(store, page_size=25, **window(1, 2))
    other_manifest = store.manifest(partition="date=2026-03-01/hour=01")
    assert len(first["files"]) > 1 and other["rows"] > 0

    # Re-evaluated call logs (another metric) and fewer, larger files: the rerun replaces every file of the window.
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    emulator.metric_catalog = [{"id": 201, "name": "Empathy", "type": "rating"}]
    hour = api_call_logs(emulator, START, START + timedelta(hours=1))
    for agent in {c["agent"] for c in hour.values()}:
        CekuraHook().rerun_evaluation(sorted(i for i, c in hour.items() if c["agent"] == agent), agent_id=agent)
    emulator.finish_evaluations()
    again = export(store, page_size=25, max_rows_per_file=1000, **window(0, 1))
    assert again["rows"] == first["rows"] and len(again["files"]) == 1
    assert store.names() == ["_manifest.json", "part-00000.parquet"]
    assert store.names("metrics") == ["_manifest.json", "part-00000.parquet"]
    expected = api_call_logs(emulator, START, START + timedelta(hours=1))
    assert {m["name"] for c in expected.values() for m in c["metrics"]} == {"Empathy"}
    check_exact(store.table(), expected)
    check_metrics(store.table("metrics"), expected)
    assert store.manifest(partition="date=2026-03-01/hour=01") == other_manifest

    local = store.download()
    with duckdb.connect() as db:
        got = db.execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{local}/**/*.parquet')").fetchone()
    assert got == (first["rows"] + other["rows"],) * 2


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from airflow_provider_cekura.transfers.call_logs_to_object_storage import CekuraCallLogsToObjectStorageOperator

    op = CekuraCallLogsToObjectStorageOperator(
        task_id="export", path=sys.argv[1], metrics_path=sys.argv[2], conn_id=sys.argv[3] or None,
        timestamp_from=sys.argv[4], timestamp_to=sys.argv[5], page_size=50, max_rows_per_file=100,
        row_group_rows=50,
    )
    op.execute({})
    print("FINISHED")
    """
)


@pytest.mark.slow
def test_sigkill_mid_export_leaves_no_published_partial(emulator: Any, store: Store) -> None:
    total = 1000
    emulator.seed(total, start=START, end=START + timedelta(hours=1))
    bounds = window(0, 1)
    # The window's previous export, 3 files of 400: what readers see until a rerun is complete.
    before = export(store, page_size=200, max_rows_per_file=400, **bounds)
    before_manifest = store.manifest()
    before_names = store.names()
    assert before["rows"] == total and len(before_names) == 4

    emulator.add_fault("latency", delay=0.1, path=CALL_LOGS)
    requests_before = emulator.count_requests("GET", CALL_LOGS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = [store.sub("call_logs"), store.sub("metrics"), store.conn_id or "", *bounds.values()]
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and child.poll() is None:
            pages = emulator.count_requests("GET", CALL_LOGS) - requests_before
            hidden = [n for n in store.names() if n.startswith(".")]
            if pages >= 8 and (store.kind == "s3" or len(hidden) >= 2):
                break  # several 100-row files written (on file://, seen under their hidden names)
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:] if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL and b"FINISHED" not in out
    assert TEST_API_KEY.encode() not in out + err

    # The previous export is still what is published: same manifest, same files, same rows.
    assert store.manifest() == before_manifest
    visible = [n for n in store.names() if not n.startswith(".")]
    assert visible == before_names
    assert all(n.endswith(".tmp") for n in store.names() if n.startswith("."))
    check_exact(store.table(), api_call_logs(emulator, START, START + timedelta(hours=1)))
    local = store.download()
    with duckdb.connect() as db:
        got = db.execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{local}/**/*.parquet')").fetchone()
    assert got == (total, total)

    # The rerun completes and removes the crashed attempt's temporary files.
    emulator.clear_faults()
    assert export(store, page_size=200, max_rows_per_file=100, **bounds)["rows"] == total
    assert store.names() == ["_manifest.json", *(f"part-{n:05d}.parquet" for n in range(10))]
    assert [n for n in store.names("metrics") if n.startswith(".")] == []


@pytest.mark.slow
def test_first_export_killed_publishes_nothing(emulator: Any, tmp_path: Path) -> None:
    emulator.seed(600, start=START, end=START + timedelta(hours=1))
    emulator.add_fault("latency", delay=0.1, path=CALL_LOGS)
    root = tmp_path / "lake"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    bounds = window(0, 1)
    args = [f"file://{root}/call_logs/", f"file://{root}/metrics/", "", *bounds.values()]
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], env=env, stdout=subprocess.PIPE)
    partition = root / "call_logs" / PARTITION
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and child.poll() is None:
            if partition.exists() and len([p for p in partition.iterdir() if p.name.startswith(".")]) >= 2:
                break
            time.sleep(0.05)
        assert child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    names = sorted(p.name for p in partition.iterdir())
    assert names and all(n.startswith(".") and n.endswith(".tmp") for n in names)
    assert not list(root.rglob("*.parquet")) and not list(root.rglob("_manifest.json"))


@pytest.mark.parametrize(
    ("file_format", "compression", "suffix"), [("jsonl", "gzip", ".jsonl.gz"), ("csv", None, ".csv")]
)
def test_jsonl_and_csv_hold_the_same_values(
    emulator: Any, tmp_path: Path, file_format: str, compression: str | None, suffix: str
) -> None:
    emulator.seed(60, start=START, end=START + timedelta(hours=1))
    root = tmp_path / "lake"
    result = export(
        Store("file", f"file://{root}", None, None, str(root), root),
        file_format=file_format,
        compression=compression,
        page_size=25,
        max_rows_per_file=50,
        **window(0, 1),
    )
    expected = api_call_logs(emulator, START, START + timedelta(hours=1))
    assert result["rows"] == len(expected) == 60
    assert [Path(f).name for f in result["files"]] == [f"part-00000{suffix}", f"part-00001{suffix}"]
    manifest = json.loads((root / "call_logs" / PARTITION / "_manifest.json").read_text())
    assert manifest["format"] == file_format and [f["rows"] for f in manifest["files"]] == [50, 10]
    reader = "read_json(?, format = 'newline_delimited')" if file_format == "jsonl" else "read_csv(?, header = true)"
    with duckdb.connect() as db:
        rows = db.execute(
            # as text: a TIMESTAMPTZ value would need pytz in the test environment
            f"SELECT id, call_id, success, metrics, CAST(updated_at AS VARCHAR) FROM {reader}",
            [f"{root}/call_logs/**/*{suffix}"],
        ).fetchall()
        metric_count = db.execute(f"SELECT count(*) FROM {reader}", [f"{root}/metrics/**/*{suffix}"]).fetchone()[0]
    assert len(rows) == len(expected) and metric_count == sum(len(c["metrics"]) for c in expected.values())
    for cid, call_id, success, metrics, updated_at in rows:
        call_log = expected[int(cid)]
        assert call_id == call_log["call_id"]
        assert (success if isinstance(success, bool) else str(success).lower() == "true") == call_log["success"]
        assert json.loads(metrics) == call_log["metrics"]  # JSON columns are JSON text, as in Parquet
        assert as_datetime(updated_at) == as_datetime(call_log["updated_at"])


def test_files_and_sql_table_hold_the_same_rows(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One export schema: the SQL transfer's table and the Parquet files have the same columns and values."""
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    emulator.seed(30, start=START, end=START + timedelta(hours=1))
    wh = sqlite_warehouse(tmp_path / "warehouse.db", monkeypatch)
    columns = ["call_id", "agent", "status", "success", "metrics", "transcript_type", "project", "exported_at"]
    CekuraCallLogsToSqlOperator(
        task_id="sql", sql_conn_id=wh.conn_id, table=wh.table, columns=columns, **window(0, 1)
    ).execute({})  # type: ignore[arg-type]
    root = tmp_path / "lake"
    export(Store("file", f"file://{root}", None, None, str(root), root), metrics=False, columns=columns, **window(0, 1))
    table = pq.ParquetFile(
        root / "call_logs" / PARTITION / "part-00000.parquet"
    ).read()  # no hive columns from the path
    names = table.schema.names
    assert names == wh.columns() == ["id", *columns[:5], "exported_at", "project", "transcript_type"]
    sql_rows = {r[0]: dict(zip(names, r, strict=True)) for r in wh.query(f"SELECT {', '.join(names)} FROM {wh.table}")}
    file_rows = {r["id"]: r for r in table.to_pylist()}
    assert set(file_rows) == set(sql_rows) and len(file_rows) == 30
    for call_log_id, row in file_rows.items():
        sql = sql_rows[call_log_id]
        for name in names:
            if name == "exported_at":
                assert row[name].tzinfo is not None and as_datetime(sql[name]).tzinfo is not None
            elif name == "success":
                assert row[name] == (None if sql[name] is None else bool(sql[name]))
            else:
                assert row[name] == sql[name], name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"file_format": "avro"}, "file_format: 'avro' is not one of parquet, jsonl, csv"),
        ({"file_format": "jsonl", "compression": "snappy"}, "compression: 'snappy' is not one of none, gzip"),
        ({"path": "s3:///cekura/call_logs/"}, "has no bucket"),
        ({"path": "s3://"}, "has no bucket"),
        ({"path": "/tmp/cekura/call_logs"}, "has no scheme"),
        ({"path": "file://relative/dir"}, "a local path is file:///absolute/dir/"),
        ({"path": "s3://bucket/a/../b/"}, "must not contain"),
        ({"metrics_path": "gs:///metrics/"}, "metrics_path: 'gs:///metrics/' has no bucket"),
        ({"max_rows_per_file": 0}, "max_rows_per_file: must be a positive integer"),
        ({"columns": ["password"]}, "not a call log column"),
    ],
)
def test_bad_input_fails_before_any_request(emulator: Any, kwargs: dict, message: str) -> None:
    kwargs.setdefault("path", "s3://bucket/cekura/call_logs/")
    with pytest.raises(CekuraError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CekuraCallLogsToObjectStorageOperator(task_id="export", **kwargs)
    assert emulator.count_requests() == 0


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_missing_bucket_fails_before_any_request(emulator: Any, store: Store) -> None:
    emulator.seed(5, start=START, end=START + timedelta(hours=1))
    with pytest.raises(CekuraError, match="Bucket 'no-such-bucket' of s3://no-such-bucket/cekura/call_logs does not"):
        export(store, path="s3://no-such-bucket/cekura/call_logs/", **window(0, 1))
    assert emulator.count_requests() == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("path", "s3:///no-bucket/", "has no bucket"),
        ("partition", "../%Y", "is not plain"),
        ("partition", "_hidden=%Y", "is not plain"),
        ("metrics_path", "{path}", "must differ from path"),
    ],
)
def test_templated_input_checked_after_rendering_before_any_request(
    emulator: Any, tmp_path: Path, field: str, value: str, message: str
) -> None:
    path = f"file://{tmp_path}/lake/call_logs/"
    op = CekuraCallLogsToObjectStorageOperator(
        task_id="export", path="{{ params.path }}", metrics_path="{{ params.metrics }}", **window(0, 1)
    )
    assert op.outlets == [] and "path" in op.template_fields
    op.path, op.metrics_path = path, f"file://{tmp_path}/lake/metrics/"
    setattr(op, field, value.format(path=path))
    with pytest.raises(CekuraError, match=message):
        op.execute({})  # type: ignore[arg-type]
    assert emulator.count_requests() == 0
    assert not list(tmp_path.rglob("*.parquet"))


PYARROW_BLOCKED = textwrap.dedent(
    """
    import sys
    sys.modules["pyarrow"] = None  # as if the [parquet] extra were not installed
    from airflow_provider_cekura.exceptions import CekuraConfigurationError
    from airflow_provider_cekura.transfers.call_logs_to_object_storage import CekuraCallLogsToObjectStorageOperator

    root, frm, to = sys.argv[1:4]
    try:
        CekuraCallLogsToObjectStorageOperator(task_id="x", path=root + "call_logs/", file_format="parquet")
    except CekuraConfigurationError as err:
        print("REFUSED:", err)
    op = CekuraCallLogsToObjectStorageOperator(
        task_id="y", path=root + "call_logs/", timestamp_from=frm, timestamp_to=to
    )
    print("DEFAULT:", op.file_format)
    print("ROWS:", op.execute({})["rows"])
    """
)


@pytest.mark.slow
def test_without_pyarrow_parquet_is_refused_naming_the_extra_and_jsonl_is_the_default(
    emulator: Any, tmp_path: Path
) -> None:
    emulator.seed(20, start=START, end=START + timedelta(hours=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PYARROW_BLOCKED, f"file://{tmp_path}/lake/", *window(0, 1).values()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert "pip install 'airflow-provider-cekura[parquet]'" in lines["REFUSED"]
    assert lines["DEFAULT"] == "jsonl" and lines["ROWS"] == "20"
    assert emulator.count_requests("GET", CALL_LOGS) == 1  # only the JSONL export asked
    assert sorted(p.name for p in (tmp_path / "lake" / "call_logs" / PARTITION).iterdir()) == [
        "_manifest.json",
        "part-00000.jsonl",
    ]


def test_empty_window_and_empty_ids_write_nothing(emulator: Any, tmp_path: Path) -> None:
    emulator.seed(10, start=START, end=START + timedelta(hours=1))
    root = tmp_path / "lake"
    store = Store("file", f"file://{root}", None, None, str(root), root)
    stamp = START.isoformat()
    assert export(store, timestamp_from=stamp, timestamp_to=stamp)["rows"] == 0
    assert export(store, call_log_ids=[])["rows"] == 0
    assert emulator.count_requests() == 0 and not root.exists()


def test_call_log_ids_go_to_the_run_interval_partition(emulator: Any, tmp_path: Path) -> None:
    ids = emulator.seed(30, start=START, end=START + timedelta(days=2))
    root = tmp_path / "lake"
    store = Store("file", f"file://{root}", None, None, str(root), root)
    op = CekuraCallLogsToObjectStorageOperator(
        task_id="export", path=store.sub("call_logs"), call_log_ids=ids[:7], partition="run=%Y%m%dT%H%M"
    )
    stamp = datetime(2026, 3, 5, 6, 30, tzinfo=UTC)
    result = op.execute({"data_interval_start": stamp, "data_interval_end": stamp + timedelta(hours=1)})  # type: ignore[arg-type]
    assert result["rows"] == 7
    table = pq.ParquetFile(root / "call_logs" / "run=20260305T0630" / "part-00000.parquet").read()
    assert sorted(table.column("id").to_pylist()) == sorted(ids[:7])
    manifest = json.loads((root / "call_logs" / "run=20260305T0630" / "_manifest.json").read_text())
    assert manifest["window"] is None and manifest["call_log_ids"] == 7


def test_window_from_the_data_interval_and_only_evaluated(emulator: Any, tmp_path: Path) -> None:
    emulator.seed(20, start=START, end=START + timedelta(hours=1))
    emulator.seed(5, start=START, end=START + timedelta(hours=1), evaluated=False, call_id_prefix="pending")
    root = tmp_path / "lake"
    op = CekuraCallLogsToObjectStorageOperator(task_id="export", path=f"file://{root}/call_logs/", only_evaluated=True)
    result = op.execute({"data_interval_start": START, "data_interval_end": START + timedelta(hours=1)})  # type: ignore[arg-type]
    assert result["rows"] == 20
    with pytest.raises(CekuraError, match="empty data interval"):
        op.execute({"data_interval_start": START, "data_interval_end": START})  # type: ignore[arg-type]


def test_outlets_are_the_dataset_uris() -> None:
    from airflow_provider_cekura.version_compat import Asset

    op = CekuraCallLogsToObjectStorageOperator(
        task_id="export", path="s3://bucket/cekura/call_logs/", metrics_path="s3://bucket/cekura/metrics/"
    )
    assert op.outlets == [Asset("s3://bucket/cekura/call_logs/"), Asset("s3://bucket/cekura/metrics/")]
    assert op.file_format == "parquet" and op.compression == "snappy"


def test_openlineage_facets(tmp_path: Path) -> None:
    pytest.importorskip("airflow.providers.openlineage", reason="OpenLineage is an optional provider")
    op = CekuraCallLogsToObjectStorageOperator(
        task_id="export", path="s3://bucket/cekura/call_logs/", metrics_path="s3://bucket/cekura/metrics/"
    )
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("s3://bucket", "cekura/call_logs"),
        ("s3://bucket", "cekura/metrics"),
    ]
    assert lineage.inputs[0].name == "observability/v1/call-logs"
    local = CekuraCallLogsToObjectStorageOperator(task_id="local", path=f"file://{tmp_path}/x/")
    lineage = local.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", f"{tmp_path}/x")]


def test_registered_in_provider_info() -> None:
    from airflow_provider_cekura import get_provider_info

    modules = [t["python-module"] for t in get_provider_info()["transfers"]]
    assert "airflow_provider_cekura.transfers.call_logs_to_object_storage" in modules


def test_api_key_never_in_files_or_result(emulator: Any, tmp_path: Path) -> None:
    emulator.seed(5, start=START, end=START + timedelta(hours=1))
    root = tmp_path / "lake"
    result = export(Store("file", f"file://{root}", None, None, str(root), root), file_format="jsonl", **window(0, 1))
    assert TEST_API_KEY not in json.dumps(result)
    for path in root.rglob("*"):
        if path.is_file():
            assert TEST_API_KEY not in path.read_text()
