"""k-means with FAISS: train on a sample, assign any number of points in batches.

Lloyd's algorithm (`faiss.Kmeans`); with ``metric="cosine"`` it is spherical k-means
(centroids re-normalised after each update, assignment by inner product), which is the right
model for L2-normalised embeddings.
"""

from __future__ import annotations

from typing import Literal, Self

import faiss
import numpy as np
from numpy.typing import NDArray

from udl.errors import ConfigError

__all__ = ["FaissKMeans", "to_distance"]

Metric = Literal["cosine", "l2"]


def to_distance(scores: NDArray[np.float32], metric: Metric) -> NDArray[np.float32]:
    """FAISS search scores to distances: 1 - cos for inner product, sqrt for squared L2."""
    if metric == "cosine":
        return (1.0 - scores).clip(min=0.0).astype(np.float32)
    return np.sqrt(np.maximum(scores, 0.0)).astype(np.float32)


def prepare(x: NDArray[np.float32], metric: Metric) -> NDArray[np.float32]:
    """A C-contiguous float32 copy, L2-normalised for cosine (the caller's array is untouched)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(out)
    return out


def flat_index(centroids: NDArray[np.float32], metric: Metric) -> faiss.Index:
    """Exact index over `centroids` for the metric."""
    index = (
        faiss.IndexFlatIP(centroids.shape[1])
        if metric == "cosine"
        else faiss.IndexFlatL2(centroids.shape[1])
    )
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


class FaissKMeans:
    """k-means estimator: `fit` on a sample, `predict` batch by batch.

    Attributes (after fit):
        cluster_centers_: float32 (k, dim).
        inertia_: final objective of the best restart (sum of squared distances, or of
            similarities for cosine, as FAISS reports it).
        n_iter_: iterations run.
    """

    def __init__(
        self,
        k: int,
        metric: Metric = "cosine",
        niter: int = 25,
        nredo: int = 1,
        max_points_per_centroid: int = 256,
        seed: int = 0,
    ) -> None:
        if k < 2:
            raise ConfigError(f"The 'k' parameter of FaissKMeans must be >= 2. Got {k} instead.")
        self.k, self.metric, self.niter, self.nredo = k, metric, niter, nredo
        self.max_points_per_centroid, self.seed = max_points_per_centroid, seed

    def fit(
        self, x: NDArray[np.float32], init_centroids: NDArray[np.float32] | None = None
    ) -> Self:
        """Train on `x` (n, dim) float32; optionally warm-start from `init_centroids` (k, dim).

        Raises:
            ConfigError: fewer points than clusters.
        """
        if x.shape[0] < self.k:
            raise ConfigError(
                f"n_docs={x.shape[0]} should be >= k={self.k}; lower k or use k='auto'."
            )
        data = prepare(x, self.metric)
        kmeans = faiss.Kmeans(
            data.shape[1],
            self.k,
            niter=self.niter,
            nredo=self.nredo,
            seed=self.seed,
            spherical=self.metric == "cosine",
            max_points_per_centroid=self.max_points_per_centroid,
            verbose=False,
        )
        kmeans.train(data, init_centroids=init_centroids)
        self.cluster_centers_ = kmeans.centroids.astype(np.float32)
        self.inertia_ = float(kmeans.obj[-1]) if len(kmeans.obj) else float("nan")
        self.n_iter_ = len(kmeans.obj) // self.nredo
        self._index = flat_index(self.cluster_centers_, self.metric)
        return self

    def predict(
        self, x: NDArray[np.float32]
    ) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]:
        """Nearest centroid of each row of `x`.

        Returns:
            cluster ids int32 (n,), distance to that centroid float32 (n,), and confidence
            float32 (n,) = 1 - d1/d2 from the nearest and second-nearest centroid distances
            (1 on the centroid, 0 on the boundary between two clusters).
        """
        scores, ids = self._index.search(prepare(x, self.metric), 2)
        dist = to_distance(scores, self.metric)
        confidence = 1.0 - dist[:, 0] / np.maximum(dist[:, 1], 1e-12)
        return ids[:, 0].astype(np.int32), dist[:, 0], confidence.clip(0.0, 1.0).astype(np.float32)
