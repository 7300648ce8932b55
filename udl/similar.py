"""Similar documents: a FAISS index of a run's embeddings by cosine similarity, each
document's nearest neighbours as Parquet (``neighbours/``), and lookups by document id or by
a vector of a text the run never saw (`flows.lookup` embeds it).

The index holds the documents with features (the others share one meaningless vector). Up to
``neighbours.flat_max`` documents it is exact (``IndexFlatIP``); above, an inverted file
(``IndexIVFFlat``, about 4·sqrt(n) cells trained on a seeded sample, ``nprobe`` cells searched),
whose neighbours are approximate. The index kind and its parameters go into the step record.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.config import NeighboursConfig
from udl.datasets import (
    NEIGHBOUR_IDS_FILE,
    NEIGHBOURS_INDEX_FILE,
    Embeddings,
    RunLayout,
    decode_vectors,
    read_embeddings,
    read_has_features,
)
from udl.errors import UdlError
from udl.storage import atomic_dir, write_part, write_table_atomic

__all__ = [
    "Hit",
    "IndexInfo",
    "SimilarIndex",
    "build_index",
    "find_similar",
    "write_neighbours",
]

IVF_CELLS_PER_SQRT = 4
IVF_TRAIN_PER_CELL = 64
SEARCH_BATCH = 4096


@dataclass(frozen=True)
class IndexInfo:
    """What `build_index` built (the neighbours step's record).

    Attributes:
        kind: ``"flat"`` (exact) or ``"ivf"`` (approximate).
        n_docs: documents indexed (those with features).
        nlist: IVF cells (None for flat).
        nprobe: IVF cells searched per query (None for flat).
    """

    kind: str
    n_docs: int
    dim: int
    nlist: int | None
    nprobe: int | None


def _unit(x: NDArray[np.floating]) -> NDArray[np.float32]:
    out = np.array(x, dtype=np.float32, order="C")
    faiss.normalize_L2(out)
    return out


def _featured_ids(embeddings: Embeddings) -> list[str]:
    ids: list[str] = []
    for part, mask in zip(embeddings.parts, embeddings.has_features(), strict=True):
        column = pq.read_table(part, columns=[S.DOC_ID]).column(S.DOC_ID).to_numpy(False)
        ids.extend(column[mask].tolist())
    return ids


def build_index(
    embeddings_dir: Path, models_dir: Path, config: NeighboursConfig, seed: int
) -> IndexInfo:
    """Index the unit embeddings of the documents with features; write
    ``models/neighbours.faiss`` and the doc id of each index row (``neighbour_ids.parquet``).

    Raises:
        UdlError: no document has features.
    """
    embeddings = Embeddings(embeddings_dir)
    x = _unit(embeddings.featured())
    n, dim = x.shape
    if n == 0:
        raise UdlError("no document has features: there is nothing to index")
    nlist = nprobe = None
    if n <= config.flat_max:
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        nlist = max(16, min(65_536, int(IVF_CELLS_PER_SQRT * math.sqrt(n))))
        nprobe = min(config.nprobe, nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, min(n, IVF_TRAIN_PER_CELL * nlist), replace=False))
        index.train(x[sample])
        index.nprobe = nprobe
    index.add(x)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".{NEIGHBOURS_INDEX_FILE}.tmp-{uuid.uuid4().hex[:12]}"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, models_dir / NEIGHBOURS_INDEX_FILE)
    ids = pa.table({S.DOC_ID: pa.array(_featured_ids(embeddings), pa.string())})
    write_table_atomic(ids, models_dir / NEIGHBOUR_IDS_FILE)
    return IndexInfo("flat" if nlist is None else "ivf", n, dim, nlist, nprobe)


class SimilarIndex:
    """A run's saved index and the doc id of each of its rows."""

    def __init__(self, models_dir: Path) -> None:
        path = models_dir / NEIGHBOURS_INDEX_FILE
        if not path.is_file():
            raise UdlError(
                f"{models_dir.parent.name} has no similar-documents index ({path}): run the "
                "pipeline with neighbours.enabled: true (udl run --neighbours)"
            )
        self.index = faiss.read_index(str(path))
        table = pq.read_table(models_dir / NEIGHBOUR_IDS_FILE)
        self.ids = table.column(S.DOC_ID).to_numpy(zero_copy_only=False)

    def search(
        self, vectors: NDArray[np.floating], k: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Index rows (n, k) of the `k` most similar documents to each vector, best first, and
        their cosine similarities (-1 rows where fewer than `k` were found)."""
        k = min(k, self.index.ntotal)
        similarity, rows = self.index.search(_unit(vectors), k)
        return rows.astype(np.int64), similarity.astype(np.float32)


def write_neighbours(embeddings_dir: Path, models_dir: Path, out_dir: Path, k: int) -> int:
    """``neighbours/``: for each document with features, its `k` most similar other documents
    (``doc_id``, ``neighbour_id``, ``rank`` from 1, ``similarity``), one part per embeddings
    part. Returns the rows written."""
    similar = SimilarIndex(models_dir)
    first_row = 0  # index rows follow the featured documents in corpus order
    written = 0
    with atomic_dir(out_dir) as out:
        for index, part in enumerate(Embeddings(embeddings_dir).parts):
            doc_ids, x, _ = read_embeddings(part)
            featured = read_has_features(part)
            own = first_row + np.arange(int(featured.sum()))
            first_row += len(own)
            x, ids = x[featured], np.asarray(doc_ids, dtype=object)[featured]
            columns: dict[str, list[NDArray]] = {"doc": [], "nb": [], "rank": [], "sim": []}
            for start in range(0, len(x), SEARCH_BATCH):
                stop = start + SEARCH_BATCH
                rows, sims = similar.search(x[start:stop], k + 1)
                # Drop each document itself (or, when a duplicate outranks it, the last hit).
                mine = rows == own[start:stop, None]
                mine[~mine.any(axis=1), -1] = True
                keep = ~mine & (rows >= 0)
                keep &= np.cumsum(keep, axis=1) <= k
                columns["doc"].append(np.repeat(ids[start:stop], keep.sum(axis=1)))
                columns["nb"].append(similar.ids[rows[keep]])
                columns["rank"].append((np.cumsum(keep, axis=1))[keep])
                columns["sim"].append(sims[keep])
            table = pa.Table.from_arrays(
                [
                    pa.array(np.concatenate(columns["doc"]) if x.size else [], pa.string()),
                    pa.array(np.concatenate(columns["nb"]) if x.size else [], pa.string()),
                    pa.array(np.concatenate(columns["rank"]) if x.size else [], pa.int32()),
                    pa.array(np.concatenate(columns["sim"]) if x.size else [], pa.float32()),
                ],
                schema=S.NEIGHBOURS_SCHEMA,
            )
            write_part(table, out, index)
            written += table.num_rows
    return written


@dataclass(frozen=True)
class Hit:
    """One similar document: its rank (1 = most similar), id, cosine similarity, cluster and
    text."""

    rank: int
    doc_id: str
    similarity: float
    cluster_id: int
    text: str


def _vector_of(layout: RunLayout, doc_id: str) -> NDArray[np.float32]:
    table = pq.read_table(
        layout.embeddings,
        columns=[S.DOC_ID, S.EMBEDDING, S.HAS_FEATURES],
        filters=[(S.DOC_ID, "=", doc_id)],
    )
    if not table.num_rows:
        raise UdlError(f"run {layout.run_id} has no document {doc_id!r}")
    if not table.column(S.HAS_FEATURES)[0].as_py():
        raise UdlError(f"document {doc_id!r} has no features, so it is not in the index")
    return decode_vectors(table.column(S.EMBEDDING))


def find_similar(
    layout: RunLayout,
    k: int,
    *,
    doc_id: str | None = None,
    vector: NDArray[np.float32] | None = None,
) -> list[Hit]:
    """The `k` documents of a run most similar to one of its documents (which comes first,
    itself) or to a vector in the run's embedding space (e.g. a new text through its IDF and
    encoder).

    Raises:
        UdlError: the run has no index, or no such document.
    """
    similar = SimilarIndex(layout.models)
    if doc_id is not None:
        vector = _vector_of(layout, doc_id)
    if vector is None:
        raise ValueError("find_similar needs a doc_id or a vector")
    rows, sims = similar.search(vector, k)
    found = rows[0] >= 0
    ids = similar.ids[rows[0][found]].tolist()
    wanted = [(S.DOC_ID, "in", ids)]
    clusters = pq.read_table(layout.assignments, columns=[S.DOC_ID, S.CLUSTER_ID], filters=wanted)
    texts = pq.read_table(layout.corpus, columns=[S.DOC_ID, S.TEXT], filters=wanted)
    cluster_of = dict(zip(*clusters.to_pydict().values(), strict=True))
    text_of = dict(zip(*texts.to_pydict().values(), strict=True))
    return [
        Hit(rank, doc, float(sim), int(cluster_of.get(doc, -1)), str(text_of.get(doc, "")))
        for rank, (doc, sim) in enumerate(zip(ids, sims[0][found], strict=True), start=1)
    ]
