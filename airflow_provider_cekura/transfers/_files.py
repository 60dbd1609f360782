"""Files of the object storage export: the formats (Parquet, JSONL, CSV) and one window's partition.

A :class:`PartitionWriter` writes one dataset's rows (call logs, or metric rows) for one
window under ``<root>/<partition>/`` through an fsspec filesystem (the one behind
Airflow's ``ObjectStoragePath``):

- data files ``part-00000.<ext>``, ``part-00001.<ext>``, ... (deterministic names, at most
  ``max_rows_per_file`` rows each), written under hidden temporary names
  (``.part-00000.<ext>.<token>.tmp``, which no reader takes: they start with ``.`` and do not
  end with the format's extension);
- :meth:`PartitionWriter.publish`, once every file is complete: the previous
  ``_manifest.json`` is removed, the temporary files are renamed to their final names, the
  window's files of an earlier export that this one did not write again are deleted, and the
  new ``_manifest.json`` (files, row counts, window, schema version) is written last, itself
  through a temporary name.

A crash before :meth:`~PartitionWriter.publish` leaves the previous export of the window
untouched and only hidden temporary files (removed by the next run); a crash during it
leaves the window without a manifest. A reader that follows ``_manifest.json`` never takes a
partial export.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.transfers._schema import ARROW_TYPES, BOOL, SCHEMA_VERSION, TIMESTAMP, parse_utc

MANIFEST = "_manifest.json"

FORMATS: dict[str, tuple[str, ...]] = {
    "parquet": ("snappy", "zstd", "gzip", "lz4", "brotli", "none"),
    "jsonl": ("none", "gzip"),
    "csv": ("none", "gzip"),
}
"""Compressions per file format; the first is the default."""

PARQUET_EXTRA_HELP = (
    "file_format='parquet' needs pyarrow: install the provider's parquet extra "
    "(pip install 'airflow-provider-cekura[parquet]'), or choose file_format='jsonl' or 'csv'"
)

_PARTITION_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+:-]*$")


def pyarrow_available(load: bool = False) -> bool:
    """Whether pyarrow (the ``[parquet]`` extra) is installed.

    :param load: import it (what a write needs) rather than only look it up (cheap enough for DAG parsing).
    """
    if not load:
        import importlib.util

        try:
            return importlib.util.find_spec("pyarrow") is not None
        except (ImportError, ValueError):
            return False
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def validate_format(file_format: Any, compression: Any, load: bool = False) -> tuple[str, str]:
    """``(file_format, compression)`` checked; ``None`` means the default (Parquet where pyarrow is installed).

    :param file_format: ``"parquet"``, ``"jsonl"``, ``"csv"`` or ``None``.
    :param compression: one of the format's compressions (see :data:`FORMATS`), ``None`` for its default.
    :param load: for Parquet, import pyarrow now (at run time) instead of only looking it up (at parse time).
    """
    if file_format is None:
        file_format = "parquet" if pyarrow_available() else "jsonl"
    if not isinstance(file_format, str) or file_format.lower() not in FORMATS:
        raise CekuraValidationError("file_format", f"{str(file_format)[:40]!r} is not one of {', '.join(FORMATS)}")
    file_format = file_format.lower()
    if file_format == "parquet" and not pyarrow_available(load):
        raise CekuraConfigurationError(PARQUET_EXTRA_HELP)
    if compression is None:
        return file_format, FORMATS[file_format][0]
    if not isinstance(compression, str) or compression.lower() not in FORMATS[file_format]:
        raise CekuraValidationError(
            "compression",
            f"{str(compression)[:40]!r} is not one of {', '.join(FORMATS[file_format])} for {file_format}",
        )
    return file_format, compression.lower()


def extension(file_format: str, compression: str) -> str:
    """The data files' extension: ``.parquet`` (compressed inside), ``.jsonl``/``.csv`` with ``.gz`` if gzipped."""
    if file_format == "parquet":
        return ".parquet"
    return f".{file_format}" + (".gz" if compression == "gzip" else "")


def validate_partition(partition: Any) -> str:
    """A relative partition path such as ``date=2026-11-01/hour=04``: plain segments, none hidden, no ``..``.

    :param partition: the rendered partition path.
    """
    if not isinstance(partition, str) or not partition.strip("/"):
        raise CekuraValidationError("partition", "must be a relative path such as date=2026-11-01/hour=04")
    segments = partition.strip("/").split("/")
    for segment in segments:
        if not _PARTITION_SEGMENT.match(segment) or segment in (".", ".."):
            raise CekuraValidationError(
                "partition",
                f"segment {segment[:60]!r} is not plain: use letters, digits and = _ . + : - "
                "(not starting with . or _, which readers skip)",
            )
    return "/".join(segments)


# ---------------------------------------------------------------------------- formats


