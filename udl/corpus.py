"""Read a corpus (CSV/TSV, JSON Lines, Parquet, folders of text files; any fsspec URL) into
a partitioned Parquet dataset, sending every bad row to the rejects dataset with a reason.

Every row read ends up either in the corpus or in the rejects: `rows_read = ingested + rejected`
holds per source file and is returned for the run manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from udl import schema as S
from udl.config import InputConfig
from udl.errors import ConfigError, InputDataError
from udl.storage import atomic_dir, write_part

__all__ = ["IngestResult", "SourceCounts", "ingest", "resolve_sources"]

log = logging.getLogger(__name__)

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".xz": "xz"}
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
}
RESERVED = {S.DOC_ID, S.TEXT, S.SOURCE, S.ROW, S.TRUNCATED}


@dataclass
class SourceCounts:
    """Row accounting of one source file."""

    read: int = 0
    ingested: int = 0
    rejected: int = 0


@dataclass
class IngestResult:
    """What `ingest` wrote: row counts overall and per source, and the corpus columns."""

    rows_read: int
    rows_ingested: int
    rows_rejected: int
    truncated: int
    per_source: dict[str, SourceCounts]
    columns: list[str]
    has_label: bool


@dataclass(frozen=True)
class Source:
    """One input file: its URL, its format and the compression to undo."""

    url: str
    format: str
    compression: str | None
    name: str  # path relative to the input root: stable across machines, used in derived ids


def _split_suffixes(path: str) -> tuple[str | None, str | None]:
    stem, ext = posixpath.splitext(path.lower())
    compression = COMPRESSIONS.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    return FORMATS.get(ext), compression


def resolve_sources(config: InputConfig) -> list[Source]:
    """Expand the configured path (file, folder or glob, local or fsspec URL) into sources.

    Raises:
        InputDataError: nothing readable matches the path.
    """
    fs, root = fsspec.core.url_to_fs(config.path)
    if any(ch in root for ch in "*?["):
        paths = sorted(p for p in fs.glob(root) if fs.isfile(p))
        base = root.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(root):
        paths = sorted(p for p in fs.find(root) if not posixpath.basename(p).startswith((".", "_")))
        base = root
    elif fs.exists(root):
        paths, base = [root], posixpath.dirname(root)
    else:
        raise InputDataError(config.path, "no such file or folder")
    sources = []
    for path in paths:
        fmt, compression = _split_suffixes(path)
        fmt = fmt if config.format == "auto" else config.format
        if fmt is None:
            continue
        name = posixpath.relpath(path, base) if base else path
        sources.append(Source(fs.unstrip_protocol(path), fmt, compression, name))
    if not sources:
        raise InputDataError(
            config.path,
            "no readable files (*.csv, *.tsv, *.jsonl, *.parquet, *.txt, optionally .gz/.bz2/.zst/"
            ".xz); pass a file, a glob, or a folder of such files, or set input.format",
        )
    return sources


# A raw batch: the source's 1-based row numbers and its wanted columns as Arrow arrays,
# plus rows the reader itself rejected (unparseable).
@dataclass
class _RawBatch:
    rows: pa.Array
    columns: dict[str, pa.Array]
    rejects: list[dict[str, Any]] = field(default_factory=list)


def _wanted_columns(config: InputConfig) -> list[str]:
    wanted = [config.text_column]
    wanted += [c for c in (config.id_column, config.label_column) if c]
    wanted += config.metadata_columns
    clash = RESERVED.intersection(config.metadata_columns) | (
        {S.LABEL} & set(config.metadata_columns)
    )
    if clash:
        raise ConfigError(
            f"metadata_columns {sorted(clash)} clash with columns udl writes; rename them"
        )
    return list(dict.fromkeys(wanted))


def _check_columns(source: Source, present: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputDataError(
            source.url,
            f"missing column {missing[0]!r} (columns present: {present}); "
            "set input.text_column / id_column / label_column / metadata_columns to match",
        )


def _as_string(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array if array.type == pa.string() else pc.cast(array, pa.string())


def _read_parquet(source: Source, wanted: list[str], batch_rows: int) -> Iterator[_RawBatch]:
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        parquet = pq.ParquetFile(handle)
        _check_columns(source, parquet.schema_arrow.names, wanted)
        start = 1
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
            rows = pa.array(range(start, start + batch.num_rows), pa.int64())
            start += batch.num_rows
            yield _RawBatch(rows, {c: _as_string(batch.column(c)) for c in wanted})


def _read_csv(source: Source, wanted: list[str], batch_rows: int) -> Iterator[_RawBatch]:
    bad: list[dict[str, Any]] = []

    def on_invalid(row: Any) -> str:
        bad.append(
            {
                S.ROW: row.number,
                S.REASON: f"malformed_row: expected {row.expected_columns} fields, "
                f"got {row.actual_columns}",
                S.RAW: row.text,
            }
        )
        return "skip"

    delimiter = "\t" if source.format == "tsv" else ","
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        try:
            reader = pacsv.open_csv(
                handle,
                read_options=pacsv.ReadOptions(block_size=1 << 22, use_threads=False),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted, column_types={c: pa.binary() for c in wanted}
                ),
            )
        except pa.ArrowKeyError as exc:
            raise InputDataError(
                source.url,
                f"{exc}; set input.text_column / id_column / label_column / metadata_columns "
                "to match the header",
            ) from None
        start = 1
        for batch in reader:
            rows = pa.array(range(start, start + batch.num_rows), pa.int64())
            start += batch.num_rows
            yield _RawBatch(rows, {c: batch.column(c) for c in wanted}, bad[:])
            bad.clear()
        if bad:
            yield _RawBatch(
                pa.array([], pa.int64()), {c: pa.array([], pa.binary()) for c in wanted}, bad
            )


def _read_jsonl(source: Source, wanted: list[str], batch_rows: int) -> Iterator[_RawBatch]:
    rows: list[int] = []
    values: dict[str, list[Any]] = {c: [] for c in wanted}
    rejects: list[dict[str, Any]] = []
    has_text_key = False
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            raw = line.decode("utf-8", errors="replace").rstrip("\n")
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                rejects.append({S.ROW: number, S.REASON: "invalid_utf8", S.RAW: raw})
                continue
            except json.JSONDecodeError as exc:
                rejects.append({S.ROW: number, S.REASON: f"malformed_json: {exc.msg}", S.RAW: raw})
                continue
            if not isinstance(record, dict):
                rejects.append({S.ROW: number, S.REASON: "not_an_object", S.RAW: raw})
                continue
            has_text_key = has_text_key or wanted[0] in record
            rows.append(number)
            for column in wanted:
                value = record.get(column)
                values[column].append(None if value is None else str(value))
            if len(rows) >= batch_rows:
                yield _jsonl_batch(rows, values, rejects)
                rows, values, rejects = [], {c: [] for c in wanted}, []
    if rows and not has_text_key:
        raise InputDataError(
            source.url, f"missing key {wanted[0]!r} in every record; set input.text_column"
        )
    yield _jsonl_batch(rows, values, rejects)


def _jsonl_batch(
    rows: list[int], values: dict[str, list[Any]], rejects: list[dict[str, Any]]
) -> _RawBatch:
    columns = {c: pa.array(v, pa.string()) for c, v in values.items()}
    return _RawBatch(pa.array(rows, pa.int64()), columns, rejects)


def _read_text(
    source: Source, wanted: list[str], batch_rows: int, config: InputConfig
) -> Iterator[_RawBatch]:
    """One file, one document: the id is the file's relative path, the label its folder."""
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        data = handle.read()
    columns = {c: pa.array([None], pa.string()) for c in wanted}
    columns[config.text_column] = pa.array([data], pa.binary())
    if config.id_column:
        columns[config.id_column] = pa.array([source.name], pa.string())
    if config.label_column:
        columns[config.label_column] = pa.array(
            [posixpath.dirname(source.name) or None], pa.string()
        )
    yield _RawBatch(pa.array([1], pa.int64()), columns)


