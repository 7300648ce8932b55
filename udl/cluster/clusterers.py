"""Clusterers: k-means and DBSCAN behind one protocol, so the cluster step has one path.

A clusterer is fitted on the embeddings of the documents with features (a seeded sample for
k-means, all of them for DBSCAN), choosing k or eps on request, then labels the corpus part by
part, in order, in its fitted cluster order (the step aligns ids to the previous run). k-means
is inductive: it labels any vectors by their nearest centroid. DBSCAN is transductive: it
labels the documents it was fitted on, so `assign` also takes the position of the part's first
document with features among them. A new clusterer implements `Clusterer` and registers in
`CLUSTERERS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, Self

import numpy as np
from numpy.typing import NDArray

from udl.cluster.dbscan import dbscan
from udl.cluster.eps_search import choose_eps
from udl.cluster.kmeans import FaissKMeans, prepare, to_distance
from udl.cluster.neighbours import flat_index
from udl.cluster.selection import choose_k
from udl.config import ClusterConfig
from udl.datasets import Embeddings
from udl.errors import ConfigError, NotFittedError

__all__ = [
    "CLUSTERERS",
    "Assigned",
    "Clusterer",
    "DBSCANClusterer",
    "KMeansClusterer",
    "make_clusterer",
]

log = logging.getLogger(__name__)

Assigned = tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]


class Clusterer(Protocol):
    """What the cluster step needs of a clustering algorithm.

    Attributes (after `fit`):
        centroids_: (n_clusters, dim) float32, row i the centre of fitted cluster i.
        n_train_: documents the model was fitted on.
        selection_: the automatic choice of k or eps (`ClusterResult.selection`), else empty.
        warnings_: sentences about the fit worth a second look.
        exact_: False when the result is approximate (DBSCAN with `dbscan_nprobe`).
        warm_started_: whether fitting started from the previous run's centroids.
    """

    centroids_: NDArray[np.float32]
    n_train_: int
    selection_: dict[str, Any]
    warnings_: list[str]
    exact_: bool
    warm_started_: bool

    def fit(self, embeddings: Embeddings, previous: NDArray[np.float32] | None) -> Self:
        """Fit on the documents with features; `previous`: the previous run's centroids."""
        ...

    def assign(self, x: NDArray[np.float32], featured: NDArray[np.bool_], offset: int) -> Assigned:
        """Cluster ids in fitted order (-1: noise), distances to the own centroid and
        confidences of one part's vectors `x` (n, dim). `featured` marks its documents with
        features and `offset` counts those of the parts before it; the step overwrites the
        rows without features."""
        ...

    def parameters(self) -> dict[str, Any]:
        """`k`, `eps`, `min_samples` and `spherical` as fitted (None where they do not apply)."""
        ...

    def setting(self) -> str:
        """The parameters in words, for warnings."""
        ...


class KMeansClusterer:
    """FAISS k-means on a sample of at most `max_points_per_centroid * k` documents; k chosen
    by internal scores when `k` is 'auto'; warm-started from the previous centroids when k and
    the dimension match."""

    def __init__(self, config: ClusterConfig, seed: int) -> None:
        self.config, self.seed = config, seed
        self.model: FaissKMeans | None = None
        self.selection_: dict[str, Any] = {}
        self.warnings_: list[str] = []
        self.exact_ = True

    def fit(self, embeddings: Embeddings, previous: NDArray[np.float32] | None) -> Self:
        config, seed = self.config, self.seed
        k = config.k
        if k == "auto":
            sample = embeddings.sample(config.selection_sample, seed)
            result = choose_k(sample, config.k_candidates, config.metric, config.niter, seed)
            k, self.selection_, self.warnings_ = result.chosen, result.as_dict(), result.warnings
            log.info(
                "auto k: chose %d from %s (extended by %s)", k, config.k_candidates, result.extended
            )
        train = embeddings.sample(config.max_points_per_centroid * k, seed)
        warm = previous if previous is not None and previous.shape == (k, train.shape[1]) else None
        self.model = FaissKMeans(
            k,
            config.metric,
            config.niter,
            config.nredo,
            config.max_points_per_centroid,
            seed,
            spherical=None if config.spherical == "auto" else config.spherical,
            init=config.kmeans_init,
        ).fit(train, init_centroids=warm)
        self.n_train_ = len(train)
        return self

    def _fitted(self) -> FaissKMeans:
        if self.model is None:
            raise NotFittedError("KMeansClusterer used before fit")
        return self.model

    @property
    def centroids_(self) -> NDArray[np.float32]:
        return self._fitted().cluster_centers_

    @property
    def warm_started_(self) -> bool:
        return self._fitted().warm_started_

    def assign(self, x: NDArray[np.float32], featured: NDArray[np.bool_], offset: int) -> Assigned:
        return self._fitted().predict(x, self.config.assign_batch_size)

    def parameters(self) -> dict[str, Any]:
        model = self._fitted()
        return {"k": model.k, "eps": None, "min_samples": None, "spherical": model.spherical_}

    def setting(self) -> str:
        auto = " chosen automatically" if self.selection_ else ""
        return f"k={self._fitted().k}{auto}"


