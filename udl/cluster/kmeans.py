"""k-means with FAISS: train on a sample, assign any number of points in batches.

Lloyd's algorithm: assign every point to its nearest centroid, move each centroid to the mean
of its points, repeat up to ``niter`` times; ``nredo`` restarts keep the best objective. The
iterations are :func:`udl.cluster.lloyd.lloyd`: the assignments and centroids of
``faiss.Kmeans``, with FAISS searching only the points whose bounds leave their cluster in
doubt, and plain iterations where the bounds spare little (see that module for figures).
Spherical k-means (Dhillon & Modha, 2001) re-normalises the centroids after each update; it
is the right model for L2-normalised embeddings, so it is the default for ``metric="cosine"``
(which normalises the points) and for ``"l2"`` when the points already have unit norm.

A start from ``k`` random training points (FAISS's) often puts two centroids in one cluster
and none in another on well-separated data, a local minimum Lloyd cannot leave. So for
``k <= PLUSPLUS_MAX_K`` (the cheap case) each restart starts from k-means++ seeding (Arthur &
Vassilvitskii, 2007; scikit-learn's ``kmeans_plusplus``) on a subsample of
``PLUSPLUS_POINTS_PER_CENTROID * k`` points; above that, the random start is kept because
k-means++ costs O(n k^2 d) on the subsample.
"""

from __future__ import annotations

from typing import Literal, Self

import faiss
import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import kmeans_plusplus

from udl.cluster._checks import Metric, check_metric, check_positive_int, check_x
from udl.cluster.lloyd import LloydResult, lloyd
from udl.cluster.neighbours import faiss_threads, flat_index, on_gpu
from udl.errors import ConfigError, NotFittedError

__all__ = ["FaissKMeans", "NearestCentroids", "initial_clusters", "prepare", "to_distance"]


Init = Literal["auto", "k-means++", "random"]
PLUSPLUS_MAX_K = 256
PLUSPLUS_POINTS_PER_CENTROID = 32
# Rows with |norm - 1| below this count as unit vectors when spherical is left to "auto".
_UNIT_NORM_TOL = 1e-4


def to_distance(scores: NDArray[np.float32], metric: Metric) -> NDArray[np.float32]:
    """FAISS search scores to distances: 1 - cos for inner product, sqrt for squared L2."""
    if metric == "cosine":
        return (1.0 - scores).clip(min=0.0).astype(np.float32)
    return np.sqrt(np.maximum(scores, 0.0)).astype(np.float32)


