"""The clustering step: fit on (a sample of) the embeddings, then write one assignment row per
document, streamed part by part, with the label and metadata columns carried from the corpus."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.cluster.dbscan import dbscan, estimate_eps
from udl.cluster.kmeans import FaissKMeans, flat_index, prepare, to_distance
from udl.cluster.selection import choose_k
from udl.config import ClusterConfig
from udl.embed import read_embeddings
from udl.storage import atomic_dir, dataset_parts, sample_rows, write_part

__all__ = ["CENTROIDS_FILE", "ClusterResult", "cluster_embeddings", "read_sample"]

log = logging.getLogger(__name__)

CENTROIDS_FILE = "centroids.npy"
CARRIED = {S.DOC_ID, S.TEXT, S.SOURCE, S.ROW, S.TRUNCATED}


@dataclass(frozen=True)
class ClusterResult:
    """What the clustering step chose and produced (all of it goes to metrics.json)."""

    algorithm: str
    metric: str
    k: int | None
    eps: float | None
    min_samples: int | None
    n_clusters: int
    n_noise: int
    n_docs: int
    n_train: int
    selection: dict[str, Any] = field(default_factory=dict)


def read_sample(
    embeddings_dir: Path, size: int, seed: int
) -> tuple[NDArray[np.float32], list[tuple[int, NDArray[np.int64]]]]:
    """A seeded sample of at most `size` embeddings (n, dim), and where the rows came from."""
    parts = dataset_parts(embeddings_dir)
    picks = sample_rows(parts, size, seed)
    blocks = [read_embeddings(parts[i])[1][rows] for i, rows in picks]
    return np.concatenate(blocks).astype(np.float32), picks


def _read_all(embeddings_dir: Path) -> NDArray[np.float32]:
    return np.concatenate([read_embeddings(p)[1] for p in dataset_parts(embeddings_dir)])


def _centroids_of(
    x: NDArray[np.float32], labels: NDArray[np.int32], n_clusters: int, metric: str
) -> NDArray[np.float32]:
    """Mean of each cluster's members (normalised for cosine); noise (-1) is ignored."""
    member = labels >= 0
    sums = np.zeros((n_clusters, x.shape[1]), np.float64)
    np.add.at(sums, labels[member], x[member])
    centroids = (sums / np.bincount(labels[member], minlength=n_clusters)[:, None]).astype(
        np.float32
    )
    return prepare(centroids, metric) if metric == "cosine" else centroids


def _fit_kmeans(
    embeddings_dir: Path, config: ClusterConfig, seed: int
) -> tuple[FaissKMeans, int, dict[str, Any]]:
    selection: dict[str, Any] = {}
    k = config.k
    if k == "auto":
        sample, _ = read_sample(embeddings_dir, config.selection_sample, seed)
        result = choose_k(sample, config.k_candidates, config.metric, config.niter, seed)
        k, selection = result.chosen, result.as_dict()
        log.info("auto k: chose %d from %s", k, config.k_candidates)
    train, _ = read_sample(embeddings_dir, config.max_points_per_centroid * k, seed)
    model = FaissKMeans(
        k, config.metric, config.niter, config.nredo, config.max_points_per_centroid, seed
    ).fit(train)
    return model, len(train), selection


def _assignment_table(
    corpus_part: Path,
    doc_ids: list[str],
    labels: NDArray,
    dist: NDArray,
    conf: NDArray,
    run_id: str,
) -> pa.Table:
    base = pa.Table.from_arrays(
        [
            pa.array(doc_ids, pa.string()),
            pa.array(labels, pa.int32()),
            pa.array(dist, pa.float32()),
            pa.array(conf, pa.float32()),
            pa.array([run_id] * len(doc_ids), pa.string()),
        ],
        schema=S.ASSIGNMENTS_SCHEMA,
    )
    corpus_schema = pq.read_schema(corpus_part)
    carried = [name for name in corpus_schema.names if name not in CARRIED]
    if carried:
        extra = pq.read_table(corpus_part, columns=carried)
        for name in carried:
            base = base.append_column(corpus_schema.field(name), extra.column(name))
    return base


