"""Format readers of the ingest step: find the files behind an input path, and read each one
as raw batches (row numbers plus undecoded text/id/label/metadata arrays) and the rows the
format itself could not parse.

Row numbers are 1-based and count every record of a file, good or bad, so a reject points
at the record to fix: the data record for CSV/TSV (the header is not counted), the line for
JSON Lines, the row for Parquet, and 1 for a text file.

Supplied vectors (`input.embedding_column`) are read from Parquet (a list column of numbers)
and JSON Lines (an array of numbers per record; a value that is not one is rejected as
`invalid_vector`); they are checked for length and finiteness later, by `udl.validation`.
"""

from __future__ import annotations

import csv
import json
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl.config import InputConfig
from udl.errors import InputDataError

__all__ = ["RawBatch", "ReaderReject", "Source", "read_source", "resolve_sources"]

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
# Rows per raw batch: validation is vectorised per batch, and a small batch bounds the
# memory a file of very long documents needs while it is read.
READ_ROWS = 16_384
BLOCK_BYTES = 1 << 22
COLUMN_HINT = "set input.text_column / id_column / label_column / metadata_columns to match"


@dataclass(frozen=True)
class Source:
    """One input file: its URL, its format and the compression to undo."""

    url: str
    format: str
    compression: str | None
    name: str  # path relative to the input root: stable across machines, used in derived ids
    size: int  # bytes on storage (compressed), to group small files into one task


@dataclass(frozen=True)
class ReaderReject:
    """A record the format reader could not turn into columns."""

    row: int | None
    reason: str
    detail: str
    raw: str


@dataclass
class RawBatch:
    """Consecutive good records of one source, as read (binary or string arrays).

    `ids` is None when ids are to be derived from source and content; `vectors` (a list array
    of numbers, unchecked) is None unless `input.embedding_column` is set.
    """

    rows: NDArray[np.int64]
    text: pa.Array
    ids: pa.Array | None
    labels: pa.Array | None
    metadata: dict[str, pa.Array]
    rejects: list[ReaderReject] = field(default_factory=list)
    vectors: pa.Array | None = None


def _split_suffixes(path: str) -> tuple[str | None, str | None]:
    stem, ext = posixpath.splitext(path.lower())
    compression = COMPRESSIONS.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    return FORMATS.get(ext), compression


def resolve_sources(config: InputConfig) -> list[Source]:
    """Expand the configured path (file, folder or glob, local or fsspec URL) into sources.

    Args:
        config: gives `path` and `format`.

    Returns:
        The matching files in sorted order (which fixes row order in the corpus).

    Raises:
        InputDataError: nothing readable matches the path.
    """
    fs, root = fsspec.core.url_to_fs(config.path)
    # One listing with details gives every size (chunking needs them) without a call a file.
    if any(ch in root for ch in "*?["):
        found = fs.glob(root, detail=True)
        base = root.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(root):
        found = fs.find(root, detail=True)
        found = {p: i for p, i in found.items() if not posixpath.basename(p).startswith((".", "_"))}
        base = root
    elif fs.exists(root):
        found, base = {root: fs.info(root)}, posixpath.dirname(root)
    else:
        raise InputDataError(config.path, "no such file or folder")
    sources = []
    for path in sorted(p for p, info in found.items() if info["type"] == "file"):
        fmt, compression = _split_suffixes(path)
        fmt = fmt if config.format == "auto" else config.format
        if fmt is None:
            continue
        name = posixpath.relpath(path, base) if base else path
        size = int(found[path].get("size") or 0)
        sources.append(Source(fs.unstrip_protocol(path), fmt, compression, name, size))
    if not sources:
        raise InputDataError(
            config.path,
            "no readable files (*.csv, *.tsv, *.jsonl, *.parquet, *.txt, optionally .gz/.bz2/.zst/"
            ".xz); pass a file, a glob, or a folder of such files, or set input.format",
        )
    return sources


def wanted_columns(config: InputConfig) -> list[str]:
    """Input columns the configuration names: text, id, label, then metadata."""
    wanted = [config.text_column]
    wanted += [c for c in (config.id_column, config.label_column) if c]
    return list(dict.fromkeys([*wanted, *config.metadata_columns]))


