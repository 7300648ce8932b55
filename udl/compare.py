"""Comparing a run with the one it follows: metric deltas, and which clusters continue,
appeared, vanished or moved, paired from the clustering step's alignment when it wrote one,
else by matching centroids (`udl.cluster.align.match_centroids`) when both runs embed into the
same space, else not at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from udl.cluster._checks import Metric
from udl.cluster.align import match_centroids

__all__ = ["COMPARED", "ClusterChanges", "ClusterMatch", "compare_runs", "match_clusters"]


@dataclass(frozen=True)
class ClusterMatch:
    """A cluster of this run and the previous run's cluster it continues."""

    current: int
    previous: int
    shift: float | None  # distance between the two centroids; None when dims differ


@dataclass(frozen=True)
class ClusterChanges:
    """How the clusters of two runs correspond.

    `moved` holds the matches whose centroid shifted more than `udl.cluster.align.MOVE_SHARE`
    of the way to the edge of the previous cluster's territory (half the distance to its
    nearest neighbour).
    """

    matched_by: str  # "alignment" (models/alignment.json), "centroids" or "none"
    matches: list[ClusterMatch]
    appeared: list[int]
    vanished: list[int]
    moved: list[ClusterMatch]


def match_clusters(
    current: NDArray[np.float32],
    previous: NDArray[np.float32],
    metric: Metric,
    alignment: dict[int, int | None] | None = None,
    same_space: bool = True,
) -> ClusterChanges:
    """Which clusters appeared, vanished or moved between two runs.

    Without an alignment, clusters are paired as the clustering step pairs them
    (`udl.cluster.align.match_centroids`).

    Args:
        current: float32 array (k, dim), this run's centroids (row = cluster id).
        previous: float32 array (k_prev, dim), the previous run's centroids.
        metric: ``"cosine"`` or ``"l2"``, the clustering's metric.
        alignment: current cluster id -> previous cluster id (None: new), as written by the
            clustering step; when given, it decides the pairs and centroids only measure shifts.
        same_space: whether both runs embed into one space (`udl.lineage.embedding_space`);
            centroids of two spaces are not comparable even when their widths agree.

    Returns:
        The matches, appeared and vanished cluster ids, and the matches that moved.
    """
    comparable = (
        same_space and current.ndim == previous.ndim == 2 and current.shape[1] == previous.shape[1]
    )
    if alignment is None and not comparable:
        return ClusterChanges("none", [], [], [], [])
    match = match_centroids(current, previous, metric) if comparable else None
    if alignment is not None:
        pairs = [(c, p) for c, p in sorted(alignment.items()) if p is not None]
        matched_by = "alignment"
    else:
        assert match is not None  # comparable, checked above
        pairs = sorted(match.pairs.items())
        matched_by = "centroids"
    matches = [
        ClusterMatch(c, p, float(match.distances[c, p]) if match and c < len(current) else None)
        for c, p in pairs
    ]
    moved = [
        m
        for m in matches
        if match is not None and m.shift is not None and match.moved(m.current, m.previous)
    ]
    return ClusterChanges(
        matched_by=matched_by,
        matches=matches,
        appeared=sorted(set(range(len(current))) - {c for c, _ in pairs}),
        vanished=sorted(set(range(len(previous))) - {p for _, p in pairs}),
        moved=moved,
    )


# Scores compared between runs; the first six are the report's headline.
COMPARED = (
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "nmi",
    "ari",
    "acc",
    "homogeneity",
    "completeness",
    "n_clusters",
    "n_noise",
)


def compare_runs(
    before: dict[str, Any],
    now: dict[str, Any],
    previous_centroids: NDArray[np.float32],
    current_centroids: NDArray[np.float32],
    alignment: dict[int, int | None] | None = None,
    same_space: bool = True,
) -> dict[str, Any]:
    """Metric deltas and the clusters that appeared, vanished or moved between two runs.

    Args:
        before: the previous run's metrics.json (``clusters`` gives ids, sizes and keywords).
        now: this run's metrics, same keys.
        previous_centroids: float32 array (k_prev, dim).
        current_centroids: float32 array (k, dim).
        alignment: current cluster id -> previous id (None: new), see `match_clusters`.
        same_space: whether both runs embed into one space, see `match_clusters`.

    Returns:
        A JSON-ready dict: ``metric_deltas`` (name -> previous, current, delta), ``matched_by``,
        ``note`` (why clusters were not compared), ``n_matched`` and the ``appeared``,
        ``vanished`` (with the previous run's size and keywords) and ``moved`` clusters.
    """
    deltas = {
        name: {"previous": before[name], "current": now[name], "delta": now[name] - before[name]}
        for name in COMPARED
        if isinstance(before.get(name), int | float) and isinstance(now.get(name), int | float)
    }
    changes = match_clusters(
        current_centroids, previous_centroids, now["metric"], alignment, same_space
    )
    current = {c["cluster_id"]: c for c in now.get("clusters", [])}
    previous = {c["cluster_id"]: c for c in before.get("clusters", [])}

    def cluster(summaries: dict[int, dict[str, Any]], cluster_id: int) -> dict[str, Any]:
        summary = summaries.get(cluster_id, {})
        return {
            "cluster_id": cluster_id,
            "size": summary.get("size", 0),
            "keywords": summary.get("keywords", []),
        }

    note = ""
    if changes.matched_by == "none" and not same_space:
        note = (
            "the runs embed into different spaces (an encoder trained from scratch opens a new "
            "one), so their clusters cannot be paired; warm-start the encoder to compare them"
        )
    elif changes.matched_by == "none":
        note = (
            f"centroid shapes differ ({current_centroids.shape} now, "
            f"{previous_centroids.shape} before) and there is no alignment.json"
        )
    return {
        "metric_deltas": deltas,
        "matched_by": changes.matched_by,
        "note": note,
        "n_matched": len(changes.matches),
        "appeared": [cluster(current, c) for c in changes.appeared],
        "vanished": [cluster(previous, p) for p in changes.vanished],
        "moved": [
            cluster(current, m.current)
            | {
                "previous_id": m.previous,
                "shift": m.shift,
                "previous_size": previous.get(m.previous, {}).get("size", 0),
                "previous_keywords": previous.get(m.previous, {}).get("keywords", []),
            }
            for m in changes.moved
        ],
    }