class DBSCANClusterer:
    """Exact DBSCAN (FAISS range search) on every document with features, all in memory
    (n x dim float32); eps from the knee of the k-distance curve when `eps` is 'auto'.
    Centroids are the mean of each cluster's members (normalised for cosine)."""

    warm_started_ = False

    def __init__(self, config: ClusterConfig, seed: int) -> None:
        self.config, self.seed = config, seed
        self.labels_: NDArray[np.int32] | None = None
        self.selection_: dict[str, Any] = {}
        self.warnings_: list[str] = []

    def fit(self, embeddings: Embeddings, previous: NDArray[np.float32] | None) -> Self:
        config = self.config
        _check_memory(embeddings, config.dbscan_max_gib)
        x = embeddings.featured()
        flat_max, nprobe = config.dbscan_flat_max, config.dbscan_nprobe
        if config.eps == "auto":
            if len(x) < config.min_samples:
                raise ConfigError(
                    f"eps='auto' needs at least min_samples={config.min_samples} documents with "
                    f"features, and there are {len(x)}; lower cluster.min_samples or set eps."
                )
            chosen = choose_eps(
                x,
                config.min_samples,
                config.metric,
                config.selection_sample,
                self.seed,
                flat_max=flat_max,
                nprobe=nprobe,
            )
            self.eps_, result = chosen.chosen, chosen.result
            self.selection_, self.warnings_ = chosen.as_dict(), chosen.warnings
            log.info(
                "auto eps: chose %.4g from %d candidates (min_samples=%d)",
                self.eps_,
                len(chosen.candidates),
                config.min_samples,
            )
        else:
            self.eps_ = float(config.eps)
            result = dbscan(
                x,
                self.eps_,
                config.min_samples,
                config.metric,
                flat_max=flat_max,
                nprobe=nprobe,
                seed=self.seed,
            )
        self.labels_, self.exact_, self.n_train_ = result.labels, result.exact, len(x)
        self.centroids_ = _centroids_of(x, result.labels, result.n_clusters, config.metric)
        return self

    def _fitted(self) -> NDArray[np.int32]:
        if self.labels_ is None:
            raise NotFittedError("DBSCANClusterer used before fit")
        return self.labels_

    def assign(self, x: NDArray[np.float32], featured: NDArray[np.bool_], offset: int) -> Assigned:
        fitted = self._fitted()
        labels = np.full(len(x), -1, np.int32)
        labels[featured] = fitted[offset : offset + int(featured.sum())]
        return (labels, *_distances(x, labels, self.centroids_, self.config.metric))

    def parameters(self) -> dict[str, Any]:
        self._fitted()
        return {
            "k": None,
            "eps": self.eps_,
            "min_samples": self.config.min_samples,
            "spherical": None,
        }

    def setting(self) -> str:
        self._fitted()
        auto = " chosen automatically" if self.selection_ else ""
        return f"eps={self.eps_:.3g}{auto}, min_samples={self.config.min_samples}"


CLUSTERERS: dict[str, Callable[[ClusterConfig, int], Clusterer]] = {
    "kmeans": KMeansClusterer,
    "dbscan": DBSCANClusterer,
}


def make_clusterer(config: ClusterConfig, seed: int) -> Clusterer:
    """The unfitted clusterer of `config.algorithm`."""
    return CLUSTERERS[config.algorithm](config, seed)


def _check_memory(embeddings: Embeddings, max_gib: float) -> None:
    """A clear error before DBSCAN loads more vectors than `cluster.dbscan_max_gib` allows."""
    n, dim = embeddings.featured_shape()
    need = 2 * n * dim * 4 / 2**30
    if need > max_gib:
        raise ConfigError(
            f"DBSCAN holds all {n:,} vectors of width {dim} in the flow process, about "
            f"{need:.1f} GiB with FAISS's copy, over cluster.dbscan_max_gib={max_gib:g}; raise "
            "it if this machine has the memory, or use k-means, which fits on a sample and "
            "assigns part by part (on the Dask workers with runtime.dask_inference)."
        )


def _centroids_of(
    x: NDArray[np.float32], labels: NDArray[np.int32], n_clusters: int, metric: str
) -> NDArray[np.float32]:
    """Mean of each cluster's members (normalised for cosine); noise (-1) is ignored."""
    member = labels >= 0
    sums = np.zeros((n_clusters, x.shape[1]), np.float64)
    np.add.at(sums, labels[member], x[member])
    counts = np.bincount(labels[member], minlength=n_clusters)[:, None]
    centroids = (sums / counts).astype(np.float32)
    return prepare(centroids, "cosine") if metric == "cosine" else centroids


def _distances(
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
