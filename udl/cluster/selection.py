"""Choose k for k-means and eps for DBSCAN automatically, on a sample.

k (``choose_k``): fit k-means for every candidate k on the same sample and score it by
silhouette (higher is better), Calinski-Harabasz (higher) and Davies-Bouldin (lower); for
cosine, CH and DB are computed on the L2-normalised sample, the space spherical k-means works
in. Each candidate's k-means keeps the best of ``SELECTION_NREDO`` restarts: one poor local
minimum (two centroids sharing a cluster) would otherwise misrank its k. Each score ranks the
candidates; the k with the smallest sum of the three ranks wins (a Borda count, so no single
score's scale dominates); ties go to the higher silhouette, then the smaller k. On learned text
embeddings silhouette and Davies-Bouldin often improve with k all along the grid, so the
choice lands on its largest k; then the grid is extended past that edge (``EXTEND_FACTORS``,
at most ``MAX_EXTENSIONS`` times) and ranked again, and a choice still at the edge comes with a
warning. The rule and every candidate's scores are returned for ``metrics.json``.

eps (``estimate_eps``, one candidate of ``udl.cluster.eps_search.choose_eps``): the knee of the sorted k-distance curve (k = ``min_samples``), the
heuristic of Ester et al. (1996) made automatic with the "kneedle" rule of Satopaa et al.
(2011): the point of the curve farthest from the chord joining its ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
from sklearn.preprocessing import normalize

from udl.cluster._checks import Metric, check_metric, check_positive_int, check_x
from udl.cluster.kmeans import FaissKMeans
from udl.cluster.neighbours import flat_index, search_copy
from udl.errors import ConfigError
from udl.evaluate import silhouette_values

__all__ = [
    "KNEE_RULE",
    "K_RULE",
    "CandidateScore",
    "SelectionResult",
    "choose_k",
    "estimate_eps",
    "k_distances",
    "knee_index",
]

SELECTION_NREDO = 3
# When the best k is the largest candidate (or the smallest, above 2), the grid is extended by
# these factors of that k, at most MAX_EXTENSIONS times: scores that still improve at the edge
# say nothing about where they would peak.
EXTEND_FACTORS = (1.5, 2.0)
MAX_EXTENSIONS = 2
# Extended candidates keep at least this many sampled points per cluster on average.
MIN_POINTS_PER_CLUSTER = 20
TIE_BREAK = "ties go to the higher silhouette, then to the smaller k"
K_RULE = (
    f"k-means (best of {SELECTION_NREDO} restarts) for each candidate k on one sample; "
    "rank candidates by silhouette (desc), Calinski-Harabasz (desc) and Davies-Bouldin "
    f"(asc); choose the smallest rank sum, {TIE_BREAK}; when the choice is the largest "
    "candidate (or the smallest, above 2), add candidates 1.5x and 2x beyond it (at most twice, "
    f"keeping {MIN_POINTS_PER_CLUSTER} sampled points per cluster) and rank again"
)
KNEE_RULE = (
    "knee (farthest point from the chord) of the sorted distances of sampled points to their "
    "min_samples-th nearest neighbour among all points, itself counted"
)
# Sampled queries searched against all points at once (bounds the (batch, k) result).
_QUERY_BATCH = 4096


@dataclass(frozen=True)
class CandidateScore:
    """Internal scores of k-means with one candidate k on the selection sample."""

    k: int
    silhouette: float
    calinski_harabasz: float
    davies_bouldin: float
    rank_sum: float


@dataclass(frozen=True)
class SelectionResult:
    """The chosen k, every candidate's scores, and how the grid was extended.

    Attributes:
        chosen: the k chosen.
        candidates: scores of every k tried, ascending k.
        extended: candidates added beyond the given grid, in the order tried.
        at_edge: the chosen k is still the largest (or smallest, above 2) k tried.
        warnings: plain sentences for the user (``at_edge``, or a choice among the added
            candidates).
    """

    chosen: int
    candidates: list[CandidateScore]
    extended: list[int] = field(default_factory=list)
    at_edge: bool = False
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """``{"rule", "tie_break", "chosen", "extended", "at_edge", "candidates": [{k,
        silhouette, calinski_harabasz, davies_bouldin, rank_sum}]}`` for metrics."""
        return {
            "rule": K_RULE,
            "tie_break": TIE_BREAK,
            "chosen": self.chosen,
            "extended": self.extended,
            "at_edge": self.at_edge,
            "candidates": [asdict(c) for c in self.candidates],
        }


def _scores(
    arr: NDArray[np.floating], k: int, metric: Metric, niter: int, seed: int
) -> tuple[float, float, float]:
    """Silhouette, Calinski-Harabasz and Davies-Bouldin of k-means with ``k`` on ``arr``."""
    model = FaissKMeans(k, metric, niter=niter, nredo=SELECTION_NREDO, seed=seed)
    labels = model.fit(arr).predict(arr)[0]
    if not 2 <= len(np.unique(labels)) < len(arr):
        return -1.0, 0.0, float("inf")
    space = normalize(arr) if metric == "cosine" else arr
    return (
        float(silhouette_values(arr, labels, metric).mean()),
        float(calinski_harabasz_score(space, labels)),
        float(davies_bouldin_score(space, labels)),
    )


def _rank(scored: dict[int, tuple[float, float, float]]) -> list[CandidateScore]:
    """Rank sums of the scored candidates, ascending k."""
    ks = sorted(scored)
    table = np.array([scored[k] for k in ks])
    ranks = rankdata(-table[:, 0]) + rankdata(-table[:, 1]) + rankdata(table[:, 2])
    return [CandidateScore(k, *scored[k], float(rank)) for k, rank in zip(ks, ranks, strict=True)]


def _best(scores: list[CandidateScore]) -> CandidateScore:
    return min(scores, key=lambda c: (c.rank_sum, -c.silhouette, c.k))


def _beyond(ks: list[int], chosen: int, top: int) -> list[int]:
    """Candidates past the edge the choice sits on, or none if it is inside the grid."""
    if chosen == ks[-1]:
        wanted = {round(chosen * f) for f in EXTEND_FACTORS}
        return sorted(k for k in wanted if k <= top and k not in ks)
    if chosen == ks[0] and chosen > 2:
        wanted = {max(2, round(chosen / f)) for f in EXTEND_FACTORS}
        return sorted(k for k in wanted if k not in ks)
    return []


def choose_k(
    x: NDArray[np.float32],
    candidates: list[int],
    metric: Metric = "cosine",
    niter: int = 25,
    seed: int = 0,
) -> SelectionResult:
    """Pick k among ``candidates`` for the sample ``x`` by the rank-sum rule above.

    Args:
        x: float32 array of shape (n, dim), the selection sample.
        candidates: values of k to try; those not in [2, n) are skipped; more are added
            when the choice sits at the edge of the grid (see ``K_RULE``).
        metric: ``"cosine"`` or ``"l2"``.
        niter: k-means iterations per candidate.
        seed: seed of every candidate's k-means.

    Returns:
        The chosen k, the scores of each candidate tried, and a warning when the choice is
        still at the edge of the (extended) grid.

    Raises:
        ConfigError: if no candidate is in [2, n).
    """
    arr = check_x(x, "choose_k")
    check_metric(metric, "choose_k")
    usable = sorted({k for k in candidates if 2 <= k < arr.shape[0]})
    if not usable:
        raise ConfigError(
            f"No candidate k in {candidates} is in [2, {arr.shape[0]}): the selection sample has "
            f"{arr.shape[0]} documents (cluster.selection_sample, or every document with "
            "features if there are fewer); use smaller k_candidates."
        )
    top = max(usable[-1], arr.shape[0] // MIN_POINTS_PER_CLUSTER)
    scored = {k: _scores(arr, k, metric, niter, seed) for k in usable}
    extended: list[int] = []
    for _ in range(MAX_EXTENSIONS):
        more = _beyond(sorted(scored), _best(_rank(scored)).k, top)
        if not more:
            break
        scored |= {k: _scores(arr, k, metric, niter, seed) for k in more}
        extended += more
    ranked = _rank(scored)
    best = _best(ranked)
    ks = sorted(scored)
    at_edge = best.k == ks[-1] or ks[0] == best.k > 2
    if at_edge:
        warnings = [_edge_warning(best.k, ks)]
    else:
        warnings = [_extended_warning(best.k, usable, extended)] if extended else []
    return SelectionResult(best.k, ranked, extended, at_edge, warnings)


def _edge_warning(chosen: int, ks: list[int]) -> str:
    side = "largest" if chosen == ks[-1] else "smallest"
    more = "larger" if side == "largest" else "smaller"
    return (
        f"auto k: k={chosen} is the {side} k tried ({', '.join(map(str, ks))}), so the scores "
        f"may keep improving past it and the choice is arbitrary; try k_candidates with {more} "
        "values, or set k by hand."
    )


def _extended_warning(chosen: int, given: list[int], extended: list[int]) -> str:
    return (
        f"auto k: the best of k_candidates ({', '.join(map(str, given))}) was at the edge of "
        f"that grid, so k={', '.join(map(str, extended))} were tried too and k={chosen} chosen; "
        "the internal scores favour it over the candidates given, but set k by hand if you "
        "need coarser or finer clusters."
    )


def estimate_eps(
    x: NDArray[np.floating],
    min_samples: int,
    metric: Metric = "cosine",
    sample_size: int = 10_000,
    seed: int = 0,
) -> float:
    """Suggest ``eps`` from the knee of the sorted k-distance curve, k = ``min_samples``.

    The sampled points are queried against ALL rows of ``x`` (a flat index, cost
    ``sample_size * n * d``), so their k-distances are those DBSCAN will see; a search within
    the sample alone would overestimate ``eps`` by about ``(n / sample_size) ** (1 / d_intrinsic)``
    and make neighbourhoods, time and memory explode on large inputs.

    Args:
        x: float array of shape (n, d); not modified.
        min_samples: The ``min_samples`` that will be passed to DBSCAN; at least 2.
        metric: ``"cosine"`` or ``"l2"``.
        sample_size: At most this many rows, drawn at random without replacement, are queried.
        seed: Seed of the sample, so the estimate is reproducible.

    Returns:
        A positive ``eps`` in the metric's units (cosine distance, or Euclidean distance).

    Raises:
        ConfigError: If a parameter is invalid, ``x`` has fewer than ``min_samples`` rows,
            or all k-distances are zero (duplicated points).
    """
    curve = k_distances(x, min_samples, metric, sample_size, seed)
    eps = curve[knee_index(curve)]
    if eps <= 0:
        eps = _smallest_positive(curve, min_samples)
    return float(eps)


def _smallest_positive(curve: NDArray[np.float64], min_samples: int) -> float:
    positive = curve[curve > 0]
    if positive.size == 0:
        raise ConfigError(
            f"estimate_eps: every sampled point has {min_samples - 1} exact duplicates, so "
            "all k-distances are 0; deduplicate x or raise min_samples."
        )
    return float(positive[0])


def k_distances(
    x: NDArray[np.floating],
    min_samples: int,
    metric: Metric = "cosine",
    sample_size: int = 10_000,
    seed: int = 0,
) -> NDArray[np.float64]:
    """Sorted distances of sampled points to their ``min_samples``-th nearest neighbour among
    all points of ``x``, itself counted (arguments and errors as :func:`estimate_eps`).

    Returns:
        float64 array of shape (min(n, sample_size),), ascending.
    """
    arr = check_x(x, "estimate_eps")
    check_positive_int(min_samples, "min_samples", "estimate_eps")
    check_positive_int(sample_size, "sample_size", "estimate_eps")
    check_metric(metric, "estimate_eps")
    if min_samples < 2:
        raise ConfigError(
            "The 'min_samples' parameter of estimate_eps must be >= 2: with 1 the k-distance is "
            f"each point's distance to itself. Got {min_samples!r} instead."
        )
    n = arr.shape[0]
    if n < min_samples:
        raise ConfigError(
            f"The 'min_samples' parameter of estimate_eps ({min_samples}) exceeds the "
            f"{n} points of x; pass more points or lower min_samples."
        )
    xs = search_copy(arr, metric)
    queries = np.arange(n)
    if n > sample_size:
        queries = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
    index = flat_index(xs, metric)
    kth = np.concatenate(
        [
            index.search(xs[queries[i : i + _QUERY_BATCH]], min_samples)[0][:, -1]
            for i in range(0, len(queries), _QUERY_BATCH)
        ]
    ).astype(np.float64)
    kdist = np.sqrt(np.maximum(kth, 0.0)) if metric == "l2" else np.maximum(1.0 - kth, 0.0)
    return np.sort(kdist)


def knee_index(curve: NDArray[np.float64]) -> int:
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
