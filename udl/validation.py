"""Row validation of the ingest step: decode, reject bad rows with a reason code, derive ids,
truncate, check supplied vectors, and drop repeated ids (keeping the first), vectorised with
Arrow per batch.

Supplied vectors (`input.embedding_column`) are checked by `udl.cluster.vectors.validate_vectors`
against the corpus's dimension (`input.embedding_dim`, else `first_valid_length` of the first
source, decided once by `udl.corpus`): reasons `null_vector`, `wrong_length`, `null_value`,
`non_finite`. A row rejected for its vector does not claim its id, so a later row with the
same id and a good vector is kept.

Every reject has a `detail` naming the specifics: the column that is empty or not UTF-8 (with
the decoder's message), the vector's fault, or, for a repeated id, the record (row, line and
file) that kept it.
"""

from __future__ import annotations

import bisect
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from udl import schema as S
from udl.cluster.vectors import (
    NON_FINITE,
    NULL_VALUE,
    NULL_VECTOR,
    WRONG_LENGTH,
    VectorCheck,
    validate_vectors,
)
from udl.config import InputConfig
from udl.errors import InputDataError
from udl.raw import RawBatch
from udl.sources import Source

__all__ = [
    "REASONS",
    "KeptDocs",
    "SeenIds",
    "Validator",
    "describe_record",
    "duplicate_error",
    "first_valid_length",
    "hash_ids",
]

VECTOR_REASONS = (NULL_VECTOR, WRONG_LENGTH, NULL_VALUE, NON_FINITE)
# Reason codes of rows rejected by the validator, in order of precedence.
REASONS = ("invalid_utf8", "empty_text", "missing_id", *VECTOR_REASONS, "duplicate_id")
_CODE = {reason: code for code, reason in enumerate(REASONS, start=1)}
DERIVED_ID_HEX = 20  # 80 bits of SHA-1: collisions are negligible below 10^11 documents


def hash_ids(ids: pa.Array) -> NDArray[np.uint64]:
    """64-bit hashes of string ids (SipHash with a fixed key: the same in every process)."""
    return pd.util.hash_array(ids.to_numpy(zero_copy_only=False), categorize=False)


