"""Exact DBSCAN on FAISS range search, plus a k-distance heuristic for ``eps``.

:func:`dbscan` follows the definition of Ester et al. (1996) with scikit-learn's semantics:
a point's neighbourhood includes the point itself and ``distance <= eps`` is inclusive, so the
core points, the noise points and the partition of core points into clusters are the same as
``sklearn.cluster.DBSCAN`` gives. Border points join the cluster of their nearest core point
(ties to the smaller index), where sklearn takes whichever cluster reaches them first.

Neighbours come from exact range search on a flat FAISS index, queried in batches, so memory
holds one batch of neighbourhoods plus the core-core edge list, never an n x n matrix. FAISS
computes distances in float32; pairs whose distance lies within a bound on that rounding error
of ``eps`` are decided again in float64, so the result is exact, not approximate.

Exact search costs O(n^2 d) time. Beyond a few hundred thousand points an approximate index
(IVF, HNSW) trades exactness for speed; that is not implemented here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from udl.errors import ConfigError

__all__ = ["DBSCANResult", "dbscan", "estimate_eps"]

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "l2"]
_METRICS: tuple[str, ...] = ("cosine", "l2")
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
    """

    labels: NDArray[np.int32]
    core_mask: NDArray[np.bool_]
    n_clusters: int


def dbscan(
    x: NDArray[np.float32],
    eps: float,
    min_samples: int,
    metric: Metric = "cosine",
    batch_size: int = 4096,
) -> DBSCANResult:
    """Cluster the rows of ``x`` with exact DBSCAN.

    Args:
        x: ``(n, d)`` points; not modified.
        eps: Neighbourhood radius, inclusive, in the metric's units (cosine distance
            ``1 - cos``, or Euclidean distance).
        min_samples: Neighbours, the point itself included, that make a point core.
        metric: ``"cosine"`` or ``"l2"``.
        batch_size: Rows queried per range search; bounds the memory of one batch.

    Returns:
        Labels, core mask and number of clusters; reruns on the same input are identical.

    Raises:
        ConfigError: If a parameter is invalid or ``x`` is not a finite 2-D array.
    """
    arr = _check_x(x, "dbscan")
    if not eps > 0 or not math.isfinite(eps):
        raise ConfigError(
            f"The 'eps' parameter of dbscan must be a finite number > 0. Got {eps!r} instead."
        )
    _check_positive_int(min_samples, "min_samples", "dbscan")
    _check_positive_int(batch_size, "batch_size", "dbscan")
    _check_metric(metric, "dbscan")

    n = arr.shape[0]
    if n == 0:
        return DBSCANResult(np.empty(0, np.int32), np.empty(0, np.bool_), 0)

    xs = _search_copy(arr, metric)
    index = _flat_index(xs, metric)
    slack = _rounding_slack(xs)
    norms = (
        np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64)) if metric == "cosine" else None
    )
    # FAISS keeps d < radius (L2) or sim > radius (IP), in float32: widen the radius past
    # the worst rounding error so no pair within eps can be missed.
    if metric == "l2":
        radius = np.nextafter(np.float32(eps * eps + 2 * slack.max()), np.float32(np.inf))
    else:
        radius = np.nextafter(np.float32(1.0 - eps - 2 * slack.max()), np.float32(-np.inf))

    core = np.zeros(n, dtype=np.bool_)
    edge_rows: list[NDArray[np.int64]] = []
    edge_cols: list[NDArray[np.int64]] = []
    border_rows: list[NDArray[np.int64]] = []
    border_cores: list[NDArray[np.int64]] = []
    border_dists: list[NDArray[np.float64]] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        lims, sims_or_sq, cols = index.range_search(xs[start:stop], float(radius))
        rows = np.repeat(np.arange(start, stop), np.diff(lims.astype(np.int64)))
        if metric == "l2":
            margin = eps * eps - sims_or_sq.astype(np.float64)
        else:
            margin = sims_or_sq.astype(np.float64) - (1.0 - eps)
        tol = slack[rows] + slack[cols]
        within = margin >= tol
        unsure = np.flatnonzero((margin < tol) & (margin >= -tol))
        within[unsure] = _exact_distances(arr, rows[unsure], cols[unsure], metric, norms) <= eps
        # Count the point itself explicitly: rounding must not be able to drop it.
        within &= rows != cols
        counts = np.bincount(rows[within] - start, minlength=stop - start) + 1
        core[start:stop] = counts >= min_samples

        # Every column below the current row already has its core status, and each
        # unordered pair shows up once this way.
        lower = within & (cols < rows)
        rows, cols = rows[lower], cols[lower]
        row_core, col_core = core[rows], core[cols]
        both = row_core & col_core
        edge_rows.append(rows[both])
        edge_cols.append(cols[both])
        mixed = row_core != col_core
        border = np.where(row_core, cols, rows)[mixed]
        near_core = np.where(row_core, rows, cols)[mixed]
        border_rows.append(border)
        border_cores.append(near_core)
        border_dists.append(_exact_distances(arr, border, near_core, metric, norms))

    ei, ej = np.concatenate(edge_rows), np.concatenate(edge_cols)
    graph = coo_matrix((np.ones(ei.size, dtype=np.bool_), (ei, ej)), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=False)
    provisional = np.where(core, component, -1)

    bb, bc = np.concatenate(border_rows), np.concatenate(border_cores)
    bd = np.concatenate(border_dists)
    order = np.lexsort((bc, bd, bb))
    first = np.ones(order.size, dtype=np.bool_)
    first[1:] = bb[order[1:]] != bb[order[:-1]]
    nearest = order[first]
    provisional[bb[nearest]] = component[bc[nearest]]

    labels, n_clusters = _renumber_by_first_member(provisional)
    logger.debug(
        "dbscan: %d points, %d clusters, %d core, %d noise",
        n,
        n_clusters,
        int(core.sum()),
        int((labels < 0).sum()),
    )
    return DBSCANResult(labels=labels, core_mask=core, n_clusters=n_clusters)


