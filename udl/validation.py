"""Row validation of the ingest step: decode, reject bad rows with a reason code, derive ids,
truncate, check supplied vectors, and drop repeated ids (keeping the first), vectorised with
Arrow per batch.

Supplied vectors (`input.embedding_column`) are checked by `udl.cluster.vectors.validate_vectors`
against the corpus's dimension (`input.embedding_dim`, else `first_valid_length` of the first
source, decided once by `udl.corpus`): reasons `null_vector`, `wrong_length`, `null_value`,
`non_finite`. A row rejected for its vector does not claim its id, so a later row with the
same id and a good vector is kept.
"""

from __future__ import annotations

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
from udl.readers import RawBatch, Source

__all__ = ["REASONS", "SeenIds", "Validator", "first_valid_length", "hash_ids"]

VECTOR_REASONS = (NULL_VECTOR, WRONG_LENGTH, NULL_VALUE, NON_FINITE)
# Reason codes of rows rejected by the validator, in order of precedence.
REASONS = ("invalid_utf8", "empty_text", "missing_id", *VECTOR_REASONS, "duplicate_id")
_CODE = {reason: code for code, reason in enumerate(REASONS, start=1)}
DERIVED_ID_HEX = 20  # 80 bits of SHA-1: collisions are negligible below 10^11 documents


def hash_ids(ids: pa.Array) -> NDArray[np.uint64]:
    """64-bit hashes of string ids (SipHash with a fixed key: the same in every process)."""
    return pd.util.hash_array(ids.to_numpy(zero_copy_only=False), categorize=False)


class SeenIds:
    """Set of 64-bit id hashes as sorted runs merged like a log-structured tree.

    8 bytes an id (a Python set of strings costs ~100), O(log n) runs to search, and each
    hash is merged O(log n) times. Two distinct ids collide with probability about
    n² / 2⁶⁵ (3e-8 for a million ids); a collision would reject the later row as a duplicate.
    """

    def __init__(self) -> None:
        self.runs: list[NDArray[np.uint64]] = []

    def contains(self, hashes: NDArray[np.uint64]) -> NDArray[np.bool_]:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[pos] == hashes
        return found

    def add(self, hashes: NDArray[np.uint64]) -> None:
        if not len(hashes):  # an empty run would break `contains` (no last element)
            return
        self.runs.append(np.sort(hashes))
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")


def _decode(array: pa.Array) -> tuple[pa.Array, NDArray[np.bool_]]:
    """UTF-8 strings of a string/binary array, null where the bytes do not decode."""
    bad = np.zeros(len(array), dtype=bool)
    if pa.types.is_string(array.type):
        return array, bad
    try:
        return pc.cast(array, pa.string()), bad
    except pa.ArrowInvalid:
        texts: list[str | None] = []
        for i, value in enumerate(array.to_pylist()):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(None)
                bad[i] = True
        return pa.array(texts, pa.string()), bad


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


class Validator:
    """Turns raw batches into corpus tables and reject tables; remembers ids across batches.

    Duplicates are found within what one validator sees (one chunk of sources);
    `udl.corpus` checks the `kept` hashes across chunks.
    """

    def __init__(self, config: InputConfig, schema: pa.Schema) -> None:
        self.config, self.schema = config, schema
        # The vector length every row must have, fixed by the corpus schema.
        self.dim: int | None = None
        if config.embedding_column is not None:
            self.dim = schema.field(S.EMBEDDING).type.list_size
        self.seen = SeenIds()
        self.truncated = 0
        # Hash of every kept doc_id in output order, for the duplicate check across chunks.
        self.kept: list[NDArray[np.uint64]] = []

    def __call__(self, source: Source, batch: RawBatch) -> tuple[pa.Table, pa.Table]:
        text, bad = _decode(batch.text)
        columns: dict[str, pa.Array | None] = {S.DOC_ID: batch.ids, S.LABEL: batch.labels}
        columns.update(batch.metadata)
        for name, array in columns.items():
            if array is not None:
                columns[name], bad_column = _decode(array)
                bad |= bad_column
        ids = columns[S.DOC_ID]
        code, vectors = self._codes(source, batch, text, bad, ids)
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
        self.kept.append(hash_ids(doc_ids))
        return table, self._rejects(source, batch, code, ids)

    def _codes(
        self,
        source: Source,
        batch: RawBatch,
        text: pa.Array,
        bad: NDArray[np.bool_],
        ids: pa.Array | None,
    ) -> tuple[NDArray[np.int64], VectorCheck | None]:
        """Reason code of every row (0: kept; see REASONS), and the check of its vectors."""
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
            code = self._mark_duplicates(source, batch.rows, ids, code)
        return code, vectors

    def _mark_duplicates(
        self, source: Source, rows: NDArray[np.int64], ids: pa.Array, code: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        """Reject as `duplicate_id` every candidate row whose id an earlier kept row has."""
        candidates = np.flatnonzero(code == 0)
        hashes = hash_ids(ids.take(candidates))
        _, first = np.unique(hashes, return_index=True)
        repeat = np.ones(len(candidates), dtype=bool)
        repeat[first] = False
        repeat |= self.seen.contains(hashes)
        if repeat.any() and self.config.duplicate_ids == "error":
            i = candidates[np.argmax(repeat)]
            raise InputDataError(
                source.url,
                f"duplicate doc_id {ids[i].as_py()!r}; remove the repeat or set "
                "input.duplicate_ids='reject' to keep the first row and reject the others",
                row=int(rows[i]),
            )
        self.seen.add(hashes[~repeat])
        code = code.copy()
        code[candidates[repeat]] = _CODE["duplicate_id"]
        return code

    def _rejects(
        self, source: Source, batch: RawBatch, code: NDArray[np.int64], ids: pa.Array | None
    ) -> pa.Table:
        limit = self.config.max_chars
        records = [
            {S.ROW: r.row, S.DOC_ID: None, S.REASON: r.reason, S.DETAIL: r.detail, S.RAW: r.raw}
            for r in batch.rejects
        ]
        for i in np.flatnonzero(code):
            reason = REASONS[code[i] - 1]
            detail, raw = None, _raw_text(batch.text, int(i), limit)
            if reason in VECTOR_REASONS:
                assert batch.vectors is not None and self.dim is not None
                # The offending value is the vector; JSON writes NaN and Infinity literally.
                detail = _vector_detail(batch.vectors, int(i), reason, self.dim)
                raw = json.dumps(batch.vectors[int(i)].as_py()) if reason != NULL_VECTOR else None
            records.append(
                {
                    S.ROW: int(batch.rows[i]),
                    S.DOC_ID: ids[i].as_py() if ids is not None else None,
                    S.REASON: reason,
                    S.DETAIL: detail,
                    S.RAW: raw,
                }
            )
        records.sort(key=lambda r: (r[S.ROW] is None, r[S.ROW] or 0))
        for record in records:
            record[S.SOURCE] = source.url
            if record[S.RAW] is not None:
                record[S.RAW] = record[S.RAW][:limit]
        return pa.Table.from_pylist(records, schema=S.REJECTS_SCHEMA)


def _derived_ids(source: Source, rows: pa.Array, texts: pa.Array) -> pa.Array:
    """Stable ids from source name, row number and full text: identical across reruns."""
    prefix = f"{source.name}\x00".encode()
    ids = [
        hashlib.sha1(prefix + f"{row}\x00{text}".encode()).hexdigest()[:DERIVED_ID_HEX]
        for row, text in zip(rows.to_pylist(), texts.to_pylist(), strict=True)
    ]
    return pa.array(ids, pa.string())