class SeenIds:
    """Set of 64-bit id hashes, each with the position of the document that holds it, as
    sorted runs merged like a log-structured tree.

    16 bytes an id (a Python dict of strings costs ~150), O(log n) runs to search, and each
    hash is merged O(log n) times. Two distinct ids collide with probability about
    n² / 2⁶⁵ (3e-8 for a million ids); a collision would reject the later row as a duplicate.
    """

    def __init__(self) -> None:
        self.runs: list[tuple[NDArray[np.uint64], NDArray[np.int64]]] = []

    def find(self, hashes: NDArray[np.uint64]) -> NDArray[np.int64]:
        """The position added with each hash, or -1 for a hash not seen."""
        found = np.full(len(hashes), -1, dtype=np.int64)
        for run, positions in self.runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            hit = run[at] == hashes
            found[hit] = positions[at[hit]]
        return found

    def contains(self, hashes: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """Whether each hash was seen."""
        return self.find(hashes) >= 0

    def add(self, hashes: NDArray[np.uint64], positions: NDArray[np.int64]) -> None:
        """Remember `hashes` (not seen yet) with the positions of their documents."""
        if not len(hashes):  # an empty run would break `find` (no last element)
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((hashes[order], np.asarray(positions, np.int64)[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (last, last_at), (prev, prev_at) = self.runs.pop(), self.runs.pop()
            merged, at = np.concatenate([prev, last]), np.concatenate([prev_at, last_at])
            order = np.argsort(merged, kind="stable")
            self.runs.append((merged[order], at[order]))


class KeptDocs:
    """Where each kept document came from (source name, row, line), in corpus order, so a
    repeated id can name the record that kept it. 28 bytes a document: the id hash, row and
    line, kept per batch; no line is -1."""

    def __init__(self) -> None:
        self.hashes: list[NDArray[np.uint64]] = []
        self.rows: list[NDArray[np.int64]] = []
        self.lines: list[NDArray[np.int64]] = []
        self.sources: list[str] = []
        self.starts: list[int] = []  # position of each batch's first document
        self.count = 0

    def add(self, source: str, hashes: NDArray[np.uint64], rows: pa.Array, lines: pa.Array) -> None:
        """Append one batch of kept documents (`lines` may hold nulls)."""
        if not len(hashes):
            return
        self.starts.append(self.count)
        self.count += len(hashes)
        self.sources.append(source)
        self.hashes.append(hashes)
        self.rows.append(rows.to_numpy(zero_copy_only=False).astype(np.int64))
        self.lines.append(pc.fill_null(lines, -1).to_numpy(zero_copy_only=False).astype(np.int64))

    def all_hashes(self) -> NDArray[np.uint64]:
        """The id hash of every kept document, in corpus order."""
        return np.concatenate([np.empty(0, np.uint64), *self.hashes])

    def where(self, position: int) -> tuple[str, int, int | None]:
        """Source name, row and line (None: none) of the document at `position`."""
        batch = bisect.bisect_right(self.starts, position) - 1
        offset = position - self.starts[batch]
        line = int(self.lines[batch][offset])
        return self.sources[batch], int(self.rows[batch][offset]), line if line >= 0 else None


def duplicate_error(
    url: str, doc_id: str, row: int, line: int | None, first: str
) -> InputDataError:
    """The error for a repeated id under `input.duplicate_ids="error"` (`first`: where the
    id was first kept, from `describe_record`)."""
    on = f" (line {line})" if line is not None else ""
    return InputDataError(
        url,
        f"duplicate doc_id {doc_id!r}{on} repeats {first}; remove the repeat or set "
        "input.duplicate_ids='reject' to keep the first row and reject the others",
        row=row,
    )


def describe_record(source: str, row: int, line: int | None, here: str | None = None) -> str:
    """``row 3 (line 7) of a.csv``; the file is left out when it is `here`."""
    place = f"row {row}" + (f" (line {line})" if line is not None else "")
    return place if source == here else f"{place} of {source}"


def _decode(array: pa.Array) -> tuple[pa.Array, dict[int, str]]:
    """UTF-8 strings of a string/binary array, null where the bytes do not decode; and the
    decoder's message for each such row."""
    if pa.types.is_string(array.type):
        return array, {}
    try:
        return pc.cast(array, pa.string()), {}
    except pa.ArrowInvalid:
        texts: list[str | None] = []
        problems: dict[int, str] = {}
        for i, value in enumerate(array.to_pylist()):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                texts.append(None)
                problems[i] = str(exc)
        return pa.array(texts, pa.string()), problems


def _blank(array: pa.Array) -> NDArray[np.bool_]:
    """Null, empty or whitespace-only (Unicode whitespace) values."""
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(array)), 0)
    return pc.fill_null(empty, True).to_numpy(zero_copy_only=False)


def first_valid_length(column: pa.Array) -> int | None:
    """Length of the first vector, in row order, that `validate_vectors` accepts at its own
    length (None if there is none).

    Args:
        column: Arrow list array of numbers, one vector (or null) per row.
    """
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    found: tuple[int, int] | None = None  # (row, length)
    values, first = np.unique(lengths, return_index=True)
    for row, length in sorted(zip(first.tolist(), values.tolist(), strict=True)):
        if length == 0 or (found is not None and row > found[0]):
            continue
        good = validate_vectors(column, int(length)).good_rows
        if len(good) and (found is None or good[0] < found[0]):
            found = (int(good[0]), int(length))
    return found[1] if found is not None else None


def _vector_codes(check: VectorCheck, n: int) -> NDArray[np.int64]:
    """Reason code of each of `n` rows by their vector (0: a good vector)."""
    code = np.zeros(n, np.int64)
    code[check.reject_rows] = [_CODE[reason] for reason in check.reject_reasons]
    return code


def _kept_vectors(check: VectorCheck, keep: NDArray[np.bool_]) -> pa.FixedSizeListArray:
    """The vectors of the kept rows (each has a good vector) as the corpus `embedding` column."""
    position = np.full(len(keep), -1, np.int64)
    position[check.good_rows] = np.arange(len(check.good_rows))
    flat = check.vectors[position[keep]].reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), check.dim)


def _vector_detail(vectors: pa.Array, i: int, reason: str, dim: int) -> str:
    if reason == NULL_VECTOR:
        return "the vector is null"
    if reason == WRONG_LENGTH:
        return f"{len(vectors[i])} values, expected {dim}"
    if reason == NULL_VALUE:
        return "a value is null"
    return "a value is NaN or infinite (as float32)"


def _raw_text(array: pa.Array, i: int, limit: int) -> str | None:
    value = array[i].as_py()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    return value[:limit] if value is not None else None


def _blank_detail(where: str, value: str | None) -> str:
    """Why a value counts as empty: null (or absent), empty, or whitespace only."""
    if value is None:
        return f"{where} is null or absent"
    if not value:
        return f"{where} is empty"
    return f"{where} holds only whitespace ({len(value)} characters)"


