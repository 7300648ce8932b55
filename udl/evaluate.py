"""Clustering quality: internal scores on a sample, label scores on every document.

Internal scores (silhouette, Calinski-Harabasz, Davies-Bouldin) are O(n^2) or need all points
in memory, so they run on a seeded sample; label scores need only two integer columns and use
every document. Noise points (cluster -1) are left out of the internal scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from udl import schema as S
from udl.embed import read_embeddings
from udl.storage import dataset_parts, sample_rows

__all__ = ["cluster_accuracy", "evaluate_run", "internal_metrics", "label_metrics"]


def cluster_accuracy(labels_true: NDArray, labels_pred: NDArray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (Hungarian).

    Example:
        >>> cluster_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
    """
    contingency = skm.cluster.contingency_matrix(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / contingency.sum())


def label_metrics(labels_true: NDArray, labels_pred: NDArray) -> dict[str, float]:
    """NMI, ARI, cluster accuracy, homogeneity and completeness against known classes."""
    return {
        "nmi": float(skm.normalized_mutual_info_score(labels_true, labels_pred)),
        "ari": float(skm.adjusted_rand_score(labels_true, labels_pred)),
        "acc": cluster_accuracy(labels_true, labels_pred),
        "homogeneity": float(skm.homogeneity_score(labels_true, labels_pred)),
        "completeness": float(skm.completeness_score(labels_true, labels_pred)),
    }


def internal_metrics(
    x: NDArray[np.float32], labels: NDArray[np.int32], metric: str
) -> dict[str, float | None]:
    """Silhouette (cosine or euclidean, matching the clustering), CH and DB on clustered points.

    Scores are None when fewer than two clusters (or fewer than three points) remain.
    """
    keep = labels >= 0
    x, labels = x[keep], labels[keep]
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return {"silhouette": None, "calinski_harabasz": None, "davies_bouldin": None}
    return {
        "silhouette": float(
            skm.silhouette_score(x, labels, metric="cosine" if metric == "cosine" else "euclidean")
        ),
        "calinski_harabasz": float(skm.calinski_harabasz_score(x, labels)),
        "davies_bouldin": float(skm.davies_bouldin_score(x, labels)),
    }


def evaluate_run(
    assignments_dir: Path, embeddings_dir: Path, metric: str, sample_size: int, seed: int
) -> dict[str, Any]:
    """All metrics of a run, with the sample sizes used.

    Returns:
        ``n_docs``, ``n_clusters``, ``n_noise``, the internal scores and ``metrics_sample``,
        plus ``nmi``/``ari``/``acc``/``homogeneity``/``completeness`` and ``n_labelled`` when the
        assignments carry a label column.
    """
    parts = dataset_parts(assignments_dir)
    columns = [S.CLUSTER_ID] + ([S.LABEL] if S.LABEL in pq.read_schema(parts[0]).names else [])
    table = pq.read_table(assignments_dir, columns=columns)
    clusters = table.column(S.CLUSTER_ID).to_numpy()
    result: dict[str, Any] = {
        "n_docs": len(clusters),
        "n_clusters": len(np.unique(clusters[clusters >= 0])),
        "n_noise": int(np.sum(clusters < 0)),
    }
    emb_parts = dataset_parts(embeddings_dir)
    picks = sample_rows(emb_parts, sample_size, seed)
    x = np.concatenate([read_embeddings(emb_parts[i])[1][rows] for i, rows in picks])
    offsets = np.concatenate([[0], np.cumsum([pq.ParquetFile(p).metadata.num_rows for p in parts])])
    sampled = np.concatenate([clusters[offsets[i] + rows] for i, rows in picks])
    result.update(internal_metrics(x, sampled, metric))
    result["metrics_sample"] = len(x)
    if S.LABEL in columns:
        labels = table.column(S.LABEL).to_numpy(zero_copy_only=False)
        known = np.array([v is not None for v in labels])
        if known.any():
            result.update(label_metrics(labels[known].astype(str), clusters[known]))
            result["n_labelled"] = int(known.sum())
    return result