def _check_columns(source: Source, present: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputDataError(
            source.url, f"missing column {missing[0]!r} (columns present: {present}); {COLUMN_HINT}"
        )


def _raw_batch(
    rows: NDArray[np.int64],
    columns: dict[str, pa.Array],
    config: InputConfig,
    rejects: list[ReaderReject] | None = None,
    vectors: pa.Array | None = None,
) -> RawBatch:
    return RawBatch(
        rows=rows,
        text=columns[config.text_column],
        ids=columns[config.id_column] if config.id_column else None,
        labels=columns[config.label_column] if config.label_column else None,
        metadata={m: columns[m] for m in config.metadata_columns},
        rejects=rejects or [],
        vectors=vectors,
    )


def _textual(source: Source, name: str, array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as string or binary (left undecoded, validated later); numbers become text."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        return array
    target = pa.binary() if pa.types.is_large_binary(array.type) else pa.string()
    try:
        return pc.cast(array, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputDataError(
            source.url, f"column {name!r} has type {array.type}; it must hold text or numbers"
        ) from None


def _vector_column(source: Source, name: str, array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A Parquet column of supplied vectors: a list of numbers per row (or null)."""
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    kind = array.type
    if pa.types.is_null(kind) or (pa.types.is_list(kind) and pa.types.is_null(kind.value_type)):
        return array.cast(pa.list_(pa.float32()))  # every vector or value null: typed as floats
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if (listed or pa.types.is_fixed_size_list(kind)) and (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    ):
        return array
    raise InputDataError(
        source.url, f"column {name!r} has type {kind}; the embedding column needs lists of numbers"
    )


def _read_parquet(source: Source, config: InputConfig) -> Iterator[RawBatch]:
    wanted = wanted_columns(config)
    vector_column = config.embedding_column
    with ExitStack() as stack:
        handle = stack.enter_context(fsspec.open(source.url, "rb", compression=source.compression))
        if source.compression:
            # Parquet needs random access, which a compressed stream lacks: spool it to a
            # local temporary file (disk, not memory, holds the decompressed bytes).
            spool = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(handle, spool, BLOCK_BYTES)
            spool.seek(0)
            handle = spool
        parquet = pq.ParquetFile(handle)
        read = [*wanted, vector_column] if vector_column else wanted
        _check_columns(source, parquet.schema_arrow.names, read)
        start = 1
        for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=read, use_threads=False):
            rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            columns = {c: _textual(source, c, batch.column(c)) for c in wanted}
            vectors = None
            if vector_column:
                vectors = _vector_column(source, vector_column, batch.column(vector_column))
            yield _raw_batch(rows, columns, config, vectors=vectors)


def _csv_header(source: Source, delimiter: str) -> list[str]:
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        line = handle.readline().decode("utf-8", errors="replace")
    return next(csv.reader([line], delimiter=delimiter), [])


def _good_rows(start: int, count: int, bad_rows: list[int]) -> NDArray[np.int64]:
    """The first `count` record numbers from `start` on that are not in `bad_rows` (sorted)."""
    pending = np.array([r for r in bad_rows if r >= start], dtype=np.int64)
    candidates = np.arange(start, start + count + len(pending), dtype=np.int64)
    return candidates[~np.isin(candidates, pending)][:count]


def _csv_batches(source: Source, reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise InputDataError(
            source.url, f"cannot be parsed as {source.format.upper()}: {exc}"
        ) from None


def _read_csv(source: Source, config: InputConfig) -> Iterator[RawBatch]:
    wanted = wanted_columns(config)
    delimiter = "\t" if source.format == "tsv" else ","
    bad: list[ReaderReject] = []

    def on_invalid(row: Any) -> str:
        # `row.number` counts records from the header (= 1); ours count data records.
        number = row.number - 1 if row.number is not None else None
        detail = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        bad.append(ReaderReject(number, "malformed_row", detail, row.text))
        return "skip"

    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        try:
            reader = pacsv.open_csv(
                handle,
                # Single-threaded parsing keeps record numbers known to the invalid-row handler.
                read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted, column_types={c: pa.binary() for c in wanted}
                ),
            )
        except pa.ArrowKeyError:
            _check_columns(source, _csv_header(source, delimiter), wanted)
            raise
        next_row = 1
        for batch in _csv_batches(source, reader):
            # The parser reads ahead, so `bad` may already hold rows of later batches.
            bad_rows = [r.row for r in bad if r.row is not None]
            rows = _good_rows(next_row, batch.num_rows, bad_rows)
            next_row = int(rows[-1]) + 1 if len(rows) else next_row
            mine = [r for r in bad if r.row is None or r.row < next_row]
            bad[:] = [r for r in bad if r.row is not None and r.row >= next_row]
            yield _raw_batch(rows, {c: batch.column(c) for c in wanted}, config, mine)
        if bad:
            empty = {c: pa.array([], pa.binary()) for c in wanted}
            yield _raw_batch(np.array([], np.int64), empty, config, bad[:])


def _lines(handle: Any) -> Iterator[bytes]:
    """Lines of a binary stream, read in blocks (zstd streams cannot iterate lines)."""
    tail = b""
    while block := handle.read(BLOCK_BYTES):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def _json_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _json_vector(value: Any) -> tuple[list[float | None] | None, str | None]:
    """A JSON value as a vector (None stays None), or an explanation why it is not one."""
    if value is None:
        return None, None
    if not isinstance(value, list) or any(
        isinstance(v, bool) or not isinstance(v, int | float | None) for v in value
    ):
        return None, f"expected an array of numbers, got {json.dumps(value)[:200]}"
    return [_float(v) for v in value], None


def _float(value: float | None) -> float | None:
    """A JSON number as a float; an integer beyond float64's range is infinite (rejected)."""
    try:
        return None if value is None else float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def _read_jsonl(source: Source, config: InputConfig) -> Iterator[RawBatch]:
    wanted = wanted_columns(config)
    vector_column = config.embedding_column
    rows: list[int] = []
    values: dict[str, list[str | None]] = {c: [] for c in wanted}
    vectors: list[list[float | None] | None] = []
    rejects: list[ReaderReject] = []
    keys_seen: set[str] = set()
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        for number, line in enumerate(_lines(handle), start=1):
            if not line.strip():
                continue  # a blank line is not a record
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                reason = "invalid_utf8" if isinstance(exc, UnicodeDecodeError) else "malformed_json"
                raw = line.decode("utf-8", errors="backslashreplace").rstrip("\r")
                rejects.append(ReaderReject(number, reason, str(exc), raw))
                continue
            if not isinstance(record, dict):
                raw = line.decode("utf-8").rstrip("\r")
                detail = f"a JSON {type(record).__name__}, not an object"
                rejects.append(ReaderReject(number, "malformed_json", detail, raw))
                continue
            keys_seen.update(record)
            if vector_column:
                vector, problem = _json_vector(record.get(vector_column))
                if problem is not None:
                    raw = line.decode("utf-8").rstrip("\r")
                    rejects.append(ReaderReject(number, "invalid_vector", problem, raw))
                    continue
                vectors.append(vector)
            rows.append(number)
            for column in wanted:
                values[column].append(_json_value(record.get(column)))
            if len(rows) >= READ_ROWS:
                yield _jsonl_batch(rows, values, rejects, config, vectors)
                rows, values, rejects, vectors = [], {c: [] for c in wanted}, [], []
    if rows:
        _check_columns(source, sorted(keys_seen), [*wanted, *filter(None, [vector_column])])
    yield _jsonl_batch(rows, values, rejects, config, vectors)


def _jsonl_batch(
    rows: list[int],
    values: dict[str, list[str | None]],
    rejects: list[ReaderReject],
    config: InputConfig,
    vectors: list[list[float | None] | None],
) -> RawBatch:
    columns = {c: pa.array(v, pa.string()) for c, v in values.items()}
    array = pa.array(vectors, pa.list_(pa.float64())) if config.embedding_column else None
    return _raw_batch(np.array(rows, np.int64), columns, config, rejects, array)


def _read_text(source: Source, config: InputConfig) -> Iterator[RawBatch]:
    """One file, one document: the id is the file's relative path, the label its folder."""
    if config.metadata_columns:
        raise InputDataError(
            source.url,
            f"missing column {config.metadata_columns[0]!r}: a text file has no columns; "
            "remove input.metadata_columns or convert the folder to CSV/JSON Lines/Parquet",
        )
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        data = handle.read()
    label = posixpath.dirname(source.name) or None
    yield RawBatch(
        rows=np.array([1], np.int64),
        text=pa.array([data], pa.binary()),
        ids=pa.array([source.name], pa.string()),
        labels=pa.array([label], pa.string()) if config.label_column else None,
        metadata={},
    )


def read_source(source: Source, config: InputConfig) -> Iterator[RawBatch]:
    """Read one source file as raw batches, in file order.

    Args:
        source: the file, as returned by `resolve_sources`.
        config: the column names to read.

    Returns:
        An iterator of batches; unparseable records travel in `RawBatch.rejects`.

    Raises:
        InputDataError: the file lacks a configured column, a column is not textual, or
            vectors are configured for a format that cannot hold them (CSV/TSV, text).
    """
    if config.embedding_column is not None and source.format not in ("parquet", "jsonl"):
        raise InputDataError(
            source.url,
            f"input.embedding_column={config.embedding_column!r} needs Parquet or JSON Lines "
            f"input (a {source.format} file has no list values); convert the corpus, or unset "
            "input.embedding_column",
        )
    if source.format == "parquet":
        return _read_parquet(source, config)
    if source.format in ("csv", "tsv"):
        return _read_csv(source, config)
    if source.format == "jsonl":
        return _read_jsonl(source, config)
    return _read_text(source, config)
