"""Row validation of the ingest step: decode, reject bad rows with a reason code, derive ids,
truncate, check supplied vectors, and drop repeated ids (keeping the first), vectorised with
Arrow per batch.

Supplied vectors (`input.embedding_column`) are checked by `udl.vectors.validate_vectors`
against the corpus's dimension (`input.embedding_dim`, else `first_valid_length` of the first
source, decided once by `udl.corpus`): reasons `null_vector`, `wrong_length`, `null_value`,
`non_finite`. A row rejected for its vector does not claim its id, so a later row with the
same id and a good vector is kept.

Every reject has a `detail` naming the specifics: the column that is empty or not UTF-8 (with
the decoder's message), the vector's fault, or, for a repeated id, the record (row, line and
file) that kept it.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from udl import schema as S
from udl.config import InputConfig
from udl.doc_ids import KeptDocs, SeenIds, derived_ids, describe_record, duplicate_error, hash_ids
from udl.raw import RawBatch
from udl.sources import Source
from udl.vectors import (
    NON_FINITE,
    NULL_VALUE,
    NULL_VECTOR,
    WRONG_LENGTH,
    VectorCheck,
    kept_vectors,
    validate_vectors,
    vector_detail,
)

__all__ = ["REASONS", "Validator"]

VECTOR_REASONS = (NULL_VECTOR, WRONG_LENGTH, NULL_VALUE, NON_FINITE)
# Reason codes of rows rejected by the validator, in order of precedence.
REASONS = ("invalid_utf8", "empty_text", "missing_id", *VECTOR_REASONS, "duplicate_id")
_CODE = {reason: code for code, reason in enumerate(REASONS, start=1)}


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


def _vector_codes(check: VectorCheck, n: int) -> NDArray[np.int64]:
    """Reason code of each of `n` rows by their vector (0: a good vector)."""
    code = np.zeros(n, np.int64)
    code[check.reject_rows] = [_CODE[reason] for reason in check.reject_reasons]
    return code


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
        doc_ids = ids.filter(keep) if ids is not None else derived_ids(source, rows, good_text)
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
            good[S.EMBEDDING] = kept_vectors(vectors, code == 0)
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
            detail = vector_detail(batch.vectors, i, reason, self.dim)
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
