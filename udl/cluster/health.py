"""Warnings about clustering results a user should not accept without looking (contract A).

Each warning is one plain sentence that says what happened and what to try, goes into the
cluster step record's ``warnings`` and is logged at WARNING. The thresholds:

* one cluster is *dominant* when it holds more than ``DOMINANT_SHARE`` (half) of the documents
  clustered (noise included, documents without features excluded) and there are at least 3
  clusters; with 2 clusters, more than ``DOMINANT_SHARE_OF_TWO``; a single cluster always is
  (it says nothing about the corpus);
* *mostly noise*: more than ``NOISE_SHARE`` (half) of those documents are DBSCAN noise;
* *empty clusters*: k-means clusters that no document joined (k above the number of distinct
  embeddings);
* documents without features (see ``udl.schema.HAS_FEATURES``) are reported with their count.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DOMINANT_SHARE",
    "DOMINANT_SHARE_OF_TWO",
    "NOISE_SHARE",
    "dominant_threshold",
    "no_features_warning",
    "result_warnings",
]

log = logging.getLogger(__name__)

DOMINANT_SHARE = 0.5
DOMINANT_SHARE_OF_TWO = 0.9
NOISE_SHARE = 0.5


def dominant_threshold(n_clusters: int) -> float:
    """Share of the documents above which the largest of ``n_clusters`` clusters is dominant."""
    if n_clusters <= 1:
        return 0.0
    return DOMINANT_SHARE_OF_TWO if n_clusters == 2 else DOMINANT_SHARE


def result_warnings(
    sizes: NDArray[np.int64], n_noise: int, algorithm: str, setting: str
) -> list[str]:
    """Warnings for one dominant cluster or mostly noise (see the module docstring).

    Args:
        sizes: int (n_clusters,), documents per cluster.
        n_noise: DBSCAN noise documents (0 for k-means).
        algorithm: ``"kmeans"`` or ``"dbscan"``.
        setting: the parameters, for the message, e.g. ``"k=10"`` or ``"eps=0.31 chosen
            automatically, min_samples=5"``.

    Returns:
        The warning sentences, possibly none.
    """
    total = int(sizes.sum()) + n_noise
    if total == 0:
        return []
    name = "k-means" if algorithm == "kmeans" else "DBSCAN"
    out = []
    largest = int(sizes.max()) if sizes.size else 0
    share = largest / total
    if sizes.size and share > dominant_threshold(sizes.size):
        advice = (
            "try a larger k or k='auto', or another encoder"
            if algorithm == "kmeans"
            else "try a smaller eps, a larger min_samples, or k-means"
        )
        which = "a single cluster" if sizes.size == 1 else f"cluster {int(sizes.argmax())}"
        out.append(
            f"{name}: {which} holds {share:.1%} of the {total:,} documents clustered ({setting}), "
            f"so the clusters say little about the corpus; {advice}."
        )
    empty = int(np.sum(sizes == 0))
    if empty:
        out.append(
            f"{name}: {empty} of the {sizes.size} clusters are empty ({setting}): the embeddings "
            "have fewer distinct points than clusters; lower k."
        )
    if n_noise / total > NOISE_SHARE:
        out.append(
            f"{name}: {n_noise / total:.1%} of the {total:,} documents are noise, in no cluster "
            f"({setting}); try a larger eps or a smaller min_samples."
        )
    return out


def no_features_warning(n_no_features: int, n_docs: int) -> list[str]:
    """The warning for documents left without features, or none when there are none."""
    if n_no_features == 0:
        return []
    sentence = (
        f"{n_no_features:,} of {n_docs:,} documents have no word kept by preprocessing (each "
        "word rarer than preprocess.min_df, in more than preprocess.max_df of the documents, "
        "or a stop word; or no word of two letters or more) and were not clustered (status "
        "no_features, cluster_id -1); lower preprocess.min_df to keep rare words."
    )
    return [sentence]


def log_warnings(warnings: list[str]) -> None:
    """Log each warning at WARNING level (contract A)."""
    for warning in warnings:
        log.warning("%s", warning)
