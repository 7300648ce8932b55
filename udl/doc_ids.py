"""Document ids in the ingest step: 64-bit hashes to find repeats, where each kept document
came from (to name it in a repeat's reject), and ids derived for corpora without an id column."""

from __future__ import annotations

import bisect
import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from udl.errors import InputDataError
from udl.sources import Source

__all__ = [
    "KeptDocs",
    "SeenIds",
    "derived_ids",
    "describe_record",
    "duplicate_error",
    "hash_ids",
]

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


def derived_ids(source: Source, rows: pa.Array, texts: pa.Array) -> pa.Array:
    """Stable ids from source name, row number and full text: identical across reruns."""
    prefix = f"{source.name}\x00".encode()
    ids = [
        hashlib.sha1(prefix + f"{row}\x00{text}".encode()).hexdigest()[:DERIVED_ID_HEX]
        for row, text in zip(rows.to_pylist(), texts.to_pylist(), strict=True)
    ]
    return pa.array(ids, pa.string())
