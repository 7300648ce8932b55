"""Batched radius-neighbour search for DBSCAN, on FAISS flat indexes.

Two searchers hand DBSCAN the candidate pairs of one batch of query points at a time, as raw
FAISS scores (squared L2, or inner product of unit rows for cosine) that DBSCAN then checks
against ``eps`` exactly:

* :class:`FlatSearcher` queries one flat index over all points: exact, O(n^2 d) time.
* :class:`CellSearcher` first splits the points into k-means cells (an IVF-style coarse
  quantizer) and records each cell's radius ``r_c`` (largest distance of a member to the
  centroid). By the triangle inequality a query ``q`` can only have a neighbour within ``eps``
  in cell ``c`` if ``|q - c| <= r_c + eps``, and only among the members ``x`` with
  ``| |x - c| - |q - c| | <= eps`` (an annulus, so an outlier that inflates ``r_c`` does not
  make the whole cell a candidate); each batch (members of one cell) is searched against
  those members only. Nothing is skipped that could be a
  neighbour, so the search stays exact; the saving depends on how compact the cells are
  (large on low-dimensional or clustered data, little on diffuse high-dimensional data).
  With ``nprobe`` set, only the ``nprobe`` cells nearest to the batch among those are
  searched: faster, but APPROXIMATE (neighbours in skipped cells are missed, so a core point
  can be taken for a border or noise point, and a cluster can split).

Both keep memory at the data, one batch's candidate copy and one batch's neighbour lists;
no n x n matrix is formed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Literal, Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CellSearcher",
    "FlatSearcher",
    "NeighbourSearcher",
    "faiss_threads",
    "flat_index",
    "on_gpu",
    "search_copy",
]

Metric = Literal["cosine", "l2"]

# The coarse quantizer needs far fewer training points than the search itself; faiss warns
# below 39 points per centroid, so 64 keeps training cheap and the cells sensible.
_CELL_TRAIN_POINTS = 64
_CELL_NITER = 10
_MAX_CELLS = 2048
# Rows whose float64 differences are formed at once when member distances are measured.
_RADIUS_CHUNK = 1 << 16


class NeighbourSearcher(Protocol):
    """What DBSCAN needs from a neighbour search over the rows of its search copy."""

    def batches(self) -> Iterator[NDArray[np.int64]]:
        """Point ids of each batch of queries; every point comes exactly once."""
        ...

    def search(
        self, ids: NDArray[np.int64], radius: float
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        """Neighbours of each query within ``radius``, grouped by query (CSR layout).

        Returns ``lims`` (len(ids) + 1 offsets), neighbour ids and raw FAISS scores: the
        neighbours of ``ids[i]`` are ``cols[lims[i]:lims[i + 1]]``.
        """
        ...


def search_copy(x: NDArray[np.floating], metric: Metric) -> NDArray[np.float32]:
    """The float32 copy FAISS searches: unit rows for cosine, centred rows for l2.

    The caller's array is never modified.
    """
    if metric == "cosine":
        xs = np.array(x, dtype=np.float32, order="C")
        # Zero rows stay zero: similarity 0 with everything, as sklearn's cosine distance 1.
        faiss.normalize_L2(xs)
        return xs
    # Centring leaves L2 distances unchanged but shrinks the norms that rounding scales with.
    xs = np.empty(x.shape, dtype=np.float32)
    np.subtract(x, x.mean(axis=0, dtype=np.float64).astype(np.float32), out=xs)
    return xs


def flat_index(xs: NDArray[np.float32], metric: Metric) -> faiss.Index:
    """Exact FAISS index over ``xs``: inner product for cosine (unit rows), else L2."""
    index = faiss.IndexFlatIP(xs.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(xs.shape[1])
    index.add(np.ascontiguousarray(xs, dtype=np.float32))
    return index


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """FAISS, and the BLAS it calls, on `n` threads inside the block. OpenMP's thread count
    is per thread: other threads (a worker's other tasks) keep theirs."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@cache
def _gpu_resources() -> faiss.StandardGpuResources:
    # One per process: each holds a pool of GPU scratch memory.
    return faiss.StandardGpuResources()


def on_gpu(index: faiss.Index) -> faiss.Index:
    """`index` on this process's first visible GPU with FAISS GPU installed (``faiss-gpu``
    instead of ``faiss-cpu``), else unchanged.

    Only for k-nearest searches: FAISS has no range search on GPU. Distances computed there
    round differently from the CPU's in the last bits.
    """
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)


