"""CekuraCallLogsToObjectStorageOperator: export call logs (and metric rows) as Parquet, JSONL or CSV files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_cekura._coerce import positive_int
from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.transfers._selection import (
    SELECTION_TEMPLATE_FIELDS,
    CallLogExportOperator,
    ExportProgress,
    Selection,
    templated,
)

if TYPE_CHECKING:
    from airflow_provider_cekura.transfers._files import PartitionWriter
    from airflow_provider_cekura.version_compat import Context

DEFAULT_PARTITION = "date=%Y-%m-%d/hour=%H"
"""Hive-style partition of a window, ``strftime`` of its start in UTC: ``date=2026-11-01/hour=04``."""

LOCAL_SCHEMES = frozenset({"file", "local"})


def validate_path(path: Any, field: str = "path") -> str:
    """``path`` if it is a storage URL with a bucket (``s3://bucket/prefix/``) or an absolute ``file:///`` path.

    Checked without touching the store (no request, no filesystem built).

    :param path: the rendered ``path`` or ``metrics_path``.
    :param field: the argument's name, for the error.
    """
    if not isinstance(path, str) or not path.strip():
        raise CekuraValidationError(field, "must be a URL such as s3://bucket/cekura/call_logs/ or file:///abs/dir/")
    parts = urlsplit(path.strip())
    if not parts.scheme or len(parts.scheme) == 1:  # "C:\..." is a drive letter, not a scheme
        raise CekuraValidationError(
            field,
            f"{path[:120]!r} has no scheme: give a URL such as s3://bucket/prefix/, gs://bucket/prefix/ "
            "or file:///absolute/dir/",
        )
    if parts.query or parts.fragment:
        raise CekuraValidationError(field, f"{path[:120]!r} must not have a query or a fragment")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise CekuraValidationError(field, f"{path[:120]!r} must not contain . or .. segments")
    if parts.scheme.lower() in LOCAL_SCHEMES:
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise CekuraValidationError(field, f"{path[:120]!r}: a local path is file:///absolute/dir/")
        if parts.path.rstrip("/") == "":
            raise CekuraValidationError(field, f"{path[:120]!r}: give a directory, not the file system's root")
    elif not parts.netloc.rsplit("@", 1)[-1]:
        raise CekuraValidationError(
            field,
            f"{path[:120]!r} has no bucket: give {parts.scheme}://<bucket>/<prefix>/ (e.g. s3://my-bucket/cekura/)",
        )
    return path.strip()


def _lineage_dataset(url: str) -> tuple[str, str]:
    """OpenLineage naming of a storage URL: ``("s3://bucket", "prefix")`` or ``("file", "/abs/dir")``."""
    parts = urlsplit(url)
    if parts.scheme.lower() in LOCAL_SCHEMES:
        return "file", parts.path.rstrip("/")
    bucket = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{bucket}", parts.path.strip("/") or "/"


class CekuraCallLogsToObjectStorageOperator(CallLogExportOperator):
    """Export Cekura call logs as Parquet, JSONL or CSV files under an object storage path, one partition per window.

    **The same selection and rows as** :class:`~airflow_provider_cekura.transfers.call_logs_to_sql.CekuraCallLogsToSqlOperator`
    (one export schema, :mod:`airflow_provider_cekura.transfers._schema`): by default each run exports the
    call logs of its data interval ``[data_interval_start, data_interval_end)``; an empty interval (manual
    runs, ``airflow dags test``, trigger timetables on Airflow 3) continues from the previous successful
    run and fails clearly when there is none.

    **Layout**: ``<path>/<partition>/part-00000.parquet``, ``part-00001.parquet``, ... and
    ``<path>/<partition>/_manifest.json``, where the partition is Hive-style, from the window's start in
    UTC (``date=2026-11-01/hour=04/`` by default). File names are deterministic and each holds at most
    ``max_rows_per_file`` rows. Files are written under hidden temporary names (starting with ``.``)
    and renamed when complete; then the window's previous files are replaced and the manifest (files,
    row counts, window, schema version) is published last. Re-running a window replaces its files; a
    crash leaves the previous export of the window as it was (or, during the final renames, no manifest),
    never a published partial one. Readers take the files ending ``.parquet`` (``.jsonl``/``.jsonl.gz``,
    ``.csv``/``.csv.gz``) and skip names starting with ``.`` or ``_``, as Spark, Hive, DuckDB and the
    warehouses' loaders do; for strict reads follow ``_manifest.json``.

    **Types**: Parquet has an explicit schema: ids ``int64``, ``timestamp[us, tz=UTC]`` timestamps,
    booleans, ``double`` scores, and JSON columns (``metrics``, ``metadata``, ...) as JSON text
    (``string``). JSONL and CSV hold the same values as text (JSON columns as JSON text, timestamps in
    UTC ISO 8601; CSV has a header, empty for null, ``true``/``false``).

    **Streaming**: pages are converted and written as they come (Parquet buffers at most
    ``row_group_rows`` rows, one row group each), so memory stays flat whatever the export size.

    Returns (XCom) ``{"rows", "metric_rows", "files", "manifest", "metrics_manifest"}``: counts and the
    URLs of the data files and manifest(s). Declares ``Asset(path)`` (and ``Asset(metrics_path)``) as
    outlets when they are not templated.

    The selection (:class:`~airflow_provider_cekura.transfers._selection.CallLogExportOperator`'s arguments,
    the same for both transfers, listed under "Arguments" in ``docs/export.md``): ``cekura_conn_id``,
    ``timestamp_from``, ``timestamp_to``, ``agent_id``, ``assistant_id``, ``project_id``, ``call_log_ids``,
    ``filters_v2``, ``columns``, ``include_transcript``, ``only_evaluated``, ``page_size``, ``max_concurrency``.

    :param path: the dataset's root, a URL understood by Airflow's ``ObjectStoragePath``:
        ``s3://bucket/cekura/call_logs/``, ``gs://bucket/...``, ``file:///abs/dir/`` (templated).
    :param conn_id: Airflow connection of the store (``aws``, ``google_cloud_platform``, ...); default
        the filesystem's own default credentials (templated).
    :param file_format: ``"parquet"`` (the default where pyarrow, the ``[parquet]`` extra, is installed),
        ``"jsonl"`` (the default otherwise) or ``"csv"``.
    :param compression: Parquet: ``snappy`` (default), ``zstd``, ``gzip``, ``lz4``, ``brotli``, ``none``;
        JSONL and CSV: ``none`` (default) or ``gzip`` (files ``.jsonl.gz``/``.csv.gz``).
    :param metrics_path: also write one row per (call log, metric) as a second dataset under this root,
        same partition and format (templated).
    :param partition: the window's partition, a ``strftime`` pattern applied to the window's start in
        UTC (templated); with ``call_log_ids`` and no timestamps, to the run's data interval start.
    :param max_rows_per_file: at most this many rows per data file.
    :param row_group_rows: Parquet rows per row group (the rows buffered in memory).
    """

    template_fields: Sequence[str] = (*SELECTION_TEMPLATE_FIELDS, "path", "conn_id", "metrics_path", "partition")
    template_fields_renderers = {"filters_v2": "json"}
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        path: str,
        conn_id: str | None = None,
        file_format: str | None = None,
        compression: str | None = None,
        metrics_path: str | None = None,
        partition: str = DEFAULT_PARTITION,
        max_rows_per_file: int = 1_000_000,
        row_group_rows: int = 10_000,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_cekura.transfers._files import validate_format

        paths = {"path": path, **({"metrics_path": metrics_path} if metrics_path is not None else {})}
        for name, value in paths.items():
            if not templated(value):
                validate_path(value, name)
        if "outlets" not in kwargs and not any(templated(v) for v in paths.values()):
            from airflow_provider_cekura.version_compat import Asset

            kwargs["outlets"] = [Asset(value) for value in paths.values()]
        super().__init__(**kwargs)
        positive_int(max_rows_per_file, "max_rows_per_file")
        positive_int(row_group_rows, "row_group_rows")
        self.file_format, self.compression = validate_format(file_format, compression)
        self.path = path
        self.conn_id = conn_id
        self.metrics_path = metrics_path
        self.partition = partition
        self.max_rows_per_file = max_rows_per_file
        self.row_group_rows = row_group_rows

    # ------------------------------------------------------------------ execute

    def _partition(self, selection: Selection, context: Mapping[str, Any]) -> str:
        from airflow_provider_cekura.payloads import parse_timestamp
        from airflow_provider_cekura.transfers._files import validate_partition

        if selection.window is not None:
            start = selection.window[0]
        else:
            start = (
                parse_timestamp(context.get("data_interval_start"), "data_interval_start")
                or parse_timestamp(context.get("logical_date"), "logical_date")
                or datetime.now(UTC)
            )
        try:
            rendered = start.astimezone(UTC).strftime(str(self.partition))
        except ValueError as err:
            raise CekuraValidationError(
                "partition", f"{str(self.partition)[:80]!r} is not a strftime pattern: {err}"
            ) from None
        return validate_partition(rendered)

    def _writer(self, url: str, partition: str, columns: dict[str, str]) -> PartitionWriter:
        from airflow_provider_cekura.transfers._files import PartitionWriter
        from airflow_provider_cekura.version_compat import ObjectStoragePath

        try:
            base = ObjectStoragePath(url, conn_id=self.conn_id or None)
            fs, root = base.fs, str(base.path)
        except (ValueError, ImportError) as err:
            scheme = urlsplit(url).scheme
            raise CekuraConfigurationError(
                f"Cannot open {url!r} ({type(err).__name__}: {err}). The {scheme}:// file system comes from its "
                "Airflow provider and fsspec package (s3: apache-airflow-providers-amazon with s3fs; gs: "
                "apache-airflow-providers-google with gcsfs)."
            ) from None
        parts = urlsplit(url)
        return PartitionWriter(
            fs=fs,
            bucket=None if parts.scheme.lower() in LOCAL_SCHEMES else parts.netloc.rsplit("@", 1)[-1],
            root=root,
            url=url.rstrip("/"),
            partition=partition,
            columns=columns,
            file_format=self.file_format,
            compression=self.compression,
            max_rows_per_file=self.max_rows_per_file,
            row_group_rows=self.row_group_rows,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_cekura.transfers._files import MANIFEST, validate_format
        from airflow_provider_cekura.transfers._schema import ALL_CALL_LOG_COLUMNS, METRIC_COLUMNS

        validate_format(self.file_format, self.compression, load=True)  # pyarrow may be missing on this worker
        path = validate_path(self.path)
        metrics_path = validate_path(self.metrics_path, "metrics_path") if self.metrics_path else None
        if metrics_path is not None and metrics_path.rstrip("/") == path.rstrip("/"):
            raise CekuraValidationError("metrics_path", "must differ from path")
        selection = self.select(context)
        partition = self._partition(selection, context)
        result: dict[str, Any] = {"rows": 0, "metric_rows": 0, "files": [], "manifest": None, "metrics_manifest": None}
        reason = selection.nothing_to_export
        if reason:
            self.log.info("%s: nothing to export under %s", reason, path)
            return result
        writers = [self._writer(path, partition, {c: ALL_CALL_LOG_COLUMNS[c] for c in self.columns})]
        if metrics_path is not None:
            writers.append(self._writer(metrics_path, partition, dict(METRIC_COLUMNS)))
        self.log.info(
            "Writing %s files (compression %s) into %s/%s/%s",
            self.file_format,
            self.compression,
            path.rstrip("/"),
            partition,
            f" and {metrics_path.rstrip('/')}/{partition}/" if metrics_path else "",
        )
        try:
            for writer in writers:
                writer.start()
            written, metric_count, seen = self._export(writers, selection)
            for writer in writers:
                writer.finish()
            # The metrics first: a call log dataset's manifest is published only when its metrics are.
            for writer, dataset in reversed(list(zip(writers, ("call_logs", "metrics"), strict=False))):
                manifest = writer.manifest(selection.window, {"dataset": dataset, **self._selection_info(selection)})
                writer.publish(manifest)
                self.log.info(
                    "Published %s/%s (%d row(s), %d file(s))",
                    writer.url,
                    writer.partition,
                    writer.rows,
                    len(writer.files),
                )
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        finally:
            self.close_hook()
        self.warn_missing(selection, seen)
        call_logs = writers[0]
        result.update(
            rows=written,
            metric_rows=metric_count,
            files=[f"{call_logs.url}/{partition}/{f.name}" for f in call_logs.files],
            manifest=f"{call_logs.url}/{partition}/{MANIFEST}",
            metrics_manifest=f"{writers[1].url}/{partition}/{MANIFEST}" if len(writers) > 1 else None,
        )
        return result

    def _selection_info(self, selection: Selection) -> dict[str, Any]:
        info: dict[str, Any] = {"filters": {k: v for k, v in selection.filters.items() if k != "page_size"}}
        if selection.ids is not None:
            info["call_log_ids"] = len(selection.ids)
        if self.only_evaluated:
            info["only_evaluated"] = True
        return info

    def _export(self, writers: list[PartitionWriter], selection: Selection) -> tuple[int, int, set[int]]:
        progress = ExportProgress(self.log, "written")
        seen: set[int] = set()
        with_metrics = len(writers) > 1
        for page in self.pages(selection):
            rows = self.page_rows(page, datetime.now(UTC).isoformat(), with_metrics)
            # A call log repeated across pages (the list moved while it was walked) is written once.
            fresh = [row for row in rows.rows if row[0] not in seen]
            if len(fresh) < len(rows.rows):
                ids = {row[0] for row in fresh}
                metrics = [m for m in rows.metrics if m[0] in ids]
            else:
                metrics = rows.metrics
            seen.update(row[0] for row in fresh)
            if fresh:
                writers[0].write(fresh)
            if with_metrics and metrics:
                writers[1].write(metrics)
            progress.page(len(fresh), len(metrics) if with_metrics else 0, rows.skipped)
        progress.done(metrics_into="" if with_metrics else None)
        return progress.rows, progress.metric_rows, seen

    # ------------------------------------------------------------------ lineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the Cekura call log list as input, the dataset root(s) as output; ``None`` without it."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        outputs = [Dataset(*_lineage_dataset(p)) for p in (self.path, self.metrics_path) if p]
        return OperatorLineage(inputs=[self.lineage_input()], outputs=outputs)


__all__ = ["CekuraCallLogsToObjectStorageOperator", "validate_path"]