def prepare(x: NDArray[np.floating], metric: Metric) -> NDArray[np.float32]:
    """A C-contiguous float32 copy, L2-normalised for cosine (the caller's array is untouched)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(out)
    return out


class FaissKMeans:
    """k-means estimator: ``fit`` on a sample, ``predict`` batch by batch.

    Args:
        k: number of clusters, >= 2.
        metric: ``"cosine"`` (points normalised, distance 1 - cos) or ``"l2"``.
        niter: most Lloyd iterations per restart (a restart stops once no point moves).
        nredo: restarts from different initial centroids; the best objective is kept.
            A warm start (``init_centroids``) runs once, from those centroids.
        max_points_per_centroid: ``fit`` trains on a random sample of at most ``k`` times
            this many points.
        seed: seed of the initial centroids and of the training sample.
        spherical: normalise centroids after each update; None: for cosine, or for l2 when
            every training point has unit norm.
        init: start of each restart: "k-means++", "random" (FAISS's k random points), or
            "auto" (k-means++ when k <= PLUSPLUS_MAX_K).

    Attributes (after fit):
        cluster_centers_: float32 (k, dim); unit rows when spherical.
        inertia_: sum over the points given to ``fit`` of the squared Euclidean distance to
            their nearest centroid, in the space clustered (the normalised points for cosine).
        objective_: the kept restart's sum of squared distances over the training sample
            after each assignment (the first from its initial centroids).
        init_: the start used: "k-means++", "random" or "warm".
        n_iter_: Lloyd iterations run by the kept restart.
        spherical_: whether spherical k-means was used.
        warm_started_: whether ``init_centroids`` was used.

    Example:
        >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=np.float32)
        >>> km = FaissKMeans(2, "l2", seed=0).fit(x)
        >>> bool(km.predict(x)[0][0] == km.predict(x)[0][1] != km.predict(x)[0][2])
        True
    """

    def __init__(
        self,
        k: int,
        metric: Metric = "cosine",
        niter: int = 25,
        nredo: int = 1,
        max_points_per_centroid: int = 256,
        seed: int = 0,
        spherical: bool | None = None,
        init: Init = "auto",
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
            raise ConfigError(
                f"The 'k' parameter of FaissKMeans must be an int >= 2. Got {k!r} instead."
            )
        check_metric(metric, "FaissKMeans")
        for name, value in (
            ("niter", niter),
            ("nredo", nredo),
            ("max_points_per_centroid", max_points_per_centroid),
        ):
            check_positive_int(value, name, "FaissKMeans")
        if init not in ("auto", "k-means++", "random"):
            raise ConfigError(
                "The 'init' parameter of FaissKMeans must be one of 'auto', 'k-means++', "
                f"'random'. Got {init!r} instead."
            )
        self.init = init
        self.k, self.metric, self.niter, self.nredo = int(k), metric, niter, nredo
        self.max_points_per_centroid, self.seed, self.spherical = (
            max_points_per_centroid,
            seed,
            spherical,
        )
        self._nearest: NearestCentroids | None = None

    def fit(
        self, x: NDArray[np.floating], init_centroids: NDArray[np.floating] | None = None
    ) -> Self:
        """Train on ``x``; optionally warm-start from ``init_centroids``.

        Args:
            x: float array of shape (n, dim), n >= k; not modified.
            init_centroids: float array of shape (k, dim), e.g. the previous run's centroids.

        Returns:
            self, fitted.

        Raises:
            ConfigError: fewer points than clusters, non-finite input, ``init_centroids`` of
                the wrong shape, or ``spherical=True`` with ``"l2"`` on points that are not
                unit vectors.
        """
        checked = check_x(x, "FaissKMeans.fit")
        n, dim = checked.shape
        if n < self.k:
            raise ConfigError(f"n_docs={n} should be >= k={self.k}; lower k or use k='auto'.")
        data = prepare(checked, self.metric)
        rng = np.random.default_rng(self.seed)
        size = self.max_points_per_centroid * self.k
        train = data[np.sort(rng.choice(n, size, replace=False))] if n > size else data
        spherical = self._resolve_spherical(train)
        warm = self._check_init(init_centroids, dim, spherical)
        if warm is not None:
            self.init_, starts = "warm", [warm]
        elif self.init == "k-means++" or (self.init == "auto" and self.k <= PLUSPLUS_MAX_K):
            self.init_ = "k-means++"
            starts = [self._plusplus(train, spherical, self.seed + r) for r in range(self.nredo)]
        else:
            self.init_ = "random"
            starts = [
                train[rng.choice(len(train), self.k, replace=False)] for _ in range(self.nredo)
            ]
        best: LloydResult | None = None
        for start in starts:
            # train is fit's own copy; with one start it may be centred in place (a copy less).
            result = lloyd(train, start, self.niter, spherical, centre_in_place=len(starts) == 1)
            if best is None or result.inertia < best.inertia:
                best = result
        assert best is not None
        self.cluster_centers_, self.inertia_ = best.centroids, best.inertia
        if train is not data:
            sq, _ = flat_index(best.centroids, "l2").search(data, 1)
            self.inertia_ = float(np.maximum(sq, 0.0).sum(dtype=np.float64))
        self.objective_, self.n_iter_ = best.objective, best.n_iter
        self.spherical_, self.warm_started_ = spherical, warm is not None
        self._nearest = NearestCentroids(self.cluster_centers_, self.metric)
        return self

    def _plusplus(
        self, data: NDArray[np.float32], spherical: bool, seed: int
    ) -> NDArray[np.float32]:
        rng = np.random.default_rng(seed)
        size = min(len(data), PLUSPLUS_POINTS_PER_CENTROID * self.k)
        sample = data[np.sort(rng.choice(len(data), size, replace=False))]
        centers, _ = kmeans_plusplus(sample, self.k, random_state=seed)
        return prepare(centers, "cosine" if spherical else "l2")

    def _resolve_spherical(self, data: NDArray[np.float32]) -> bool:
        if self.metric == "cosine":
            return self.spherical is not False
        norms = np.sqrt(np.einsum("ij,ij->i", data, data, dtype=np.float64))
        unit = bool(np.all(np.abs(norms - 1.0) <= _UNIT_NORM_TOL))
        if self.spherical and not unit:
            raise ConfigError(
                "spherical=True with metric='l2' needs unit-norm points; use metric='cosine' "
                "(which normalises them) or leave spherical unset."
            )
        return unit if self.spherical is None else self.spherical

    def _check_init(
        self, init: NDArray[np.floating] | None, dim: int, spherical: bool
    ) -> NDArray[np.float32] | None:
        if init is None:
            return None
        arr = np.asarray(init)
        if arr.shape != (self.k, dim) or not np.isfinite(arr).all():
            raise ConfigError(
                f"init_centroids must be a finite array of shape (k, dim) = ({self.k}, {dim}). "
                f"Got shape {arr.shape} instead."
            )
        return prepare(arr, "cosine" if spherical else "l2")

    def predict(
        self, x: NDArray[np.floating], batch_size: int = 65_536
    ) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]:
        """Nearest centroid of each row of ``x`` (see `NearestCentroids.predict`).

        Raises:
            NotFittedError: before `fit`.
        """
        if self._nearest is None:
            raise NotFittedError("FaissKMeans.predict called before fit")
        return self._nearest.predict(x, batch_size)


class NearestCentroids:
    """Assignment of vectors to fixed centroids: a fitted k-means's, or a finished run's
    ``centroids.npy`` when new documents join its clusters.

    Args:
        centroids: float array (k, dim), k >= 2, row i the centre of cluster i.
        metric: ``"cosine"`` (rows compared as directions) or ``"l2"``.
        gpu: search on the GPU when FAISS GPU and a device are there (`on_gpu`).
    """

    def __init__(self, centroids: NDArray[np.floating], metric: Metric, gpu: bool = True) -> None:
        check_metric(metric, "NearestCentroids")
        if centroids.ndim != 2 or len(centroids) < 2:
            raise ConfigError(
                f"NearestCentroids needs at least 2 centroids (k, dim); got shape {centroids.shape}"
            )
        self.metric = metric
        # For cosine, assignment compares directions, so the index holds unit centroids even
        # when plain (non-spherical) k-means left them shorter.
        index = flat_index(prepare(centroids, metric), metric)
        self._index = on_gpu(index) if gpu else index

    def predict(
        self, x: NDArray[np.floating], batch_size: int = 65_536
    ) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]:
        """Nearest centroid of each row of ``x``, searched ``batch_size`` rows at a time.

        Args:
            x: float array of shape (n, dim); not modified.
            batch_size: rows prepared and searched at once (bounds the temporary copy).

        Returns:
            cluster ids int32 (n,), distance to that centroid float32 (n,) (1 - cos, or
            Euclidean), and confidence float32 (n,) = 1 - d1/d2 from the nearest and
            second-nearest centroid distances (1 on the centroid, 0 on the boundary between
            two clusters).
        """
        check_positive_int(batch_size, "batch_size", "NearestCentroids.predict")
        n = len(x)
        ids, dist = np.empty(n, np.int32), np.empty(n, np.float32)
        confidence = np.empty(n, np.float32)
        # One thread: BLAS rounds the scores differently with another thread count, and a
        # document's distance must not depend on where it is assigned (the flow process or a
        # one-thread Dask worker). The search is a small share of assigning a part.
        with faiss_threads(1):
            for start in range(0, n, batch_size):
                part = slice(start, start + batch_size)
                scores, nearest = self._index.search(prepare(x[part], self.metric), 2)
                d = to_distance(scores, self.metric)
                ids[part], dist[part] = nearest[:, 0], d[:, 0]
                confidence[part] = (1.0 - d[:, 0] / np.maximum(d[:, 1], 1e-12)).clip(0.0, 1.0)
        return ids, dist, confidence


def initial_clusters(
    x: NDArray[np.float32], k: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Euclidean k-means (3 restarts) of `x` (n, dim): centroids (k, dim) float32 and labels (n,)
    int64; DEC's starting point (`udl.encoders.dec.InitialClusters`)."""
    kmeans = FaissKMeans(k, metric="l2", nredo=3, seed=seed).fit(x)
    return kmeans.cluster_centers_, kmeans.predict(x)[0].astype(np.int64)