class Validator:
    """Turns raw batches into corpus tables and reject tables; remembers ids across batches.

    Duplicates are found within what one validator sees (one chunk of sources);
    `udl.corpus` checks the `kept` documents across chunks.
    """

    def __init__(self, config: InputConfig, schema: pa.Schema) -> None:
        self.config, self.schema = config, schema
        # The vector length every row must have, fixed by the corpus schema.
        self.dim: int | None = None
        if config.embedding_column is not None:
            self.dim = schema.field(S.EMBEDDING).type.list_size
        self.seen = SeenIds()
        self.truncated = 0
        # Every kept document in output order, for the duplicate check across chunks.
        self.kept = KeptDocs()
        # The input's names of the corpus columns, for details.
        self.names = {S.TEXT: config.text_column, S.DOC_ID: config.id_column}
        self.names |= {S.LABEL: config.label_column, **{m: m for m in config.metadata_columns}}

    def _where(self, source: Source, column: str) -> str:
        """How a detail names a column: a text file has none, it is the document."""
        if source.format == "text":
            return "the file" if column == S.TEXT else f"the {column} (from the file's path)"
        return f"column {self.names[column]!r}"

    def _decode_all(
        self, source: Source, batch: RawBatch
    ) -> tuple[pa.Array, dict[str, pa.Array | None], dict[int, str]]:
        """Text and other columns as strings, and the decoder's message for each bad row."""
        text, problems = _decode(batch.text)
        details = {i: f"{self._where(source, S.TEXT)}: {p}" for i, p in problems.items()}
        columns: dict[str, pa.Array | None] = {S.DOC_ID: batch.ids, S.LABEL: batch.labels}
        columns.update(batch.metadata)
        for name, array in columns.items():
            if array is not None:
                columns[name], problems = _decode(array)
                for i, problem in problems.items():
                    details.setdefault(i, f"{self._where(source, name)}: {problem}")
        return text, columns, details

    def __call__(self, source: Source, batch: RawBatch) -> tuple[pa.Table, pa.Table]:
        text, columns, details = self._decode_all(source, batch)
        ids = columns[S.DOC_ID]
        code, vectors = self._codes(source, batch, text, ids, details)
        keep = pa.array(code == 0)
        good_text = text.filter(keep)
        lengths = pc.utf8_length(good_text)
        truncated = pc.greater(lengths, self.config.max_chars)
        self.truncated += pc.sum(truncated).as_py() or 0
        rows = pa.array(batch.rows, pa.int64()).filter(keep)
        doc_ids = ids.filter(keep) if ids is not None else _derived_ids(source, rows, good_text)
        good = {
            S.DOC_ID: doc_ids,
            S.TEXT: pc.utf8_slice_codeunits(good_text, 0, self.config.max_chars),
            S.SOURCE: pa.array([source.name] * len(rows), pa.string()),
            S.ROW: rows,
            S.TRUNCATED: truncated,
        }
        for name, array in columns.items():
            if name != S.DOC_ID and array is not None:
                good[name] = array.filter(keep)
        if vectors is not None:
            good[S.EMBEDDING] = _kept_vectors(vectors, code == 0)
        table = pa.Table.from_pydict({f.name: good[f.name] for f in self.schema}, self.schema)
        self.kept.add(source.name, hash_ids(doc_ids), rows, _lines(batch).filter(keep))
        return table, self._rejects(source, batch, code, (text, ids), details)

    def _codes(
        self,
        source: Source,
        batch: RawBatch,
        text: pa.Array,
        ids: pa.Array | None,
        details: dict[int, str],
    ) -> tuple[NDArray[np.int64], VectorCheck | None]:
        """Reason code of every row (0: kept; see REASONS), and the check of its vectors."""
        bad = np.zeros(len(text), dtype=bool)
        bad[list(details)] = True
        code = np.where(bad, _CODE["invalid_utf8"], np.where(_blank(text), _CODE["empty_text"], 0))
        if ids is not None:
            code = np.where((code == 0) & _blank(ids), _CODE["missing_id"], code)
        vectors = None
        if self.dim is not None:
            assert batch.vectors is not None  # readers return vectors when the column is set
            vectors = validate_vectors(batch.vectors, self.dim)
            code = np.where(code == 0, _vector_codes(vectors, len(code)), code)
        if ids is not None:
            # After the vector check: a row rejected for its vector must not claim its id.
            code = self._mark_duplicates(source, batch, ids, code, details)
        return code, vectors

    def _mark_duplicates(
        self,
        source: Source,
        batch: RawBatch,
        ids: pa.Array,
        code: NDArray[np.int64],
        details: dict[int, str],
    ) -> NDArray[np.int64]:
        """Reject as `duplicate_id` every candidate row whose id an earlier kept row has, with
        a detail naming that row."""
        candidates = np.flatnonzero(code == 0)
        hashes = hash_ids(ids.take(candidates))
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        earlier = self.seen.find(hashes)
        repeat = earlier >= 0
        repeat[np.setdiff1d(np.arange(len(candidates)), first)] = True
        lines = _lines(batch).to_pylist()
        for j in np.flatnonzero(repeat).tolist():
            i = int(candidates[j])
            if earlier[j] >= 0:
                place = describe_record(*self.kept.where(int(earlier[j])), here=source.name)
            else:
                k = int(candidates[first[inverse[j]]])
                place = describe_record(source.name, int(batch.rows[k]), lines[k], source.name)
            doc_id = ids[i].as_py()
            if self.config.duplicate_ids == "error":
                raise duplicate_error(source.url, doc_id, int(batch.rows[i]), lines[i], place)
            details[i] = f"doc_id {doc_id!r} repeats {place}"
        kept_at = self.kept.count + np.arange(int(np.sum(~repeat)), dtype=np.int64)
        self.seen.add(hashes[~repeat], kept_at)
        code = code.copy()
        code[candidates[repeat]] = _CODE["duplicate_id"]
        return code

    def _detail(
        self, source: Source, batch: RawBatch, i: int, reason: str, values: tuple
    ) -> tuple[str | None, str | None]:
        """The detail and raw value of rejected row `i` (`values`: decoded text and ids)."""
        text, ids = values
        detail, raw = None, _raw_text(batch.text, i, self.config.max_chars)
        if reason in VECTOR_REASONS:
            assert batch.vectors is not None and self.dim is not None
            # The offending value is the vector; JSON writes NaN and Infinity literally.
            detail = _vector_detail(batch.vectors, i, reason, self.dim)
            raw = json.dumps(batch.vectors[i].as_py()) if reason != NULL_VECTOR else None
        elif reason == "empty_text":
            detail = _blank_detail(self._where(source, S.TEXT), text[i].as_py())
        elif reason == "missing_id":
            detail = _blank_detail(self._where(source, S.DOC_ID), ids[i].as_py())
        return detail, raw

    def _rejects(
        self,
        source: Source,
        batch: RawBatch,
        code: NDArray[np.int64],
        values: tuple[pa.Array, pa.Array | None],
        details: dict[int, str],
    ) -> pa.Table:
        records = [
            {
                S.ROW: r.row,
                S.LINE: r.line,
                S.DOC_ID: None,
                S.REASON: r.reason,
                S.DETAIL: r.detail,
                S.RAW: r.raw,
            }
            for r in batch.rejects
        ]
        ids, lines = values[1], _lines(batch)
        for i in np.flatnonzero(code).tolist():
            reason = REASONS[code[i] - 1]
            detail, raw = self._detail(source, batch, i, reason, values)
            records.append(
                {
                    S.ROW: int(batch.rows[i]),
                    S.LINE: lines[i].as_py(),
                    S.DOC_ID: ids[i].as_py() if ids is not None else None,
                    S.REASON: reason,
                    S.DETAIL: details.get(i, detail),
                    S.RAW: raw,
                }
            )
        records.sort(key=lambda r: (r[S.ROW] is None, r[S.ROW] or 0))
        for record in records:
            record[S.SOURCE] = source.url
            if record[S.RAW] is not None:
                record[S.RAW] = record[S.RAW][: self.config.max_chars]
        return pa.Table.from_pylist(records, schema=S.REJECTS_SCHEMA)


def _lines(batch: RawBatch) -> pa.Array:
    """The start line of each row of `batch` (null where its format has no lines)."""
    if batch.lines is None:
        return pa.nulls(len(batch.rows), pa.int64())
    return pa.array(batch.lines, pa.int64())


def _derived_ids(source: Source, rows: pa.Array, texts: pa.Array) -> pa.Array:
    """Stable ids from source name, row number and full text: identical across reruns."""
    prefix = f"{source.name}\x00".encode()
    ids = [
        hashlib.sha1(prefix + f"{row}\x00{text}".encode()).hexdigest()[:DERIVED_ID_HEX]
        for row, text in zip(rows.to_pylist(), texts.to_pylist(), strict=True)
    ]
    return pa.array(ids, pa.string())
