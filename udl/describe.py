"""What each cluster is about: size, keywords, representative documents, anomaly, outliers.

One streamed pass over the aligned parts (assignments, features, embeddings' anomaly scores);
memory holds per-cluster sums of TF-IDF (sparse), the best few candidates per cluster and the
top outliers, never the corpus.

Keywords use class-based TF-IDF (Grootendorst, BERTopic): the summed TF-IDF of a cluster's
documents, scaled by ``log(1 + A / f_t)`` where ``f_t`` is the feature's total weight over all
clusters and ``A`` the mean total weight per cluster, so words common to every cluster sink.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from udl import schema as S
from udl.features import read_csr, read_vocabulary
from udl.storage import dataset_parts

__all__ = ["ClusterSummary", "Description", "Example", "class_tfidf", "describe_clusters"]


@dataclass(frozen=True, order=True)
class Example:
    """A document shown in the report; ordered by `score` (distance or anomaly)."""

    score: float
    doc_id: str = field(compare=False)
    text: str = field(compare=False)


@dataclass
class ClusterSummary:
    cluster_id: int
    size: int
    share: float
    keywords: list[str]
    examples: list[Example]
    mean_anomaly: float


@dataclass
class Description:
    clusters: list[ClusterSummary]
    noise: ClusterSummary | None
    outliers: list[Example]
    n_outliers_flagged: int
    anomaly_threshold: float


def class_tfidf(sums: sp.csr_matrix) -> sp.csr_matrix:
    """c-TF-IDF of per-cluster summed TF-IDF rows (n_clusters, n_features)."""
    totals = np.asarray(sums.sum(axis=0)).ravel()
    mean_weight = float(sums.sum()) / max(sums.shape[0], 1)
    weights = np.zeros_like(totals)
    nonzero = totals > 0
    weights[nonzero] = np.log1p(mean_weight / totals[nonzero])
    return sp.csr_matrix(sums.multiply(weights[np.newaxis, :]))


def _top_keywords(row: sp.csr_matrix, vocabulary: dict[int, str], n: int) -> list[str]:
    order = np.argsort(-row.data, kind="stable")
    names = [vocabulary.get(int(row.indices[i])) for i in order]
    return [name for name in names if name][:n]


def _push(heap: list, item: Example, limit: int) -> None:
    """Keep the `limit` smallest items (max-heap of negated scores)."""
    entry = (-item.score, item.doc_id, item)
    if len(heap) < limit:
        heapq.heappush(heap, entry)
    elif entry > heap[0]:
        heapq.heapreplace(heap, entry)


def describe_clusters(
    assignments_dir: Path,
    corpus_dir: Path,
    features_dir: Path,
    embeddings_dir: Path,
    models_dir: Path,
    n_features: int,
    n_keywords: int = 10,
    n_examples: int = 5,
    outlier_fraction: float = 0.01,
    n_outlier_examples: int = 10,
) -> Description:
    """Summarise every cluster and the outliers of a run (see the module docstring)."""
    vocabulary = read_vocabulary(models_dir)
    parts = zip(
        dataset_parts(assignments_dir),
        dataset_parts(corpus_dir),
        dataset_parts(features_dir),
        dataset_parts(embeddings_dir),
        strict=True,
    )
    sums: sp.csr_matrix | None = None
    sizes: dict[int, int] = {}
    anomaly_sum: dict[int, float] = {}
    nearest: dict[int, list] = {}
    anomalies: list[NDArray[np.float32]] = []
    outliers: list = []
    for assign_part, corpus_part, features_part, emb_part in parts:
        table = pq.read_table(assign_part, columns=[S.DOC_ID, S.CLUSTER_ID, S.DISTANCE])
        labels = table.column(S.CLUSTER_ID).to_numpy()
        distance = table.column(S.DISTANCE).to_numpy()
        doc_ids = table.column(S.DOC_ID).to_pylist()
        anomaly = pq.read_table(emb_part, columns=[S.ANOMALY]).column(S.ANOMALY).to_numpy()
        anomalies.append(anomaly)
        texts = pq.read_table(corpus_part, columns=[S.TEXT]).column(S.TEXT)
        # Cluster ids shifted by one so that noise (-1) gets row 0 of the sums.
        shifted = labels.astype(np.int64) + 1
        n_rows = int(shifted.max()) + 1 if len(shifted) else 1
        indicator = sp.csr_matrix(
            (np.ones(len(shifted), np.float32), (shifted, np.arange(len(shifted)))),
            shape=(n_rows, len(shifted)),
        )
        part_sums = indicator @ read_csr(pq.read_table(features_part), n_features)
        sums = part_sums if sums is None else _add_padded(sums, part_sums)
        for cluster in np.unique(labels):
            members = np.flatnonzero(labels == cluster)
            sizes[int(cluster)] = sizes.get(int(cluster), 0) + len(members)
            anomaly_sum[int(cluster)] = anomaly_sum.get(int(cluster), 0.0) + float(
                anomaly[members].sum()
            )
            heap = nearest.setdefault(int(cluster), [])
            for i in members[np.argsort(distance[members], kind="stable")[:n_examples]]:
                _push(
                    heap, Example(float(distance[i]), doc_ids[i], texts[int(i)].as_py()), n_examples
                )
        for i in np.argsort(-anomaly, kind="stable")[:n_outlier_examples]:
            _push(
                outliers,
                Example(-float(anomaly[i]), doc_ids[i], texts[int(i)].as_py()),
                n_outlier_examples,
            )
    all_anomaly = np.concatenate(anomalies) if anomalies else np.zeros(0, np.float32)
    n_docs = len(all_anomaly)
    n_flagged = round(outlier_fraction * n_docs)
    threshold = float(np.sort(all_anomaly)[-n_flagged]) if n_flagged else float("inf")
    keywords = class_tfidf(sums) if sums is not None else None

    def summary(cluster: int) -> ClusterSummary:
        examples = sorted(entry[2] for entry in nearest[cluster])
        words = (
            _top_keywords(keywords[cluster + 1], vocabulary, n_keywords)
            if keywords is not None
            else []
        )
        return ClusterSummary(
            cluster_id=cluster,
            size=sizes[cluster],
            share=sizes[cluster] / max(n_docs, 1),
            keywords=words,
            examples=examples,
            mean_anomaly=anomaly_sum[cluster] / sizes[cluster],
        )

    clusters = [summary(c) for c in sorted(sizes) if c >= 0]
    clusters.sort(key=lambda c: (-c.size, c.cluster_id))
    return Description(
        clusters=clusters,
        noise=summary(-1) if -1 in sizes else None,
        outliers=[
            Example(-e.score, e.doc_id, e.text) for e in sorted(entry[2] for entry in outliers)
        ],
        n_outliers_flagged=n_flagged,
        anomaly_threshold=threshold,
    )


def _add_padded(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    rows = max(a.shape[0], b.shape[0])
    a.resize((rows, a.shape[1]))
    b.resize((rows, b.shape[1]))
    return (a + b).tocsr()