def cluster_embeddings(
    embeddings_dir: Path,
    corpus_dir: Path,
    assignments_dir: Path,
    models_dir: Path,
    config: ClusterConfig,
    run_id: str,
    seed: int,
) -> ClusterResult:
    """Cluster the embeddings and write `assignments/` (one row per document).

    k-means trains on at most `max_points_per_centroid * k` sampled points and assigns every
    part in turn. DBSCAN is exact and needs all embeddings in memory (n x dim float32).
    """
    emb_parts, corpus_parts = dataset_parts(embeddings_dir), dataset_parts(corpus_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    if config.algorithm == "kmeans":
        model, n_train, selection = _fit_kmeans(embeddings_dir, config, seed)
        centroids, eps = model.cluster_centers_, None
        dbscan_labels = None
    else:
        x = _read_all(embeddings_dir)
        eps = (
            estimate_eps(x, config.min_samples, config.metric, config.selection_sample, seed)
            if config.eps == "auto"
            else float(config.eps)
        )
        dbscan_labels = dbscan(x, eps, config.min_samples, config.metric).labels
        centroids = _centroids_of(x, dbscan_labels, int(dbscan_labels.max()) + 1, config.metric)
        n_train, selection = len(x), {"eps": eps}
    np.save(models_dir / CENTROIDS_FILE, centroids, allow_pickle=False)
    n_docs = n_noise = offset = 0
    with atomic_dir(assignments_dir) as out:
        for i, (emb_part, corpus_part) in enumerate(zip(emb_parts, corpus_parts, strict=True)):
            doc_ids, x_part, _ = read_embeddings(emb_part)
            if dbscan_labels is None:
                labels, dist, conf = model.predict(x_part)
            else:
                labels = dbscan_labels[offset : offset + len(doc_ids)]
                dist, conf = _dbscan_distances(x_part, labels, centroids, config.metric)
            offset += len(doc_ids)
            write_part(_assignment_table(corpus_part, doc_ids, labels, dist, conf, run_id), out, i)
            n_docs += len(doc_ids)
            n_noise += int(np.sum(labels < 0))
    return ClusterResult(
        algorithm=config.algorithm,
        metric=config.metric,
        k=len(centroids) if config.algorithm == "kmeans" else None,
        eps=eps,
        min_samples=config.min_samples if config.algorithm == "dbscan" else None,
        n_clusters=len(centroids),
        n_noise=n_noise,
        n_docs=n_docs,
        n_train=n_train,
        selection=selection,
    )


def _dbscan_distances(
    x: NDArray[np.float32], labels: NDArray[np.int32], centroids: NDArray[np.float32], metric: str
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Distance to the own cluster's centroid (noise: the nearest centroid), and confidence
    1 - d_own / d_nearest_other (0 for noise, 1 when there is a single cluster)."""
    n = len(labels)
    if len(centroids) == 0:
        return np.full(n, np.nan, np.float32), np.zeros(n, np.float32)
    xs = prepare(x, metric)
    scores, ids = flat_index(centroids, metric).search(xs, min(2, len(centroids)))
    dist = to_distance(scores, metric)
    own = np.where(labels >= 0, labels, ids[:, 0])
    if metric == "cosine":
        d_own = (1.0 - np.einsum("ij,ij->i", xs, centroids[own])).clip(min=0.0)
    else:
        diff = xs - centroids[own]
        d_own = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    if len(centroids) < 2:
        return d_own.astype(np.float32), np.where(labels >= 0, 1.0, 0.0).astype(np.float32)
    d_other = np.where(ids[:, 0] == own, dist[:, 1], dist[:, 0])
    conf = np.where(labels >= 0, (1.0 - d_own / np.maximum(d_other, 1e-12)).clip(0.0, 1.0), 0.0)
    return d_own.astype(np.float32), conf.astype(np.float32)
