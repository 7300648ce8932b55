"""Format readers of the ingest step: find the files behind an input path, and read each one
as raw batches (row numbers plus undecoded text/id/label/metadata arrays) and the rows the
format itself could not parse.

Row numbers are 1-based and count every record of a file, good or bad, so a reject points
at the record to fix: the data record for CSV/TSV (the header is not counted), the line for
JSON Lines, the row for Parquet, and 1 for a text file. Line numbers (1-based, in the
decompressed text) say where a record starts: a CSV record with line breaks in a quoted field
spans several lines (see `udl.csv_lines`); for JSON Lines the line is the row, for a text
file 1, and Parquet has none.

Supplied vectors (`input.embedding_column`) are read from Parquet (a list column of numbers)
and JSON Lines (an array of numbers per record; a value that is not one is rejected as
`invalid_vector`); they are checked for length and finiteness later, by `udl.validation`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import lzma
import posixpath
import shutil
import tempfile
import zlib
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
import zstandard  # fsspec's zstd codec
from numpy.typing import NDArray

from udl.config import InputConfig
from udl.csv_lines import LineScanner
from udl.errors import InputDataError

__all__ = ["READER_REASONS", "RawBatch", "ReaderReject", "Source", "read_source", "resolve_sources"]

# Reason codes of the records a format reader rejects (see `udl.validation.REASONS` for the rest).
READER_REASONS = ("malformed_row", "malformed_json", "invalid_utf8", "invalid_vector")

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
# What the codecs raise on a corrupt or truncated file (gzip.BadGzipFile is an OSError).
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
)
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
    line: int | None = None  # where the record starts (None: unknown, or not a text format)


@dataclass
class RawBatch:
    """Consecutive good records of one source, as read (binary or string arrays).

    `ids` is None when ids are to be derived from source and content; `vectors` (a list array
    of numbers, unchecked) is None unless `input.embedding_column` is set; `lines` (the start
    line of each record) is None for formats without lines (Parquet).
    """

    rows: NDArray[np.int64]
    text: pa.Array
    ids: pa.Array | None
    labels: pa.Array | None
    metadata: dict[str, pa.Array]
    rejects: list[ReaderReject] = field(default_factory=list)
    vectors: pa.Array | None = None
    lines: NDArray[np.int64] | None = None


def _split_suffixes(path: str) -> tuple[str | None, str | None]:
    stem, ext = posixpath.splitext(path.lower())
    compression = COMPRESSIONS.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    return FORMATS.get(ext), compression


def resolve_sources(config: InputConfig, skipped: list[str] | None = None) -> list[Source]:
    """Expand the configured path (file, folder or glob, local or fsspec URL) into sources.

    Args:
        config: gives `path` and `format`.
        skipped: if given, receives the paths of matched files left out for an unknown
            format (hidden files, named ``.*`` or ``_*``, are left out silently).

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
            if skipped is not None:
                skipped.append(path)
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
    repeated = [c for c in wanted if present.count(c) > 1]
    if repeated:
        raise InputDataError(
            source.url,
            f"column {repeated[0]!r} appears {present.count(repeated[0])} times (columns "
            f"present: {present}), so which one to read is ambiguous; rename the copies",
        )
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
    lines: NDArray[np.int64] | None = None,
) -> RawBatch:
    return RawBatch(
        rows=rows,
        lines=lines,
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
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(source.url, f"is not a readable Parquet file: {exc}") from None
        read = [*wanted, vector_column] if vector_column else wanted
        _check_columns(source, parquet.schema_arrow.names, read)
        start = 1
        for batch in _parquet_batches(source, parquet, read):
            rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            columns = {c: _textual(source, c, batch.column(c)) for c in wanted}
            vectors = None
            if vector_column:
                vectors = _vector_column(source, vector_column, batch.column(vector_column))
            yield _raw_batch(rows, columns, config, vectors=vectors)


def _parquet_batches(
    source: Source, parquet: pq.ParquetFile, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """The file's batches; a corrupt page is an input error naming the file, not a retry."""
    try:
        yield from parquet.iter_batches(batch_size=READ_ROWS, columns=columns, use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(source.url, f"is not a readable Parquet file: {exc}") from None


def _csv_header(source: Source, delimiter: str) -> list[str]:
    """The column names, as pyarrow reads them: the first non-empty record (which may hold
    quoted line breaks, and end in CR), without a byte-order mark."""
    # One block, not `readline`: zstd streams cannot iterate lines.
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        block = _TailedStream(handle).read(BLOCK_BYTES).decode("utf-8-sig", errors="replace")
    try:
        records = csv.reader(io.StringIO(block, newline=""), delimiter=delimiter)
        return next((record for record in records if record), [])
    except csv.Error:  # a field over csv's size limit: the first line is the best guess
        return next(csv.reader([block.splitlines()[0]], delimiter=delimiter), [])


def _good_rows(start: int, count: int, bad_rows: list[int]) -> NDArray[np.int64]:
    """The first `count` record numbers from `start` on that are not in `bad_rows` (sorted)."""
    pending = np.array([r for r in bad_rows if r >= start], dtype=np.int64)
    candidates = np.arange(start, start + count + len(pending), dtype=np.int64)
    return candidates[~np.isin(candidates, pending)][:count]


# A record longer than the parser's block makes pyarrow fail ("straddling object straddles
# two block boundaries"); the file is then read again with a block this many times larger,
# from the start, skipping the records already delivered, up to MAX_BLOCK_BYTES. Growing on
# demand keeps the memory of ordinary files at BLOCK_BYTES and costs a re-read only for files
# that hold a record of several MiB (a document that ingest truncates anyway).
BLOCK_GROWTH = 4
MAX_BLOCK_BYTES = 1 << 30
TAIL_BYTES = 1 << 16
UNCLOSED_QUOTE = (
    "a quoted field opened in this record is not closed before the end of the file, so every "
    'later line would be read into it; close the quote (a quote inside a quoted field is "")'
)


class _Straddled(Exception):
    """A record is longer than the CSV block size."""


class _TailedStream:
    """A binary stream as pyarrow reads it: its last `keep` bytes are kept, and a line break is
    added at the end when the data lacks one (RFC 4180 makes the final one optional, but
    pyarrow cannot read a header-only file without it)."""

    def __init__(
        self, handle: Any, keep: int = TAIL_BYTES, scanner: LineScanner | None = None
    ) -> None:
        self._handle = handle
        self._keep = keep
        self._scanner = scanner
        self._ended = False
        self.tail = b""
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if self._ended or size == 0:
            return b""
        # Filled to `size` where the data allows: pyarrow parses the header from one read.
        data = self._handle.read(size)
        while 0 < len(data) < size and (more := self._handle.read(size - len(data))):
            data += more
        if len(data) < size or size < 0 or not data:
            self._ended = True
            last = data[-1:] or self.tail[-1:]
            data += b"\n" if last and last not in (b"\n", b"\r") else b""
        self.tail = (data if len(data) >= self._keep else self.tail + data)[-self._keep :]
        if self._scanner is not None:
            self._scanner.feed(data, final=self._ended)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _ends_in_open_quote(source: Source, tail: bytes, value: bytes | None) -> bool:
    """Whether the file ends inside the quoted field that pyarrow read as `value`.

    pyarrow takes a quote left open at the end of the file as a field running to the end, so
    the last field of the last record is then exactly the rest of the file after its opening
    quote (with `""` undone). A field that was closed, or never quoted, cannot match that.
    """
    if value is None:
        return False
    quoted = b'"' + value.replace(b'"', b'""')
    if not tail or not tail.endswith(quoted[-len(tail) :]):
        return False
    if len(quoted) <= len(tail):
        return True
    # Longer than the kept tail: read the file again, keeping enough of its end.
    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        stream = _TailedStream(handle, keep=len(quoted))
        while stream.read(BLOCK_BYTES):
            pass
    return stream.tail.endswith(quoted)


def _read_csv(source: Source, config: InputConfig) -> Iterator[RawBatch]:
    progress = [1]  # the first record not yet delivered
    block_size = BLOCK_BYTES
    while True:
        try:
            yield from _read_csv_pass(source, config, block_size, progress)
            return
        except _Straddled:
            block_size *= BLOCK_GROWTH
            if block_size > MAX_BLOCK_BYTES:
                raise InputDataError(
                    source.url,
                    f"a record is longer than {MAX_BLOCK_BYTES >> 20} MiB (or a quote is never "
                    "closed); split the document or fix the quoting",
                    row=progress[0],
                ) from None


def _csv_error(source: Source, exc: pa.ArrowInvalid) -> Exception:
    if "straddl" in str(exc):
        return _Straddled()
    if "Empty CSV file" in str(exc) and "block" not in str(exc):
        return InputDataError(source.url, f"is empty: no header row, so no columns; {COLUMN_HINT}")
    return InputDataError(source.url, f"cannot be parsed as {source.format.upper()}: {exc}")


def _read_csv_pass(
    source: Source, config: InputConfig, block_size: int, progress: list[int]
) -> Iterator[RawBatch]:
    """Read a CSV/TSV file, delivering the records from `progress[0]` on, and advancing it."""
    wanted = wanted_columns(config)
    delimiter = "\t" if source.format == "tsv" else ","
    resume = progress[0]
    # The physically last column is read too: an unclosed quote can only hide in it (a name
    # that may be misread from the first line, quoted or undecodable, forgoes the check).
    header = _csv_header(source, delimiter)
    _check_columns(source, header, [c for c in wanted if c in header])  # repeated names
    last_column = header[-1] if header and not {'"', "\ufffd"} & set(header[-1]) else None
    columns = [*wanted, *([last_column] if last_column and last_column not in wanted else [])]
    bad: list[ReaderReject] = []
    scanner = LineScanner(delimiter)

    def on_invalid(row: Any) -> str:
        # `row.number` counts records from the header (= 1); ours count data records, and
        # the scanner has seen the record (pyarrow parses only what it has read).
        number = row.number - 1 if row.number is not None else None
        line = int(scanner.lines(np.array([number]))[0]) if number is not None else None
        detail = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        bad.append(ReaderReject(number, "malformed_row", detail, row.text, line))
        return "skip"

    with fsspec.open(source.url, "rb", compression=source.compression) as handle:
        stream = _TailedStream(handle, scanner=scanner)
        try:
            reader = pacsv.open_csv(
                stream,
                # Single-threaded parsing keeps record numbers known to the invalid-row handler.
                read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns, column_types={c: pa.binary() for c in columns}
                ),
            )
        except pa.ArrowKeyError:
            _check_columns(source, _csv_header(source, delimiter), wanted)
            raise
        except pa.ArrowInvalid as exc:
            raise _csv_error(source, exc) from None
        next_row, last_row, last_line, last_value = 1, 0, 0, None
        batches = iter(reader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _csv_error(source, exc) from None
            # The parser reads ahead, so `bad` may already hold rows of later batches.
            bad_rows = [r.row for r in bad if r.row is not None]
            rows = _good_rows(next_row, batch.num_rows, bad_rows)
            lines = scanner.lines(rows)
            next_row = int(rows[-1]) + 1 if len(rows) else next_row
            scanner.forget_before(next_row)
            mine = [r for r in bad if r.row is None or r.row < next_row]
            bad[:] = [r for r in bad if r.row is not None and r.row >= next_row]
            if len(rows) and last_column:
                last_row, last_line = int(rows[-1]), int(lines[-1])
                last_value = batch.column(last_column)[-1].as_py()
            # A pass after a larger block skips what an earlier pass delivered.
            skip = int(np.searchsorted(rows, resume))
            mine = [r for r in mine if (r.row is None and resume == 1) or (r.row or 0) >= resume]
            if skip < len(rows) or mine:
                batch, rows, lines = batch.slice(skip), rows[skip:], lines[skip:]
                progress[0] = max(resume, next_row)
                columns = {c: batch.column(c) for c in wanted}
                yield _raw_batch(rows, columns, config, mine, lines=lines)
        if any(r.row is not None and r.row > last_row for r in bad):
            last_value = None  # the last record was malformed: already rejected
        if last_row and _ends_in_open_quote(source, stream.tail, last_value):
            where = f" (the record starts on line {last_line})"
            raise InputDataError(source.url, UNCLOSED_QUOTE + where, row=last_row)
        bad[:] = [r for r in bad if (r.row is None and resume == 1) or (r.row or 0) >= resume]
        if bad:
            empty = {c: pa.array([], pa.binary()) for c in wanted}
            none = np.array([], np.int64)
            yield _raw_batch(none, empty, config, bad[:], lines=none)


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
    numbers = np.array(rows, np.int64)  # a record is one line: its row is its line
    return _raw_batch(numbers, columns, config, rejects, array, lines=numbers)


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
    readers = {"parquet": _read_parquet, "csv": _read_csv, "tsv": _read_csv, "jsonl": _read_jsonl}
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
