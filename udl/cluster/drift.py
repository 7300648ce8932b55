"""Drift of an incremental run: whether the documents it computed (new or changed texts) still
fit the previous run's clusters, measured against how well that run's own documents fit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.cluster.kmeans import NearestCentroids
from udl.cluster.neighbours import Metric
from udl.datasets import CENTROIDS_FILE
from udl.storage import dataset_parts

__all__ = ["RADIUS_QUANTILE", "Drift", "measure_drift"]

# A computed document is "far" when it lies farther from every previous centroid than this
# share of the previous run's clustered documents lie from their own: about 5% of documents
# are far when nothing drifted.
RADIUS_QUANTILE = 0.95


@dataclass(frozen=True)
class Drift:
    """How the computed documents fit the previous clusters.

    Attributes:
        n_checked: computed documents with features.
        radius: the previous run's `RADIUS_QUANTILE` distance to the own centroid.
        far_share: share of the checked documents farther than `radius` from every centroid
            (None when none was checked).
        mean_distance_previous: mean distance of the previous run's documents to their centroid.
        mean_distance_new: mean distance of the checked documents to their nearest centroid.
        threshold: ``update.drift_threshold`` (None: measured only).
        exceeded: `far_share` is above `threshold`.
    """

    n_checked: int
    radius: float
    far_share: float | None
    mean_distance_previous: float
    mean_distance_new: float | None
    threshold: float | None
    exceeded: bool

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _previous_distances(assignments: Path) -> NDArray[np.float32]:
    tables = [pq.read_table(p, columns=[S.DISTANCE, S.STATUS]) for p in dataset_parts(assignments)]
    distances = [
        t.column(S.DISTANCE).to_numpy()[
            t.column(S.STATUS).to_numpy(zero_copy_only=False) == S.CLUSTERED
        ]
        for t in tables
    ]
    return np.concatenate(distances) if distances else np.empty(0, np.float32)


def measure_drift(
    vectors: NDArray[np.float32],
    previous_models: Path,
    previous_assignments: Path,
    metric: Metric,
    threshold: float | None,
) -> Drift | None:
    """The drift of `vectors` (the computed documents with features) from the previous run's
    clusters, in that run's `metric`; None when it has no centroids or no clustered document
    to compare with."""
    centroids_path = previous_models / CENTROIDS_FILE
    distances = _previous_distances(previous_assignments)
    if not centroids_path.is_file() or not len(distances):
        return None
    centroids = np.load(centroids_path, allow_pickle=False).astype(np.float32)
    if len(centroids) < 2 or centroids.shape[1] != vectors.shape[1]:
        return None
    radius = float(np.quantile(distances, RADIUS_QUANTILE))
    far_share = mean_new = None
    if len(vectors):
        nearest = NearestCentroids(centroids, metric).predict(vectors)[1]
        far_share, mean_new = float(np.mean(nearest > radius)), float(np.mean(nearest))
    exceeded = threshold is not None and far_share is not None and far_share > threshold
    return Drift(
        n_checked=len(vectors),
        radius=radius,
        far_share=far_share,
        mean_distance_previous=float(np.mean(distances)),
        mean_distance_new=mean_new,
        threshold=threshold,
        exceeded=exceeded,
    )