def _read_source(source: Source, config: InputConfig, wanted: list[str]) -> Iterator[_RawBatch]:
    rows = config.partition_rows
    if source.format == "parquet":
        return _read_parquet(source, wanted, rows)
    if source.format in ("csv", "tsv"):
        return _read_csv(source, wanted, rows)
    if source.format == "jsonl":
        return _read_jsonl(source, wanted, rows)
    return _read_text(source, wanted, rows, config)


def _decode(array: pa.Array) -> tuple[pa.Array, list[int]]:
    """Binary to UTF-8 strings; returns the strings and the positions that failed to decode."""
    if array.type == pa.string():
        return array, []
    try:
        return pc.cast(array, pa.string()), []
    except pa.ArrowInvalid:
        texts, bad = [], []
        for i, value in enumerate(array.to_pylist()):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(None)
                bad.append(i)
        return pa.array(texts, pa.string()), bad


class _Validator:
    """Turns raw batches into corpus rows and reject rows; remembers ids across batches."""

    def __init__(self, config: InputConfig) -> None:
        self.config = config
        self.seen_ids: set[str] = set()
        self.truncated = 0

    def __call__(
        self, source: Source, batch: _RawBatch
    ) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
        cfg = self.config
        rejects = [{S.SOURCE: source.url, S.DOC_ID: None, **r} for r in batch.rejects]
        columns: dict[str, list[Any]] = {}
        undecodable: set[int] = set()
        for name, array in batch.columns.items():
            decoded, bad = _decode(array)
            undecodable.update(bad)
            columns[name] = decoded.to_pylist()
        rows = batch.rows.to_pylist()
        good: dict[str, list[Any]] = {c.name: [] for c in S.CORPUS_FIELDS}
        good.update({S.LABEL: [], **{m: [] for m in cfg.metadata_columns}})
        for i, row in enumerate(rows):
            text = columns[cfg.text_column][i]
            doc_id = columns[cfg.id_column][i] if cfg.id_column else None
            reason = self._reason(i, text, doc_id, undecodable)
            if reason:
                raw = text if i not in undecodable else repr(batch.columns[cfg.text_column][i])
                rejects.append(
                    {
                        S.SOURCE: source.url,
                        S.ROW: row,
                        S.DOC_ID: doc_id,
                        S.REASON: reason,
                        S.RAW: raw,
                    }
                )
                continue
            if doc_id is None:
                doc_id = hashlib.sha1(f"{source.name}\x00{row}\x00{text}".encode()).hexdigest()[:20]
            self.seen_ids.add(doc_id)
            truncated = len(text) > cfg.max_chars
            self.truncated += truncated
            good[S.DOC_ID].append(doc_id)
            good[S.TEXT].append(text[: cfg.max_chars])
            good[S.SOURCE].append(source.name)
            good[S.ROW].append(row)
            good[S.TRUNCATED].append(truncated)
            good[S.LABEL].append(columns[cfg.label_column][i] if cfg.label_column else None)
            for meta in cfg.metadata_columns:
                good[meta].append(columns[meta][i])
        return good, rejects

    def _reason(self, i: int, text: str | None, doc_id: str | None, undecodable: set[int]) -> str:
        if i in undecodable:
            return "invalid_utf8"
        if text is None or not text.strip():
            return "empty_text"
        if self.config.id_column:
            if doc_id is None or not doc_id.strip():
                return "missing_id"
            if doc_id in self.seen_ids:
                return "duplicate_id"
        return ""


