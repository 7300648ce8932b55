"""Choose DBSCAN's ``eps`` by scanning candidates and scoring each clustering.

The knee of the k-distance curve alone (``estimate_eps``, Ester et al., 1996) is a poor guide on
learned text embeddings: there, neighbourhoods chain together long before the knee, and on the
fortunes corpus the knee gave one cluster holding 97.6% of the documents (NMI 0.003). So
``choose_eps`` tries the k-distance quantiles ``EPS_QUANTILES`` (and the knee), smallest
first, runs DBSCAN on all points for each, and scores it by the mean silhouette over a sample
of all points with noise points scoring 0: Rousseeuw's (1987) value for a point alone in its
cluster, so a clustering that leaves most documents as noise scores low however tight its few
clusters are. Candidates with fewer than 2 clusters or one dominant cluster
(``udl.cluster.health``) are not eligible; the eligible one with the highest score wins, ties to
the larger eps. Raising eps only merges clusters, so the scan stops after the first candidate
whose largest cluster holds more than half the points (the larger ones would be worse and
slower). If no candidate is eligible, the one with the highest score (then the largest eps
tried) is kept and a warning says DBSCAN does not suit these embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from udl.cluster._checks import Metric
from udl.cluster.dbscan import DBSCANResult, dbscan
from udl.cluster.health import DOMINANT_SHARE, dominant_threshold
from udl.cluster.selection import k_distances, knee_index
from udl.evaluate import silhouette_values

__all__ = ["EPS_QUANTILES", "EPS_RULE", "EpsCandidate", "EpsSelection", "choose_eps"]

EPS_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EPS_RULE = (
    "DBSCAN on all points for each candidate eps (quantiles 0.05, 0.1, 0.2, ..., 0.9 and the "
    "knee of the sorted distances of sampled points to their min_samples-th nearest neighbour), "
    "smallest first, stopping after the first whose largest cluster holds more than half the "
    "points; score = mean silhouette over the sample with noise points scoring 0; eligible: at "
    "least 2 clusters and none dominant; the highest score wins, ties to the larger eps"
)


@dataclass(frozen=True)
class EpsCandidate:
    """One candidate eps and the clustering it gave.

    Attributes:
        eps: the radius tried.
        source: ``"q0.30"`` for a k-distance quantile, ``"knee"`` for the knee.
        n_clusters: clusters found.
        noise_share: share of the points that are noise.
        largest_share: share of the points in the largest cluster.
        silhouette: silhouette of the clustered sampled points (None with < 2 clusters there).
        score: silhouette with noise scoring 0 (None with < 2 clusters in the sample).
        eligible: at least 2 clusters and none dominant.
    """

    eps: float
    source: str
    n_clusters: int
    noise_share: float
    largest_share: float
    silhouette: float | None
    score: float | None
    eligible: bool


@dataclass(frozen=True)
class EpsSelection:
    """The chosen eps, its DBSCAN result, and every candidate tried."""

    chosen: float
    result: DBSCANResult
    candidates: list[EpsCandidate]
    min_samples: int
    sample_size: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """``{"rule", "eps", "min_samples", "sample_size", "candidates": [...]}``."""
        return {
            "rule": EPS_RULE,
            "eps": self.chosen,
            "min_samples": self.min_samples,
            "sample_size": self.sample_size,
            "candidates": [asdict(c) for c in self.candidates],
        }


def _candidates(curve: NDArray[np.float64]) -> list[tuple[float, str]]:
    """(eps, source) pairs, ascending, zero and repeated radii dropped."""
    pairs = [(float(np.quantile(curve, q)), f"q{q:.2f}") for q in EPS_QUANTILES]
    pairs.append((float(curve[knee_index(curve)]), "knee"))
    out: dict[float, str] = {}
    for eps, source in sorted(pairs):
        if eps > 0 and eps not in out:
            out[eps] = source
    if not out:
        positive = curve[curve > 0]
        out[float(positive[0]) if positive.size else 1e-6] = "smallest positive"
    return sorted(out.items())


def _score(
    x: NDArray[np.floating], labels: NDArray[np.int32], sample: NDArray[np.int64], metric: Metric
) -> tuple[float | None, float | None]:
    """Silhouette of the clustered sampled points, and the mean with noise scoring 0."""
    picked = labels[sample]
    clustered = picked >= 0
    n_labels = len(np.unique(picked[clustered]))
    if not 2 <= n_labels < clustered.sum():
        return None, None
    sil = float(silhouette_values(x[sample][clustered], picked[clustered], metric).mean())
    return sil, sil * float(clustered.mean())


def _describe(
    result: DBSCANResult, eps: float, source: str, score: tuple[float | None, float | None]
) -> EpsCandidate:
    labels = result.labels
    n = len(labels)
    sizes = np.bincount(labels[labels >= 0], minlength=max(result.n_clusters, 1))
    largest = float(sizes.max()) / n
    eligible = result.n_clusters >= 2 and largest <= dominant_threshold(result.n_clusters)
    return EpsCandidate(
        eps=eps,
        source=source,
        n_clusters=result.n_clusters,
        noise_share=float(np.mean(labels < 0)),
        largest_share=largest,
        silhouette=score[0],
        score=score[1],
        eligible=eligible,
    )


def choose_eps(
    x: NDArray[np.floating],
    min_samples: int,
    metric: Metric = "cosine",
    sample_size: int = 10_000,
    seed: int = 0,
    *,
    flat_max: int = 100_000,
    nprobe: int | None = None,
) -> EpsSelection:
    """Scan candidate radii and keep the best-scoring DBSCAN clustering (module docstring).

    Args:
        x: float array of shape (n, d); not modified.
        min_samples: DBSCAN's ``min_samples``, at least 2.
        metric: ``"cosine"`` or ``"l2"``.
        sample_size: points queried for the k-distances, and scored by silhouette.
        seed: seed of the sample and of DBSCAN's cells.
        flat_max: passed to :func:`udl.cluster.dbscan.dbscan`.
        nprobe: passed to :func:`udl.cluster.dbscan.dbscan`.

    Returns:
        The chosen eps with its DBSCAN result, every candidate tried, and warnings.

    Raises:
        ConfigError: see :func:`udl.cluster.selection.estimate_eps`.
    """
    curve = k_distances(x, min_samples, metric, sample_size, seed)
    arr = np.asarray(x)
    n = len(arr)
    sample = np.arange(n)
    if n > sample_size:
        # The points whose k-distances gave the candidates (the same draw as k_distances).
        sample = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
    tried: list[tuple[EpsCandidate, DBSCANResult]] = []
    for eps, source in _candidates(curve):
        result = dbscan(arr, eps, min_samples, metric, flat_max=flat_max, nprobe=nprobe, seed=seed)
        candidate = _describe(result, eps, source, _score(arr, result.labels, sample, metric))
        tried.append((candidate, result))
        if candidate.largest_share > DOMINANT_SHARE:
            break
    best, result = max(tried, key=_preference)
    warnings = [] if best.eligible else [_no_eligible_warning(best, min_samples)]
    return EpsSelection(best.eps, result, [c for c, _ in tried], min_samples, len(sample), warnings)


def _preference(item: tuple[EpsCandidate, DBSCANResult]) -> tuple[bool, float, float]:
    """Sort key: eligible first, then the score (missing lowest), then the larger eps."""
    candidate = item[0]
    score = candidate.score if candidate.score is not None else -np.inf
    return candidate.eligible, score, candidate.eps


def _no_eligible_warning(best: EpsCandidate, min_samples: int) -> str:
    return (
        f"DBSCAN (eps chosen automatically): no candidate eps gave at least 2 clusters without "
        f"one dominant cluster, so eps={best.eps:.3g} was kept ({best.n_clusters} clusters, "
        f"{best.noise_share:.1%} noise, the largest holding {best.largest_share:.1%}); a single "
        f"radius does not separate these embeddings: try k-means, or set eps and min_samples "
        f"(now {min_samples}) by hand."
    )