class FlatSearcher:
    """Exhaustive range search on one flat index, in batches of consecutive rows."""

    def __init__(self, xs: NDArray[np.float32], metric: Metric, batch_size: int) -> None:
        self._xs, self._batch_size = xs, batch_size
        self._index = flat_index(xs, metric)

    def batches(self) -> Iterator[NDArray[np.int64]]:
        n = self._xs.shape[0]
        for start in range(0, n, self._batch_size):
            yield np.arange(start, min(start + self._batch_size, n), dtype=np.int64)

    def search(
        self, ids: NDArray[np.int64], radius: float
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        lims, scores, labels = self._index.range_search(self._xs[ids[0] : ids[-1] + 1], radius)
        return lims.astype(np.int64), labels, scores


class CellSearcher:
    """Range search restricted, per batch, to the k-means cells that can hold a neighbour.

    Args:
        xs: float32 array (n, d), the search copy (unit rows for cosine).
        metric: ``"cosine"`` or ``"l2"``; sets the FAISS score, cells are always L2.
        batch_size: Most queries per batch; a batch never spans two cells.
        eps_l2: Euclidean distance on ``xs`` that bounds every pair DBSCAN may accept.
        nprobe: If set, search at most this many cells per batch (approximate).
        seed: Seed of the coarse k-means.
    """

    def __init__(
        self,
        xs: NDArray[np.float32],
        metric: Metric,
        batch_size: int,
        eps_l2: float,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> None:
        self._xs, self._metric, self._batch_size = xs, metric, batch_size
        self._eps_l2, self._nprobe = eps_l2, nprobe
        n, d = xs.shape
        n_cells = int(min(_MAX_CELLS, max(1, round(math.sqrt(n)))))
        kmeans = faiss.Kmeans(
            d,
            n_cells,
            niter=_CELL_NITER,
            seed=seed,
            max_points_per_centroid=_CELL_TRAIN_POINTS,
            verbose=False,
        )
        kmeans.train(xs)
        self.centroids = kmeans.centroids.astype(np.float64)
        cell = kmeans.index.search(xs, 1)[1][:, 0]
        self._cell = cell
        member_dist = self._member_distances(cell)
        # Members sorted by cell, then by distance to their centroid (for the annulus bound).
        self.order = np.lexsort((member_dist, cell)).astype(np.int64)
        self.bounds = np.searchsorted(cell[self.order], np.arange(n_cells + 1))
        # One sorted key for every (cell, distance) pair: cell c's members sit in
        # [c * span, c * span + max distance]. Adding c * span rounds a distance, but
        # monotonically, so a search on the keys can only take in extra candidates.
        self._max_dist = float(member_dist.max(initial=0.0))
        self._span = 2.0 ** math.ceil(math.log2(2.0 * self._max_dist + 1.0))
        self._keys = member_dist[self.order] + cell[self.order] * self._span
        self.radii = np.zeros(n_cells)
        np.maximum.at(self.radii, cell, member_dist)
        sq_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self._centroid_sq = (
            sq_norms[:, None] - 2.0 * self.centroids @ self.centroids.T + sq_norms[None, :]
        )
        # Squared distances are expanded as |a|^2 - 2 a.b + |b|^2 in float64, which errs by
        # about d unit roundoffs of the largest squared norm; the bound below is 100x that.
        self._tol = 1e-13 * d * float(np.einsum("ij,ij->i", xs, xs, dtype=np.float64).max())
        # The same error on a distance: |sqrt(a + t) - sqrt(a)| <= sqrt(t).
        self._pad = math.sqrt(self._tol)

    def _member_distances(self, cell: NDArray[np.int64]) -> NDArray[np.float64]:
        """Float64 distance from every point to its cell's centroid, from exact differences."""
        out = np.empty(len(cell))
        for start in range(0, len(cell), _RADIUS_CHUNK):
            part = slice(start, start + _RADIUS_CHUNK)
            diff = self._xs[part].astype(np.float64) - self.centroids[cell[part]]
            out[part] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        return out

    def batches(self) -> Iterator[NDArray[np.int64]]:
        for c in range(len(self.centroids)):
            for start in range(self.bounds[c], self.bounds[c + 1], self._batch_size):
                yield self.order[start : min(start + self._batch_size, self.bounds[c + 1])]

    def candidate_rows(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Points that may lie within eps of some query in ``ids`` (all from one cell).

        A member ``x`` of cell ``c'`` can only be within eps of ``q`` if ``|x - c'|`` lies in
        ``[|q - c'| - eps, |q - c'| + eps]`` (triangle inequality); members are sorted by
        ``|x - c'|``, so each candidate cell contributes one contiguous run. A cell with
        ``min_q |q - c'| > r_c' + eps`` contributes nothing and is skipped.
        """
        own = self._cell[ids[0]]
        reach = self.radii + self._eps_l2
        # Cheap first cut on centroid distances: |q - c'| >= |c - c'| - r_c for q in cell c.
        near = np.flatnonzero(self._centroid_sq[own] <= (self.radii[own] + reach) ** 2 + self._tol)
        q = self._xs[ids].astype(np.float64)
        cents = self.centroids[near]
        sq = (
            np.einsum("ij,ij->i", q, q)[:, None]
            - 2.0 * q @ cents.T
            + np.einsum("ij,ij->i", cents, cents)[None, :]
        )
        dist = np.sqrt(np.maximum(sq, 0.0))
        low, high = dist.min(axis=0), dist.max(axis=0)
        keep = np.flatnonzero(low <= reach[near] + self._pad)
        if self._nprobe is not None and len(keep) > self._nprobe:
            # The own cell always, so that each query still meets itself.
            rank = np.lexsort((low[keep], near[keep] != own))
            keep = np.sort(keep[rank[: self._nprobe]])
        base = near[keep] * self._span
        reach_low = np.clip(low[keep] - self._eps_l2 - self._pad, 0.0, self._max_dist)
        reach_high = np.minimum(high[keep] + self._eps_l2 + self._pad, self._max_dist)
        starts = np.searchsorted(self._keys, base + reach_low, "left")
        stops = np.searchsorted(self._keys, base + reach_high, "right")
        lengths = stops - starts
        # The runs order[starts[j]:stops[j]], concatenated in cell order.
        offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return self.order[np.arange(int(lengths.sum())) + offsets]

    def search(
        self, ids: NDArray[np.int64], radius: float
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        candidates = self.candidate_rows(ids)
        index = flat_index(self._xs[candidates], self._metric)
        lims, scores, labels = index.range_search(self._xs[ids], radius)
        return lims.astype(np.int64), candidates[labels], scores
