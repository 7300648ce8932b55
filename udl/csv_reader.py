"""The CSV/TSV reader: pyarrow's streaming CSV parser, with rows it cannot parse turned into
rejects, blocks that grow for records longer than a block, and the start line of each record
(`udl.csv_lines`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from numpy.typing import NDArray

from udl.config import InputConfig
from udl.csv_lines import LineScanner
from udl.errors import InputDataError
from udl.raw import (
    COLUMN_HINT,
    RawBatch,
    ReaderReject,
    check_columns,
    raw_batch,
    wanted_columns,
)
from udl.sources import Source

__all__ = ["read_csv"]

BLOCK_BYTES = 1 << 22


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


def read_csv(source: Source, config: InputConfig) -> Iterator[RawBatch]:
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
    check_columns(source, header, [c for c in wanted if c in header])  # repeated names
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
            check_columns(source, _csv_header(source, delimiter), wanted)
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
                yield raw_batch(rows, columns, config, mine, lines=lines)
        if any(r.row is not None and r.row > last_row for r in bad):
            last_value = None  # the last record was malformed: already rejected
        if last_row and _ends_in_open_quote(source, stream.tail, last_value):
            where = f" (the record starts on line {last_line})"
            raise InputDataError(source.url, UNCLOSED_QUOTE + where, row=last_row)
        bad[:] = [r for r in bad if (r.row is None and resume == 1) or (r.row or 0) >= resume]
        if bad:
            empty = {c: pa.array([], pa.binary()) for c in wanted}
            none = np.array([], np.int64)
            yield raw_batch(none, empty, config, bad[:], lines=none)
