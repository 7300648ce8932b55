"""Exact DBSCAN on FAISS range search, labelled by connected components of core points.

:func:`dbscan` follows the definition of Ester et al. (1996) with scikit-learn's semantics:
a point's neighbourhood includes the point itself and ``distance <= eps`` is inclusive; a
point with at least ``min_samples`` neighbours is *core*; core points within ``eps`` of each
other share a cluster (the connected components of the core-core graph); a non-core point
within ``eps`` of a core point is a *border* point of that core point's cluster; every other
point is noise (``-1``). So the core points, the noise points and the partition of core points
into clusters are the same as ``sklearn.cluster.DBSCAN`` gives. A border point reachable from
two clusters joins the cluster of its nearest core point (ties to the smaller index), where
sklearn takes whichever cluster reaches it first.

Neighbours come from :mod:`udl.cluster.neighbours`: a flat index up to ``flat_max`` points,
above that a search pruned by k-means cells that is still exact (see there), or approximate
when ``nprobe`` caps the cells searched. Queries run in batches; memory holds the data, one
batch of neighbourhoods, a union-find over the points (merged batch by batch with the
core-core edges found) and each border point's nearest core, never an n x n matrix.

FAISS computes distances in float32; pairs whose distance lies within a bound on that rounding
error of ``eps`` are decided again in float64 from the caller's data, so the result is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from udl.cluster._checks import check_metric, check_positive_float, check_positive_int, check_x
from udl.cluster.neighbours import (
    CellSearcher,
    FlatSearcher,
    Metric,
    NeighbourSearcher,
    search_copy,
)

__all__ = ["DBSCANResult", "dbscan"]

logger = logging.getLogger(__name__)

# Float64 values gathered at once when distances are recomputed exactly (32 MiB per operand).
_EXACT_CHUNK_VALUES = 1 << 22


@dataclass(frozen=True)
class DBSCANResult:
    """Outcome of :func:`dbscan`.

    Attributes:
        labels: ``(n,)`` cluster ids ``0..n_clusters-1``, numbered in increasing order of each
            cluster's smallest point index; noise is ``-1``.
        core_mask: ``(n,)`` True for core points.
        n_clusters: Number of clusters.
        exact: False when ``nprobe`` limited the search, so neighbours may have been missed.
    """

    labels: NDArray[np.int32]
    core_mask: NDArray[np.bool_]
    n_clusters: int
    exact: bool = True


def dbscan(
    x: NDArray[np.floating],
    eps: float,
    min_samples: int,
    metric: Metric = "cosine",
    *,
    batch_size: int = 4096,
    flat_max: int = 100_000,
    nprobe: int | None = None,
    seed: int = 0,
) -> DBSCANResult:
    """Cluster the rows of ``x`` with DBSCAN (exact unless ``nprobe`` is given).

    Args:
        x: float array of shape (n, d); not modified.
        eps: Neighbourhood radius, inclusive, in the metric's units (cosine distance
            ``1 - cos``, or Euclidean distance).
        min_samples: Neighbours, the point itself included, that make a point core.
        metric: ``"cosine"`` or ``"l2"``.
        batch_size: Most rows per range search; bounds the memory of one batch.
        flat_max: Up to this many points one flat index is searched; above, the cell-pruned
            search (exact, and usually much faster on clustered data).
        nprobe: Above ``flat_max`` only, search at most this many cells per batch: faster
            but approximate. None keeps the search exact.
        seed: Seed of the k-means that forms the cells (does not change an exact result).

    Returns:
        Labels, core mask and number of clusters; reruns on the same input are identical.

    Raises:
        ConfigError: If a parameter is invalid or ``x`` is not a finite 2-D array.

    Example:
        >>> x = np.array([[0.0], [0.1], [0.2], [5.0]], dtype=np.float32)
        >>> dbscan(x, eps=0.15, min_samples=2, metric="l2").labels.tolist()
        [0, 0, 0, -1]
    """
    arr = check_x(x, "dbscan")
    check_positive_float(eps, "eps", "dbscan")
    for name, value in (("min_samples", min_samples), ("batch_size", batch_size)):
        check_positive_int(value, name, "dbscan")
    check_positive_int(flat_max, "flat_max", "dbscan")
    if nprobe is not None:
        check_positive_int(nprobe, "nprobe", "dbscan")
    check_metric(metric, "dbscan")
    n = arr.shape[0]
    if n == 0:
        return DBSCANResult(np.empty(0, np.int32), np.empty(0, np.bool_), 0)

    xs = search_copy(arr, metric)
    check = _PairCheck(arr, xs, eps, metric)
    searcher: NeighbourSearcher
    if n <= flat_max:
        searcher = FlatSearcher(xs, metric, batch_size)
    else:
        searcher = CellSearcher(xs, metric, batch_size, check.eps_l2(xs), nprobe, seed)
    core, sets, nearest = _scan(searcher, check, n, min_samples)

    component = sets.roots()
    provisional = np.where(core, component, -1)
    border = ~core & (nearest.core >= 0)
    provisional[border] = component[nearest.core[border]]
    labels, n_clusters = _renumber_by_first_member(provisional)
    exact = n <= flat_max or nprobe is None
    logger.debug(
        "dbscan: %d points, %d clusters, %d core, %d noise, exact=%s",
        n,
        n_clusters,
        int(core.sum()),
        int((labels < 0).sum()),
        exact,
    )
    return DBSCANResult(labels=labels, core_mask=core, n_clusters=n_clusters, exact=exact)


def _scan(
    searcher: NeighbourSearcher, check: _PairCheck, n: int, min_samples: int
) -> tuple[NDArray[np.bool_], _UnionFind, _NearestCore]:
    """One pass over the searcher's batches: core flags, clusters of cores, borders' cores."""
    core = np.zeros(n, dtype=np.bool_)
    # Position of each point in query order; n = not queried yet.
    position = np.full(n, n, dtype=np.int64)
    sets, nearest = _UnionFind(n), _NearestCore(n)
    seen = 0
    for ids in searcher.batches():
        position[ids] = np.arange(seen, seen + ids.size)
        lims, cols, raw = searcher.search(ids, check.faiss_radius)
        # A query meets itself (distance 0, recomputed exactly when rounding puts it near
        # eps), so it is counted here and dropped by `later` below; except a zero row under
        # cosine, whose FAISS similarity to itself is 0, so it is counted by hand.
        kept = np.flatnonzero(check.within(lims, ids, cols, raw))
        counts = np.diff(np.searchsorted(kept, lims))
        batch_core = counts + check.zero_rows[ids] >= min_samples
        core[ids] = batch_core
        cols = cols[kept]
        query = np.repeat(np.arange(ids.size), counts)
        # Position relative to this batch: < 0 an earlier batch, < ids.size this one.
        offset = position[cols] - seen
        # Each unordered pair is kept once, when the later of its points is queried: by
        # then both points have their core status.
        later = offset < query
        query, cols, offset = query[later], cols[later], offset[later]
        row_core, col_core = batch_core[query], core[cols]
        both = np.flatnonzero(row_core & col_core)
        sets.add_batch(ids, query[both], cols[both], np.maximum(offset[both], -1))
        seen += ids.size
        mixed = np.flatnonzero(row_core != col_core)
        rows, cols, row_core = ids[query[mixed]], cols[mixed], row_core[mixed]
        border, near_core = np.where(row_core, cols, rows), np.where(row_core, rows, cols)
        nearest.offer(border, near_core, check.distances(border, near_core))
    return core, sets, nearest


class _PairCheck:
    """Decides ``distance <= eps`` exactly for the pairs FAISS returns.

    FAISS forms ``|a|^2 + |b|^2 - 2 a.b`` (or ``a.b``) in float32; the error is at most about
    ``d`` unit roundoffs of ``|a|^2 + |b|^2``, and the float32 copy adds a few more. Twice that
    bound is used, so the error on pair (i, j) is below ``slack[i] + slack[j]``; pairs inside
    that band are recomputed in float64 from the caller's array. Most pairs are clear of eps by
    the largest slack of all and are decided by one float32 comparison.
    """

    def __init__(
        self, arr: NDArray[np.floating], xs: NDArray[np.float32], eps: float, metric: Metric
    ) -> None:
        self.arr, self.eps, self.metric = arr, eps, metric
        unit = float(np.finfo(np.float32).eps)
        self.sq_norms = np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
        self.slack = 2.0 * (xs.shape[1] + 8) * unit * self.sq_norms
        self.norms = (
            np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
            if metric == "cosine"
            else None
        )
        self.zero_rows = (
            self.norms == 0 if self.norms is not None else np.zeros(len(arr), dtype=np.bool_)
        )
        # Every pair's rounding error is below `widen`. FAISS keeps d < radius (L2) or
        # sim > radius (IP), in float32: widening the radius by it misses no pair within eps.
        # Scores past eps by `widen` on the near side are within for sure; the far side of
        # the band is the radius itself.
        widen = 2 * float(self.slack.max())
        if metric == "l2":
            self._sure_in = _float32_below(eps * eps - widen)
            self._sure_out = _float32_above(eps * eps + widen)
        else:
            self._sure_in = _float32_above(1.0 - eps + widen)
            self._sure_out = _float32_below(1.0 - eps - widen)
        self.faiss_radius = float(
            np.nextafter(self._sure_out, np.float32(np.inf if metric == "l2" else -np.inf))
        )

    def eps_l2(self, xs: NDArray[np.float32]) -> float:
        """A Euclidean distance on ``xs`` that no pair within ``eps`` can exceed.

        For cosine, unit rows at cosine distance ``e`` are ``sqrt(2 e)`` apart (zero rows are
        1 from any unit row and within eps only if eps >= 1). The relative and absolute pads
        exceed the float32 rounding of ``xs`` (about 1e-7 of its norms).
        """
        if self.metric == "cosine":
            return float(np.sqrt(2.0 * max(1.0 - self.faiss_radius, 0.0))) + 1e-6
        scale = float(np.sqrt(self.sq_norms.max()))
        return (float(np.sqrt(self.faiss_radius)) + 1e-6 * scale) * (1.0 + 1e-6)

    def within(
        self,
        lims: NDArray[np.int64],
        ids: NDArray[np.int64],
        cols: NDArray[np.int64],
        raw: NDArray[np.float32],
    ) -> NDArray[np.bool_]:
        """True where the pair (query, cols[i]) with FAISS score raw[i] is within eps.

        ``lims`` and ``ids`` give each pair's query: ``ids[j]`` for ``lims[j] <= i <
        lims[j + 1]``. Scores clear of eps by the largest slack of any pair are decided in
        float32; only the thin band around eps needs each pair's own slack, and only the
        pairs within their own slack of eps the exact distance.
        """
        if self.metric == "l2":
            within = raw <= self._sure_in
            band = np.flatnonzero(~within & (raw <= self._sure_out))
            margin = self.eps * self.eps - raw[band].astype(np.float64)
        else:
            within = raw >= self._sure_in
            band = np.flatnonzero(~within & (raw >= self._sure_out))
            margin = raw[band].astype(np.float64) - (1.0 - self.eps)
        rows, near = ids[np.searchsorted(lims, band, "right") - 1], cols[band]
        tol = self.slack[rows] + self.slack[near]
        decided = margin >= tol
        unsure = np.flatnonzero((margin < tol) & (margin >= -tol))
        decided[unsure] = self.distances(rows[unsure], near[unsure]) <= self.eps
        within[band] = decided
        return within

    def distances(self, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.float64]:
        """Distances between ``arr[rows]`` and ``arr[cols]`` pairwise, in float64."""
        out = np.empty(rows.size, dtype=np.float64)
        chunk = max(1, _EXACT_CHUNK_VALUES // self.arr.shape[1])
        for start in range(0, rows.size, chunk):
            r, c = rows[start : start + chunk], cols[start : start + chunk]
            a, b = self.arr[r].astype(np.float64), self.arr[c].astype(np.float64)
            if self.norms is None:
                diff = a - b
                out[start : start + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            else:
                dots = np.einsum("ij,ij->i", a, b)
                denom = self.norms[r] * self.norms[c]
                sims = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
                out[start : start + chunk] = 1.0 - sims
        return out


def _float32_below(value: float) -> np.float32:
    """The largest float32 <= value."""
    out = np.float32(value)
    return out if float(out) <= value else np.nextafter(out, np.float32(-np.inf))


def _float32_above(value: float) -> np.float32:
    """The smallest float32 >= value."""
    out = np.float32(value)
    return out if float(out) >= value else np.nextafter(out, np.float32(np.inf))


class _UnionFind:
    """Disjoint sets of points, merged one batch of DBSCAN queries at a time.

    ``parent[i] == i`` marks a root. A batch's edges join its queries (in no set yet) to
    earlier points; those are replaced by their roots, repeats dropped, and the small graph
    of queries and roots is split into connected components, each joining its smallest
    point. The work is linear in the batch's edges: nothing is sorted, and nothing spans the
    edges of earlier batches.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        # Scratch for numbering a batch's roots without sorting them.
        self._local = np.zeros(n, dtype=np.int64)

    def find(self, x: NDArray[np.int64]) -> NDArray[np.int64]:
        """The root of each point in ``x``; halves the paths it walks."""
        parent = self.parent
        root = parent[x]
        while True:
            up = parent[root]
            if np.array_equal(up, root):
                break
            parent[root] = parent[up]
            root = up
        parent[x] = root
        return root

    def add_batch(
        self,
        ids: NDArray[np.int64],
        query: NDArray[np.int64],
        cols: NDArray[np.int64],
        col_in_batch: NDArray[np.int64],
    ) -> None:
        """Merge the sets of ``ids[query[i]]`` and ``cols[i]`` for every edge i.

        Args:
            ids: the batch's points, none of them merged into a set before.
            query: each edge's query, as an index into ``ids``, in ascending order.
            cols: each edge's other point.
            col_in_batch: index of ``cols[i]`` in ``ids``, or -1 for an earlier point.
        """
        size = ids.size
        earlier = np.flatnonzero(col_in_batch < 0)
        roots = self.find(cols[earlier])
        # Number the distinct roots size, size + 1, ... without sorting: each root first takes
        # the last of its positions, which singles out one copy of it.
        positions = np.arange(roots.size)
        self._local[roots] = positions
        distinct = roots[self._local[roots] == positions]
        self._local[distinct] = size + np.arange(distinct.size)
        target = col_in_batch.copy()
        target[earlier] = self._local[roots]
        # Most edges of a query lead into the one set around it: drop consecutive repeats.
        fresh = np.ones(target.size, dtype=np.bool_)
        fresh[1:] = (query[1:] != query[:-1]) | (target[1:] != target[:-1])
        query, target = query[fresh], target[fresh]
        nodes = np.concatenate([ids, distinct])
        indptr = np.searchsorted(query, np.arange(size + 1))
        indptr = np.concatenate([indptr, np.full(distinct.size, indptr[-1])])
        graph = csr_matrix(
            (np.ones(target.size, dtype=np.bool_), target, indptr), shape=(nodes.size,) * 2
        )
        n_sets, component = connected_components(graph, directed=False)
        smallest = np.full(n_sets, self.parent.size, dtype=np.int64)
        np.minimum.at(smallest, component, nodes)
        self.parent[nodes] = smallest[component]

    def roots(self) -> NDArray[np.int64]:
        """The root of every point (a point in no merged set is its own root)."""
        return self.find(np.arange(self.parent.size, dtype=np.int64))