def _corpus_schema(config: InputConfig) -> pa.Schema:
    fields = [*S.CORPUS_FIELDS]
    if config.label_column:
        fields.append(pa.field(S.LABEL, pa.string()))
    fields += [pa.field(m, pa.string()) for m in config.metadata_columns]
    return pa.schema(fields)


class _PartBuffer:
    """Accumulates rows and writes a part file every `rows_per_part` rows."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_part: int) -> None:
        self.folder, self.schema, self.rows_per_part = folder, schema, rows_per_part
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_part:
            merged = pa.concat_tables(self.pending)
            self._write(merged.slice(0, self.rows_per_part))
            rest = merged.slice(self.rows_per_part)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self) -> None:
        if self.pending_rows or self.parts == 0:
            tables = self.pending or [self.schema.empty_table()]
            self._write(pa.concat_tables(tables))

    def _write(self, table: pa.Table) -> None:
        write_part(table.combine_chunks(), self.folder, self.parts)
        self.parts += 1


def ingest(config: InputConfig, corpus_dir: Path, rejects_dir: Path) -> IngestResult:
    """Read every source into `corpus_dir` (partitioned Parquet) and `rejects_dir`.

    Args:
        config: where the corpus is and which columns to use.
        corpus_dir: output dataset folder, replaced atomically.
        rejects_dir: output rejects folder, replaced atomically.

    Returns:
        Row counts, per source and overall.

    Raises:
        InputDataError: a source cannot be read at all, or lacks a configured column.
        ConfigError: the column configuration is inconsistent.
    """
    wanted = _wanted_columns(config)
    sources = resolve_sources(config)
    validate = _Validator(config)
    schema = _corpus_schema(config)
    per_source: dict[str, SourceCounts] = {}
    with atomic_dir(corpus_dir) as corpus_tmp, atomic_dir(rejects_dir) as rejects_tmp:
        corpus_out = _PartBuffer(corpus_tmp, schema, config.partition_rows)
        rejects_out = _PartBuffer(rejects_tmp, S.REJECTS_SCHEMA, config.partition_rows)
        for source in sources:
            counts = per_source.setdefault(source.url, SourceCounts())
            for batch in _read_source(source, config, wanted):
                good, rejects = validate(source, batch)
                table = pa.Table.from_pydict({f.name: good[f.name] for f in schema}, schema=schema)
                corpus_out.add(table)
                rejects_out.add(pa.Table.from_pylist(rejects, schema=S.REJECTS_SCHEMA))
                counts.ingested += table.num_rows
                counts.rejected += len(rejects)
                counts.read += table.num_rows + len(rejects)
            log.info("read %s: %s", source.url, counts)
        corpus_out.close()
        rejects_out.close()
    return IngestResult(
        rows_read=sum(c.read for c in per_source.values()),
        rows_ingested=sum(c.ingested for c in per_source.values()),
        rows_rejected=sum(c.rejected for c in per_source.values()),
        truncated=validate.truncated,
        per_source=per_source,
        columns=schema.names,
        has_label=config.label_column is not None,
    )
