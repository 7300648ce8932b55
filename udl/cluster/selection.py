"""Choose k automatically from internal scores on a sample.

Rule (documented in the README and written into `metrics.json`): fit k-means for every
candidate k on the same sample and score it by silhouette (higher is better),
Calinski-Harabasz (higher) and Davies-Bouldin (lower). Each score ranks the candidates; the k
with the smallest sum of the three ranks wins (a Borda count, so no single score's scale
dominates); ties go to the higher silhouette.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from udl.cluster.kmeans import FaissKMeans, Metric

__all__ = ["CandidateScore", "SelectionResult", "choose_k"]


@dataclass(frozen=True)
class CandidateScore:
    k: int
    silhouette: float
    calinski_harabasz: float
    davies_bouldin: float
    rank_sum: float


@dataclass(frozen=True)
class SelectionResult:
    chosen: int
    candidates: list[CandidateScore]

    def as_dict(self) -> dict:
        return {"chosen": self.chosen, "candidates": [asdict(c) for c in self.candidates]}


def choose_k(
    x: NDArray[np.float32],
    candidates: list[int],
    metric: Metric = "cosine",
    niter: int = 25,
    seed: int = 0,
) -> SelectionResult:
    """Pick k among `candidates` for the sample `x` (n, dim) by the rank-sum rule above.

    Candidates with k >= n are skipped; at least one must remain.
    """
    usable = [k for k in candidates if 2 <= k < x.shape[0]]
    if not usable:
        raise ValueError(f"no candidate k in {candidates} is below the sample size {x.shape[0]}")
    sk_metric = "cosine" if metric == "cosine" else "euclidean"
    rows = []
    for k in usable:
        labels = FaissKMeans(k, metric, niter=niter, seed=seed).fit(x).predict(x)[0]
        if len(np.unique(labels)) < 2:
            rows.append((k, -1.0, 0.0, float("inf")))
            continue
        rows.append(
            (
                k,
                float(silhouette_score(x, labels, metric=sk_metric)),
                float(calinski_harabasz_score(x, labels)),
                float(davies_bouldin_score(x, labels)),
            )
        )
    table = np.array([r[1:] for r in rows])
    ranks = rankdata(-table[:, 0]) + rankdata(-table[:, 1]) + rankdata(table[:, 2])
    scores = [
        CandidateScore(k, s, ch, db, float(rank))
        for (k, s, ch, db), rank in zip(rows, ranks, strict=True)
    ]
    best = min(scores, key=lambda c: (c.rank_sum, -c.silhouette))
    return SelectionResult(best.k, scores)