def _text_cell(kind: str, value: Any) -> Any:
    """A cell for JSONL/CSV: timestamps as UTC ISO 8601 text, everything else as the row holds it."""
    if kind == TIMESTAMP and value is not None:
        parsed = parse_utc(value)
        return parsed.isoformat() if parsed is not None else value
    return value


class FormatWriter:
    """Writes rows into one open binary file object."""

    def __init__(self, handle: Any, columns: dict[str, str], compression: str, row_group_rows: int) -> None:
        self.handle = handle
        self.columns = columns
        self.kinds = list(columns.values())
        self.compression = compression
        self.row_group_rows = row_group_rows

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush what is buffered and finish the file (the caller closes the handle)."""


class _TextWriter(FormatWriter):
    def __init__(self, handle: Any, columns: dict[str, str], compression: str, row_group_rows: int) -> None:
        super().__init__(handle, columns, compression, row_group_rows)
        self.raw: Any = gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) if compression == "gzip" else handle
        self.text = io.TextIOWrapper(self.raw, encoding="utf-8", newline="")

    def close(self) -> None:
        self.text.flush()
        self.text.detach()
        if self.raw is not self.handle:
            self.raw.close()


class JsonlWriter(_TextWriter):
    """One JSON object per line; JSON columns are JSON text (strings), timestamps UTC ISO 8601 text."""

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        names = list(self.columns)
        for row in rows:
            record = {n: _text_cell(k, v) for n, k, v in zip(names, self.kinds, row, strict=True)}
            self.text.write(json.dumps(record, ensure_ascii=False))
            self.text.write("\n")


class CsvWriter(_TextWriter):
    """A header line, then one line per row (RFC 4180 quoting); empty for null, ``true``/``false`` for booleans."""

    def __init__(self, handle: Any, columns: dict[str, str], compression: str, row_group_rows: int) -> None:
        super().__init__(handle, columns, compression, row_group_rows)
        self.csv = csv.writer(self.text, lineterminator="\n")
        self.csv.writerow(list(columns))

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        for row in rows:
            self.csv.writerow(
                [
                    ("true" if v else "false") if k == BOOL and v is not None else _text_cell(k, v)
                    for k, v in zip(self.kinds, row, strict=True)
                ]
            )


def arrow_schema(columns: dict[str, str]) -> Any:
    """The explicit Arrow schema of ``columns`` (name -> kind), from :data:`ARROW_TYPES`.

    :param columns: column names and their kinds.
    """
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
        "timestamp[us, tz=UTC]": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(name, types[ARROW_TYPES[kind]]) for name, kind in columns.items()])


class ParquetWriter(FormatWriter):
    """Parquet with the explicit schema; rows buffered up to ``row_group_rows``, then written as one row group."""

    def __init__(self, handle: Any, columns: dict[str, str], compression: str, row_group_rows: int) -> None:
        super().__init__(handle, columns, compression, row_group_rows)
        import pyarrow.parquet as pq

        self.schema = arrow_schema(columns)
        self.writer = pq.ParquetWriter(handle, self.schema, compression=compression)
        self.buffer: list[tuple[Any, ...]] = []

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.buffer.extend(rows)
        while len(self.buffer) >= self.row_group_rows:
            group, self.buffer = self.buffer[: self.row_group_rows], self.buffer[self.row_group_rows :]
            self._write_group(group)

    def _write_group(self, rows: Sequence[tuple[Any, ...]]) -> None:
        import pyarrow as pa

        arrays = []
        for index, (kind, column) in enumerate(zip(self.kinds, self.schema, strict=True)):
            values = [row[index] for row in rows]
            if kind == TIMESTAMP:
                values = [parse_utc(v) for v in values]
            arrays.append(pa.array(values, type=column.type))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=len(rows))

    def close(self) -> None:
        if self.buffer:
            self._write_group(self.buffer)
            self.buffer = []
        self.writer.close()


WRITER_CLASSES: dict[str, type[FormatWriter]] = {"parquet": ParquetWriter, "jsonl": JsonlWriter, "csv": CsvWriter}


# ---------------------------------------------------------------------------- one window's partition


@dataclass
class FileEntry:
    """A data file of the partition: final name, rows, bytes."""

    name: str
    rows: int
    bytes: int = 0


@dataclass
class PartitionWriter:
    """One dataset's files for one window (see the module docstring for the protocol)."""

    fs: Any
    """The fsspec filesystem (``ObjectStoragePath.fs``)."""
    root: str
    """The dataset root in the filesystem's own terms (``bucket/prefix`` or ``/abs/dir``)."""
    url: str
    """The dataset root as a URL, for the manifest and logs."""
    partition: str
    columns: dict[str, str]
    file_format: str
    compression: str
    max_rows_per_file: int
    row_group_rows: int
    bucket: str | None = None
    """The bucket to check before anything is written (``None`` on a local file system)."""
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    files: list[FileEntry] = field(default_factory=list)
    _temps: list[str] = field(default_factory=list)
    _handle: Any = None
    _writer: FormatWriter | None = None

    @property
    def directory(self) -> str:
        return f"{self.root.rstrip('/')}/{self.partition}"

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def _temp(self, name: str) -> str:
        return f"{self.directory}/.{name}.{self.token}.tmp"

    def start(self) -> None:
        """Check the bucket, create the partition directory (where directories exist) and remove temporary files
        of crashed runs."""
        if self.bucket is not None:
            try:
                found = self.fs.exists(self.bucket)
            except Exception as err:
                raise CekuraConfigurationError(
                    f"Cannot reach {self.url}: {type(err).__name__}: {str(err)[:300]}"
                ) from None
            if not found:
                raise CekuraConfigurationError(
                    f"Bucket {self.bucket!r} of {self.url} does not exist or the connection cannot see it"
                )
        with contextlib.suppress(Exception):
            self.fs.makedirs(self.directory, exist_ok=True)
        for path in self._listing():
            name = path.rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path)

    def _listing(self) -> list[str]:
        self.fs.invalidate_cache(self.directory)
        try:
            return [p.rstrip("/") for p in self.fs.ls(self.directory, detail=False)]
        except FileNotFoundError:
            return []

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append ``rows`` (schema order), starting a new file every ``max_rows_per_file`` rows.

        :param rows: rows of the export schema.
        """
        position = 0
        while position < len(rows):
            if self._writer is None or self.files[-1].rows >= self.max_rows_per_file:
                self._close_file()
                self._open_file()
            room = self.max_rows_per_file - self.files[-1].rows
            chunk = rows[position : position + room]
            assert self._writer is not None
            self._writer.write(chunk)
            self.files[-1].rows += len(chunk)
            position += len(chunk)

    def _open_file(self) -> None:
        name = f"part-{len(self.files):05d}{extension(self.file_format, self.compression)}"
        temp = self._temp(name)
        self._temps.append(temp)
        self.files.append(FileEntry(name, 0))
        self._handle = self.fs.open(temp, "wb")
        self._writer = WRITER_CLASSES[self.file_format](
            self._handle, self.columns, self.compression, self.row_group_rows
        )

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._handle.close()
        self._writer = self._handle = None
        with contextlib.suppress(Exception):
            self.files[-1].bytes = int(self.fs.size(self._temps[-1]))

    def finish(self) -> None:
        """Complete the last file (every file is then whole, still under its temporary name)."""
        self._close_file()

    def manifest(self, window: tuple[datetime, datetime] | None, extra: dict[str, Any]) -> dict[str, Any]:
        """The ``_manifest.json`` of this export of the window.

        :param window: the export window, or ``None`` (given call log ids only).
        :param extra: more top-level keys (dataset name, selection).
        """
        return {
            "schema_version": SCHEMA_VERSION,
            **extra,
            "format": self.file_format,
            "compression": self.compression,
            "root": self.url,
            "partition": self.partition,
            "window": None if window is None else {"start": window[0].isoformat(), "end": window[1].isoformat()},
            "rows": self.rows,
            "files": [{"path": f.name, "rows": f.rows, "bytes": f.bytes} for f in self.files],
            "columns": [{"name": n, "kind": k, "type": ARROW_TYPES[k]} for n, k in self.columns.items()],
            "written_at": datetime.now(UTC).isoformat(),
        }

    def publish(self, manifest: dict[str, Any]) -> None:
        """Replace the window's previous export with this one; the manifest last.

        :param manifest: from :meth:`manifest`.
        """
        temp_manifest = self._temp(MANIFEST)
        with self.fs.open(temp_manifest, "wb") as handle:
            handle.write(json.dumps(manifest, indent=1).encode())
        final_manifest = f"{self.directory}/{MANIFEST}"
        if self.fs.exists(final_manifest):
            self.fs.rm(final_manifest)
        for temp, entry in zip(self._temps, self.files, strict=True):
            self.fs.mv(temp, f"{self.directory}/{entry.name}")
        keep = {f.name for f in self.files}
        for path in self._listing():
            name = path.rsplit("/", 1)[-1]
            if name.startswith("part-") and name not in keep and any(name.endswith(e) for e in _DATA_SUFFIXES):
                self.fs.rm(path)
        self.fs.mv(temp_manifest, final_manifest)
        self._temps = []

    def abort(self) -> None:
        """Best effort: close and remove this run's temporary files (the previous export stays published)."""
        with contextlib.suppress(Exception):
            self._close_file()
        for temp in self._temps:
            with contextlib.suppress(Exception):
                self.fs.rm(temp)
        self._temps = []


_DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".csv", ".csv.gz")
"""Data files of any format: a rerun in another format replaces the window's files too."""


__all__ = [
    "FORMATS",
    "MANIFEST",
    "PARQUET_EXTRA_HELP",
    "FileEntry",
    "PartitionWriter",
    "arrow_schema",
    "extension",
    "pyarrow_available",
    "validate_format",
    "validate_partition",
]