class _NearestCore:
    """For each point, the nearest core point offered so far (ties: smaller index)."""

    def __init__(self, n: int) -> None:
        self.core = np.full(n, -1, dtype=np.int64)
        self.dist = np.full(n, np.inf)

    def offer(
        self, points: NDArray[np.int64], cores: NDArray[np.int64], dist: NDArray[np.float64]
    ) -> None:
        order = np.lexsort((cores, dist, points))
        first = np.ones(order.size, dtype=np.bool_)
        first[1:] = points[order[1:]] != points[order[:-1]]
        best = order[first]
        p, c, d = points[best], cores[best], dist[best]
        better = (d < self.dist[p]) | ((d == self.dist[p]) & (c < self.core[p]))
        self.core[p[better]], self.dist[p[better]] = c[better], d[better]


def _renumber_by_first_member(provisional: NDArray[np.int64]) -> tuple[NDArray[np.int32], int]:
    """Map arbitrary cluster ids (``-1`` = noise) to ``0..k-1`` by each cluster's first point."""
    labels = np.full(provisional.shape, -1, dtype=np.int32)
    members = np.flatnonzero(provisional >= 0)
    uniq, first, inverse = np.unique(provisional[members], return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int32)
    rank[np.argsort(first)] = np.arange(uniq.size, dtype=np.int32)
    labels[members] = rank[inverse]
    return labels, int(uniq.size)