def estimate_eps(
    x: NDArray[np.float32],
    min_samples: int,
    metric: Metric = "cosine",
    sample_size: int = 10_000,
    seed: int = 0,
) -> float:
    """Suggest ``eps`` from the knee of the sorted k-distance curve, k = ``min_samples``.

    Each sampled point's distance to its ``min_samples``-th neighbour (itself counted) is
    sorted, and the knee is the point farthest from the chord joining the curve's ends
    ("kneedle"). Neighbours are searched within the sample only, so when ``x`` has more than
    ``sample_size`` rows the sparser sample tends to give a somewhat larger ``eps``.

    Args:
        x: ``(n, d)`` points; not modified.
        min_samples: The ``min_samples`` that will be passed to :func:`dbscan`; at least 2.
        metric: ``"cosine"`` or ``"l2"``.
        sample_size: At most this many rows, drawn at random without replacement, are used.
        seed: Seed of the sample, so the estimate is reproducible.

    Returns:
        A positive ``eps`` in the metric's units (cosine distance, or Euclidean distance).

    Raises:
        ConfigError: If a parameter is invalid, there are fewer sampled points than
            ``min_samples``, or all k-distances are zero (duplicated points).
    """
    arr = _check_x(x, "estimate_eps")
    _check_positive_int(min_samples, "min_samples", "estimate_eps")
    _check_positive_int(sample_size, "sample_size", "estimate_eps")
    _check_metric(metric, "estimate_eps")
    if min_samples < 2:
        raise ConfigError(
            "The 'min_samples' parameter of estimate_eps must be >= 2: with 1 the k-distance is "
            f"each point's distance to itself. Got {min_samples!r} instead."
        )
    n = arr.shape[0]
    if min(n, sample_size) < min_samples:
        raise ConfigError(
            f"The 'min_samples' parameter of estimate_eps ({min_samples}) exceeds the "
            f"{min(n, sample_size)} points sampled from x; pass more points or a larger "
            "sample_size."
        )
    if n > sample_size:
        rows = np.random.default_rng(seed).choice(n, size=sample_size, replace=False)
        arr = arr[np.sort(rows)]

    xs = _search_copy(arr, metric)
    raw, _ = _flat_index(xs, metric).search(xs, min_samples)
    kth = raw[:, -1].astype(np.float64)
    kdist = np.sqrt(np.maximum(kth, 0.0)) if metric == "l2" else np.maximum(1.0 - kth, 0.0)
    curve = np.sort(kdist)
    eps = curve[_knee_index(curve)]
    if eps <= 0:
        positive = curve[curve > 0]
        if positive.size == 0:
            raise ConfigError(
                f"estimate_eps: every sampled point has {min_samples - 1} exact duplicates, so "
                "all k-distances are 0; deduplicate x or raise min_samples."
            )
        eps = positive[0]
    return float(eps)


