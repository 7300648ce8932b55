"""Keep cluster ids stable across runs: match this run's centroids to the previous run's.

The centroids of the two runs are paired by the Hungarian algorithm (Kuhn, 1955; scipy's
``linear_sum_assignment``) on their distance in the clustering's metric, which minimises the
total distance over one-to-one pairings. A pair counts only if the new centroid lies inside
the previous cluster's *territory*: within half the distance from the previous centroid to its
nearest other previous centroid, so it is nearer to that centroid than to any other, whatever
the scale of the space. A counted pair keeps the previous id; a match that shifted more than
``MOVE_SHARE`` of its territory is reported as *moved*.

Ids stay ``0..k-1`` so that row ``i`` of ``centroids.npy`` is cluster ``i``: new clusters
(*appeared*) take the ids left free, in order, which can be ids of clusters that *vanished*;
when k shrank, a match whose previous id is ``>= k`` also takes a free id (its ``mapping``
entry still names the previous id). ``alignment.json`` records all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from udl.cluster._checks import Metric

__all__ = [
    "MOVE_SHARE",
    "Alignment",
    "CentroidMatch",
    "align_clusters",
    "centroid_distances",
    "match_centroids",
]

# A match that moved more than this share of its territory (half the distance to the nearest
# other previous centroid) is reported as moved: past a quarter of the way to a neighbour.
MOVE_SHARE = 0.5


@dataclass(frozen=True)
class Alignment:
    """How this run's clusters continue the previous run's.

    Attributes:
        new_ids: int64 (k,), the aligned id of each fitted cluster (row of the fitted centroids);
            a permutation of ``0..k-1``.
        mapping: aligned id -> previous id it continues, or None for a new cluster.
        appeared: aligned ids of new clusters.
        vanished: previous ids no cluster continues.
        moved: matches whose centroid moved more than ``MOVE_SHARE`` of their territory, as
            ``{"id", "previous", "shift", "territory"}``.
        shifts: aligned id -> distance from its previous centroid, for every match.
    """

    new_ids: NDArray[np.int64]
    mapping: dict[int, int | None]
    appeared: list[int]
    vanished: list[int]
    moved: list[dict[str, Any]]
    shifts: dict[int, float]

    def relabel(self, labels: NDArray[np.integer]) -> NDArray[np.int32]:
        """Fitted cluster ids to aligned ids; noise (-1) stays -1."""
        return np.where(labels >= 0, self.new_ids[np.maximum(labels, 0)], -1).astype(np.int32)

    def reorder(self, centroids: NDArray[np.float32]) -> NDArray[np.float32]:
        """Fitted centroids (k, dim) in aligned order: row i is aligned cluster i."""
        out = np.empty_like(centroids)
        out[self.new_ids] = centroids
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record (string keys) for ``alignment.json`` and the step's metrics."""
        return {
            "mapping": {str(k): v for k, v in sorted(self.mapping.items())},
            "appeared": self.appeared,
            "vanished": self.vanished,
            "moved": self.moved,
            "shifts": {str(k): v for k, v in sorted(self.shifts.items())},
        }


def centroid_distances(
    a: NDArray[np.float32], b: NDArray[np.float32], metric: Metric
) -> NDArray[np.float64]:
    """Pairwise distances (len(a), len(b)): 1 - cos for cosine, Euclidean for l2."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        a64 /= np.maximum(np.linalg.norm(a64, axis=1, keepdims=True), 1e-12)
        b64 /= np.maximum(np.linalg.norm(b64, axis=1, keepdims=True), 1e-12)
        return 1.0 - a64 @ b64.T
    sq = (a64 * a64).sum(1)[:, None] - 2.0 * a64 @ b64.T + (b64 * b64).sum(1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


@dataclass(frozen=True)
class CentroidMatch:
    """Which previous cluster each current cluster continues, by centroid.

    Attributes:
        pairs: current row -> previous row, for pairs inside the previous cluster's territory.
        distances: float64 (k, k_prev), centroid distances in the clustering's metric.
        territory: float64 (k_prev,), half the distance from each previous centroid to its
            nearest other previous centroid (inf when it is alone).
    """

    pairs: dict[int, int]
    distances: NDArray[np.float64]
    territory: NDArray[np.float64]

    def moved(self, current: int, previous: int) -> bool:
        """Whether `current` lies more than ``MOVE_SHARE`` of `previous`'s territory from it."""
        return bool(self.distances[current, previous] > MOVE_SHARE * self.territory[previous])


def match_centroids(
    centroids: NDArray[np.float32], previous: NDArray[np.float32], metric: Metric
) -> CentroidMatch:
    """Pair current and previous centroids by the Hungarian assignment of smallest distance,
    keeping a pair only when the current centroid lies inside the previous one's territory."""
    dist = centroid_distances(centroids, previous, metric)
    territory = np.full(len(previous), np.inf)
    if len(previous) > 1:
        among = centroid_distances(previous, previous, metric)
        np.fill_diagonal(among, np.inf)
        territory = among.min(axis=1) / 2
    rows, cols = linear_sum_assignment(dist)
    pairs = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if dist[r, c] <= territory[c]}
    return CentroidMatch(pairs, dist, territory)


def align_clusters(
    centroids: NDArray[np.float32], previous: NDArray[np.float32], metric: Metric
) -> Alignment:
    """Give this run's clusters the ids of the previous run's clusters they continue.

    Args:
        centroids: float32 array (k, dim), this run's fitted centroids (row = fitted id).
        previous: float32 array (k_prev, dim), the previous run's centroids (row = id).
        metric: ``"cosine"`` or ``"l2"``, the clustering's metric.

    Returns:
        The aligned ids, the mapping to previous ids, and what appeared, vanished or moved.

    Example:
        >>> prev = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
        >>> align_clusters(prev[[2, 0, 1]] + 0.1, prev, "l2").new_ids.tolist()
        [2, 0, 1]
    """
    k, k_prev = len(centroids), len(previous)
    match = match_centroids(centroids, previous, metric)
    pairs, dist, territory = match.pairs, match.distances, match.territory

    new_ids = np.full(k, -1, dtype=np.int64)
    for r, c in pairs.items():
        if c < k:
            new_ids[r] = c
    free = iter(sorted(set(range(k)) - set(new_ids.tolist())))
    for r in np.flatnonzero(new_ids < 0):
        new_ids[r] = next(free)

    mapping: dict[int, int | None] = {int(new_ids[r]): pairs.get(r) for r in range(k)}
    shifts = {int(new_ids[r]): float(dist[r, c]) for r, c in pairs.items()}
    moved = [
        {
            "id": int(new_ids[r]),
            "previous": c,
            "shift": float(dist[r, c]),
            "territory": float(territory[c]),
        }
        for r, c in sorted(pairs.items(), key=lambda rc: int(new_ids[rc[0]]))
        if match.moved(r, c)
    ]
    return Alignment(
        new_ids=new_ids,
        mapping=mapping,
        appeared=sorted(i for i, p in mapping.items() if p is None),
        vanished=sorted(set(range(k_prev)) - set(pairs.values())),
        moved=moved,
        shifts=shifts,
    )
