"""The report's sample of embeddings, read without decoding every embeddings part when the
run reused the previous run's vectors.

The sample is the `size` documents with features whose seeded hashes of their ids are the
smallest: a uniform draw without replacement, like any seeded draw, in which each document's
chance comes from its id alone. From one night to the next, a document whose id stays keeps
its hash, so it stays in the sample unless documents with smaller hashes arrive (ids derived
from row numbers change when rows are inserted, and then so does the sample). An incremental
run (`udl.incremental`) copies the previous run's vectors for unchanged texts, so most of its
sampled vectors are rows the previous report already read: each report keeps its sampled
rows' vectors, with SPARE more candidates, in ``report/sample.parquet``, and the next run
takes them from there, the vectors of the texts it computed from ``delta/``, and reads only
the embeddings parts that hold the rest. Where a vector comes from changes nothing in the
sample: it equals, vector for vector, the one read from the parts.

Memory is bounded by the sample: ids are hashed part by part, keeping the best candidates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.changes import delta_path, has_changes, read_changes
from udl.datasets import RunLayout, decode_vectors, encode_vectors, no_features_mask
from udl.storage import PartRows, dataset_parts, read_json, write_table_atomic

__all__ = ["Reused", "Sample", "read_sample"]

# Candidates kept beyond the sample for the next run (share of the sample): a document whose
# rank moves up because documents before it were deleted or re-identified is still there.
SPARE = 0.1
# Rows of the reuse plan counted at a time (the plan has one entry per document).
PLAN_BLOCK = 1 << 20
# Parquet metadata of report/sample.parquet: the key of the embed step whose vectors it holds.
EMBED_KEY = b"udl.embed_key"


@dataclass(frozen=True)
class Sample:
    """A seeded sample of documents: embeddings (n, dim), their cluster ids and anomaly scores."""

    x: NDArray[np.float32]
    clusters: NDArray[np.int64]
    anomaly: NDArray[np.float32]


@dataclass(frozen=True)
class Reused:
    """The run an incremental run's embeddings were merged from, and that run's embed key
    then (its embed step's ``reused_from`` and ``reused_key``)."""

    run: RunLayout
    embed_key: str


@dataclass(frozen=True)
class _Candidates:
    """The documents with the smallest keys, in corpus order."""

    rows: NDArray[np.int64]
    clusters: NDArray[np.int64]
    rank: NDArray[np.int64]  # 0 for the smallest key


def _keys(ids: pa.Array | pa.ChunkedArray, seed: int) -> NDArray[np.uint64]:
    """Seeded 64-bit hashes of doc ids (SipHash; the same in every process)."""
    key = hashlib.blake2b(str(seed).encode(), digest_size=8).hexdigest()
    return pd.util.hash_array(ids.to_numpy(zero_copy_only=False), hash_key=key, categorize=False)


def _candidates(layout: RunLayout, count: int, seed: int) -> _Candidates:
    """The `count` documents with features whose keys are smallest (ties by corpus order)."""
    keys = np.empty(0, np.uint64)
    rows = np.empty(0, np.int64)
    clusters = np.empty(0, np.int64)
    offset = 0
    for part in dataset_parts(layout.assignments):
        columns = [S.DOC_ID, S.CLUSTER_ID]
        if S.STATUS in pq.read_schema(part).names:
            columns.append(S.STATUS)
        table = pq.read_table(part, columns=columns)
        no_features = no_features_mask(table)
        eligible = (
            np.arange(table.num_rows) if no_features is None else np.flatnonzero(~no_features)
        )
        taken = pa.array(eligible)
        keys = np.concatenate([keys, _keys(table.column(S.DOC_ID).take(taken), seed)])
        rows = np.concatenate([rows, offset + eligible])
        clusters = np.concatenate(
            [clusters, table.column(S.CLUSTER_ID).take(taken).to_numpy().astype(np.int64)]
        )
        offset += table.num_rows
        best = np.lexsort((rows, keys))[:count]
        keys, rows, clusters = keys[best], rows[best], clusters[best]
    rank = np.empty(len(rows), np.int64)
    rank[np.lexsort((rows, keys))] = np.arange(len(rows))
    order = np.argsort(rows)
    return _Candidates(rows[order], clusters[order], rank[order])


def _computed_positions(plan: NDArray[np.int64], rows: NDArray[np.int64]) -> NDArray[np.int64]:
    """For sorted `rows` whose plan entry is -1 (computed this run): their positions among the
    computed documents, i.e. in ``delta/embeddings``."""
    positions = np.empty(len(rows), np.int64)
    before = 0
    for start in range(0, len(plan), PLAN_BLOCK):
        computed = np.cumsum(np.asarray(plan[start : start + PLAN_BLOCK]) < 0)
        inside = (rows >= start) & (rows < start + len(computed))
        positions[inside] = before + computed[rows[inside] - start] - 1
        before += int(computed[-1])
    return positions


class _Vectors:
    """Vectors and anomaly scores of chosen corpus rows, filled from wherever they are."""

    def __init__(self, layout: RunLayout, rows: NDArray[np.int64]) -> None:
        self.rows = rows
        dim = pq.read_schema(dataset_parts(layout.embeddings)[0]).field(S.EMBEDDING).type
        self.x = np.empty((len(rows), dim.list_size), np.float32)
        self.anomaly = np.empty(len(rows), np.float32)
        self.found = np.zeros(len(rows), bool)

    def fill(self, at: NDArray[np.int64], table: pa.Table) -> None:
        """Rows `at` (positions in `rows`) from `table`'s embedding and anomaly columns."""
        if not len(at):
            return
        self.x[at] = decode_vectors(table.column(S.EMBEDDING))
        self.anomaly[at] = table.column(S.ANOMALY).to_numpy()
        self.found[at] = True


def _from_previous(vectors: _Vectors, layout: RunLayout, reused: Reused) -> None:
    """Fill what an incremental run can take without its embeddings parts: rows it computed
    (``delta/embeddings``) and rows it reused that the previous report kept, if that report
    read the embeddings the rows were copied from."""
    plan = read_changes(layout, mapped=True)
    sources = np.asarray(plan[vectors.rows])
    computed = np.flatnonzero(sources < 0)
    if len(computed):
        delta = PartRows(delta_path(layout, "embeddings"), columns=[S.EMBEDDING, S.ANOMALY])
        vectors.fill(computed, delta.take(_computed_positions(plan, vectors.rows[computed])))
    path = reused.run.report_sample
    if not path.is_file():
        return
    kept = pq.read_table(path)
    # A previous run re-run since (same id, other settings) kept other vectors.
    if (kept.schema.metadata or {}).get(EMBED_KEY) != reused.embed_key.encode():
        return
    kept_rows = kept.column(S.ROW).to_numpy()
    if not len(kept_rows):
        return
    index = np.minimum(np.searchsorted(kept_rows, sources), len(kept_rows) - 1)
    hit = np.flatnonzero((sources >= 0) & (kept_rows[index] == sources))
    vectors.fill(hit, kept.take(pa.array(index[hit])))


def _embed_key(layout: RunLayout) -> bytes:
    """The run's embed step key; empty where the run has no embed record or key."""
    record = layout.step_record("embed")
    return str(read_json(record).get("key", "")).encode() if record.exists() else b""


def read_sample(layout: RunLayout, size: int, seed: int, reused: Reused | None = None) -> Sample:
    """The report's sample (module docstring) of `layout`'s documents with features; keeps its
    rows' vectors in ``report/sample.parquet`` for the next run.

    Args:
        layout: the run, with its assignments and embeddings written.
        size: at most this many documents.
        seed: the run's seed.
        reused: for an incremental run, where its reused rows came from: that run's kept
            sample and `layout`'s computed vectors are used before any embeddings part.
    """
    candidates = _candidates(layout, size + int(np.ceil(size * SPARE)), seed)
    vectors = _Vectors(layout, candidates.rows)
    if reused is not None and has_changes(layout):
        _from_previous(vectors, layout, reused)
    chosen = candidates.rank < size
    if np.any(chosen & ~vectors.found):
        parts = PartRows(layout.embeddings, columns=[S.EMBEDDING, S.ANOMALY])
        part_of = np.searchsorted(parts.starts, candidates.rows, side="right") - 1
        # Spare candidates come along from the parts read anyway, never a part of their own.
        read = np.isin(part_of, part_of[chosen & ~vectors.found])
        missing = np.flatnonzero(read & ~vectors.found)
        vectors.fill(missing, parts.take(candidates.rows[missing]))
    found = vectors.found
    kept = pa.table(
        {
            S.ROW: pa.array(candidates.rows[found], pa.int64()),
            S.EMBEDDING: encode_vectors(vectors.x[found]),
            S.ANOMALY: pa.array(vectors.anomaly[found], pa.float32()),
        },
        metadata={EMBED_KEY: _embed_key(layout)},
    )
    write_table_atomic(kept, layout.report_sample)
    return Sample(vectors.x[chosen], candidates.clusters[chosen], vectors.anomaly[chosen])
