"""What every format reader yields: raw batches of good records (row numbers plus undecoded
text/id/label/metadata arrays) and the records the format itself could not parse, with the
helpers the readers share to build them.

Row numbers are 1-based and count every record of a file, good or bad, so a reject points
at the record to fix: the data record for CSV/TSV (the header is not counted), the line for
JSON Lines, the row for Parquet, and 1 for a text file. Line numbers (1-based, in the
decompressed text) say where a record starts: a CSV record with line breaks in a quoted field
spans several lines (see `udl.csv_lines`); for JSON Lines the line is the row, for a text
file 1, and Parquet has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from udl.config import InputConfig
from udl.errors import InputDataError
from udl.sources import Source

__all__ = [
    "COLUMN_HINT",
    "READER_REASONS",
    "READ_ROWS",
    "RawBatch",
    "ReaderReject",
    "check_columns",
    "raw_batch",
    "textual",
    "wanted_columns",
]

# Reason codes of the records a format reader rejects (see `udl.validation.REASONS` for the rest).
READER_REASONS = ("malformed_row", "malformed_json", "invalid_utf8", "invalid_vector")
# Rows per raw batch: validation is vectorised per batch, and a small batch bounds the
# memory a file of very long documents needs while it is read.
READ_ROWS = 16_384
COLUMN_HINT = "set input.text_column / id_column / label_column / metadata_columns to match"


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


def wanted_columns(config: InputConfig) -> list[str]:
    """Input columns the configuration names: text, id, label, then metadata."""
    wanted = [config.text_column]
    wanted += [c for c in (config.id_column, config.label_column) if c]
    return list(dict.fromkeys([*wanted, *config.metadata_columns]))


def check_columns(source: Source, present: list[str], wanted: list[str]) -> None:
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


def raw_batch(
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


def textual(source: Source, name: str, array: pa.Array | pa.ChunkedArray) -> pa.Array:
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
