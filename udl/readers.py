"""Format readers of the ingest step: read each source file (`udl.sources`) as raw batches
(`udl.raw`) and the rows the format itself could not parse; CSV/TSV is `udl.csv_reader`.

Supplied vectors (`input.embedding_column`) are read from Parquet (a list column of numbers)
and JSON Lines (an array of numbers per record; a value that is not one is rejected as
`invalid_vector`); they are checked for length and finiteness later, by `udl.validation`.
"""

from __future__ import annotations

import gzip
import json
import lzma
import posixpath
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard  # fsspec's zstd codec

from udl.config import InputConfig
from udl.csv_reader import read_csv
from udl.errors import InputDataError
from udl.raw import (
    READ_ROWS,
    RawBatch,
    ReaderReject,
    check_columns,
    raw_batch,
    textual,
    wanted_columns,
)
from udl.sources import Source

__all__ = ["read_source"]

# Bytes read from a stream at a time (line splitting, spooling a compressed Parquet file).
BLOCK_BYTES = 1 << 22
# What the codecs raise on a corrupt or truncated file (gzip.BadGzipFile is an OSError).
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
)


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
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(source.url, f"is not a readable Parquet file: {exc}") from None
        read = [*wanted, vector_column] if vector_column else wanted
        check_columns(source, parquet.schema_arrow.names, read)
        start = 1
        for batch in _parquet_batches(source, parquet, read):
            rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            columns = {c: textual(source, c, batch.column(c)) for c in wanted}
            vectors = None
            if vector_column:
                vectors = _vector_column(source, vector_column, batch.column(vector_column))
            yield raw_batch(rows, columns, config, vectors=vectors)


def _parquet_batches(
    source: Source, parquet: pq.ParquetFile, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """The file's batches; a corrupt page is an input error naming the file, not a retry."""
    try:
        yield from parquet.iter_batches(batch_size=READ_ROWS, columns=columns, use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(source.url, f"is not a readable Parquet file: {exc}") from None


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


def _lone_surrogate(values: dict[str, str | None]) -> str | None:
    """Why a record's values are not Unicode text, if one holds a JSON-escaped lone surrogate
    (valid JSON syntax, such as "\\ud800", that no UTF-8 text can hold)."""
    for column, value in values.items():
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"column {column!r}: lone surrogate {value[exc.start]!r} escaped in the JSON"
    return None


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
                rejects.append(ReaderReject(number, reason, str(exc), raw, number))
                continue
            if not isinstance(record, dict):
                raw = line.decode("utf-8").rstrip("\r")
                detail = f"a JSON {type(record).__name__}, not an object"
                rejects.append(ReaderReject(number, "malformed_json", detail, raw, number))
                continue
            keys_seen.update(record)
            found = {c: _json_value(record.get(c)) for c in wanted}
            if b"\\u" in line and (problem := _lone_surrogate(found)):
                raw = line.decode("utf-8").rstrip("\r")  # the escapes are ASCII: kept as written
                rejects.append(ReaderReject(number, "invalid_utf8", problem, raw, number))
                continue
            if vector_column:
                vector, problem = _json_vector(record.get(vector_column))
                if problem is not None:
                    raw = line.decode("utf-8").rstrip("\r")
                    rejects.append(ReaderReject(number, "invalid_vector", problem, raw, number))
                    continue
                vectors.append(vector)
            rows.append(number)
            for column in wanted:
                values[column].append(found[column])
            if len(rows) >= READ_ROWS:
                yield _jsonl_batch(rows, values, rejects, config, vectors)
                rows, values, rejects, vectors = [], {c: [] for c in wanted}, [], []
    if rows:
        check_columns(source, sorted(keys_seen), [*wanted, *filter(None, [vector_column])])
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
    numbers = np.array(rows, np.int64)  # a record is one line: its row is its line
    return raw_batch(numbers, columns, config, rejects, array, lines=numbers)


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
        lines=np.array([1], np.int64),  # the document starts on the file's first line
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
    readers = {"parquet": _read_parquet, "csv": read_csv, "tsv": read_csv, "jsonl": _read_jsonl}
    return _decompressed(source, readers.get(source.format, _read_text)(source, config))


def _is_decompression_error(exc: Exception) -> bool:
    if isinstance(exc, DECOMPRESSION_ERRORS):
        return True
    # bz2 reports bad data as a bare OSError; any other OSError may be transient I/O.
    return isinstance(exc, OSError) and str(exc) == "Invalid data stream"


def _decompressed(source: Source, batches: Iterator[RawBatch]) -> Iterator[RawBatch]:
    """`batches`, with a corrupt or truncated compressed file as an input error naming it
    (the codecs' own errors name no file, and would be retried as if transient)."""
    try:
        yield from batches
    except Exception as exc:
        if source.compression is None or not _is_decompression_error(exc):
            raise
        raise InputDataError(
            source.url,
            f"cannot be decompressed as {source.compression} ({type(exc).__name__}: {exc}); "
            "the file is truncated or not in that format: fix or recompress it",
        ) from None