def _check_x(x: NDArray[np.float32], caller: str) -> NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ConfigError(
            f"The 'x' parameter of {caller} must be a 2-D array (n_points, n_dims) with at least "
            f"one column. Got shape {arr.shape} instead."
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(
            f"The 'x' parameter of {caller} must hold real numbers. Got dtype {arr.dtype} instead."
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise ConfigError(
            f"The 'x' parameter of {caller} contains NaN or inf (first in row "
            f"{int(np.argmin(finite))}); drop or impute those rows first."
        )
    return arr


def _check_positive_int(value: int, name: str, caller: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(
            f"The '{name}' parameter of {caller} must be an integer >= 1. Got {value!r} instead."
        )


def _check_metric(metric: str, caller: str) -> None:
    if metric not in _METRICS:
        raise ConfigError(
            f"The 'metric' parameter of {caller} must be one of {_METRICS}. Got {metric!r} instead."
        )


def _search_copy(x: NDArray[np.float32], metric: Metric) -> NDArray[np.float32]:
    """Return the float32 copy FAISS searches: unit rows for cosine, centred rows for l2."""
    if metric == "cosine":
        xs = np.array(x, dtype=np.float32, order="C")
        # Zero rows stay zero: similarity 0 with everything, as sklearn's cosine distance 1.
        faiss.normalize_L2(xs)
        return xs
    # Centring leaves L2 distances unchanged but shrinks the norms that rounding scales with.
    xs = np.empty(x.shape, dtype=np.float32)
    np.subtract(x, x.mean(axis=0, dtype=np.float64).astype(np.float32), out=xs)
    return xs


def _flat_index(xs: NDArray[np.float32], metric: Metric) -> faiss.Index:
    index = faiss.IndexFlatIP(xs.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(xs.shape[1])
    index.add(xs)
    return index


def _rounding_slack(xs: NDArray[np.float32]) -> NDArray[np.float64]:
    """Per-row share of the float32 error bound on a FAISS distance between two rows.

    FAISS forms ``|a|^2 + |b|^2 - 2 a.b`` (or ``a.b``) in float32; each term's error is at most
    about ``d`` unit roundoffs of ``|a|^2 + |b|^2``, and the float32 copy itself adds a few more.
    Twice that bound is used, so the error on pair (i, j) is below ``slack[i] + slack[j]``.
    """
    unit = float(np.finfo(np.float32).eps)
    sq_norms = np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
    return 2.0 * (xs.shape[1] + 8) * unit * sq_norms


def _exact_distances(
    x: NDArray[np.float32],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    metric: Metric,
    norms: NDArray[np.float64] | None,
) -> NDArray[np.float64]:
    """Distances between ``x[rows]`` and ``x[cols]`` pairwise, in float64 from the input."""
    out = np.empty(rows.size, dtype=np.float64)
    chunk = max(1, _EXACT_CHUNK_VALUES // x.shape[1])
    for start in range(0, rows.size, chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        a = x[r].astype(np.float64)
        b = x[c].astype(np.float64)
        if metric == "l2":
            diff = a - b
            out[start : start + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        else:
            assert norms is not None
            dots = np.einsum("ij,ij->i", a, b)
            denom = norms[r] * norms[c]
            sims = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
            out[start : start + chunk] = 1.0 - sims
    return out


def _knee_index(curve: NDArray[np.float64]) -> int:
    """Index of the point of a sorted curve farthest from the chord between its ends.

    Both axes are scaled to [0, 1], so the chord is the diagonal and the distance to it is
    proportional to ``|t - y|``.
    """
    span = curve[-1] - curve[0]
    if curve.size < 3 or span <= 0:
        return curve.size - 1
    t = np.linspace(0.0, 1.0, curve.size)
    y = (curve - curve[0]) / span
    return int(np.argmax(np.abs(t - y)))


def _renumber_by_first_member(provisional: NDArray[np.int64]) -> tuple[NDArray[np.int32], int]:
    """Map arbitrary cluster ids (``-1`` = noise) to ``0..k-1`` by each cluster's first point."""
    labels = np.full(provisional.shape, -1, dtype=np.int32)
    members = np.flatnonzero(provisional >= 0)
    uniq, first, inverse = np.unique(provisional[members], return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int32)
    rank[np.argsort(first)] = np.arange(uniq.size, dtype=np.int32)
    labels[members] = rank[inverse]
    return labels, int(uniq.size)
