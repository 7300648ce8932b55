"""Metrics of a run (issue 6): each score equals scikit-learn's on known inputs; the streamed
contingency table equals the in-memory one; cluster changes between runs on hand-built cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_blobs
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

import udl.evaluate
from udl.compare import compare_runs, match_clusters
from udl.evaluate import (
    ContingencyCounter,
    cluster_accuracy,
    contingency_scores,
    internal_scores,
    label_metrics,
    silhouette_values,
)

SKLEARN_LABEL_SCORES = {
    "nmi": skm.normalized_mutual_info_score,
    "ari": skm.adjusted_rand_score,
    "homogeneity": skm.homogeneity_score,
    "completeness": skm.completeness_score,
}


def _labellings() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 300)
    noisy = np.where(rng.random(300) < 0.3, rng.integers(-1, 7, 300), (truth + 2) % 5)
    return [
        ("random", rng.integers(0, 4, 200), rng.integers(-1, 6, 200)),
        ("permuted-with-errors", truth, noisy),
        ("perfect-renamed", truth, (truth * 3 + 1) % 5),
        ("one-cluster", truth, np.zeros(300, int)),
        ("one-class", np.zeros(50, int), rng.integers(0, 3, 50)),
        ("both-trivial", np.zeros(10, int), np.zeros(10, int)),
        ("all-singletons", np.arange(40), np.arange(40)[::-1]),
    ]


@pytest.mark.parametrize(
    ("truth", "pred"), [c[1:] for c in _labellings()], ids=[c[0] for c in _labellings()]
)
def test_label_scores_equal_sklearn_6(truth: np.ndarray, pred: np.ndarray) -> None:
    scores = label_metrics(truth, pred)
    for name, sklearn_score in SKLEARN_LABEL_SCORES.items():
        assert scores[name] == pytest.approx(sklearn_score(truth, pred), abs=1e-12), name


def test_cluster_accuracy_hungarian_by_hand_6() -> None:
    assert cluster_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == 1.0
    # Best matching: class 0 -> cluster 5 (2 docs), class 1 -> cluster 7 (1 doc) = 3/4;
    # the greedy "each cluster to its majority class" would also give class 0 to cluster 7.
    assert cluster_accuracy(np.array([0, 0, 0, 1]), np.array([5, 5, 7, 7])) == 0.75
    assert cluster_accuracy(np.array([0, 0, 1, 1, 2]), np.array([3, 3, 3, 3, 3])) == 0.4


def test_ari_of_a_million_documents_does_not_overflow_6() -> None:
    # Pair counts of 10^6 documents are ~5e11; their products overflow int64.
    counts = np.array([[400_000, 100_000], [50_000, 450_000]])
    truth = np.repeat([0, 0, 1, 1], counts.ravel())
    pred = np.repeat([0, 1, 0, 1], counts.ravel())
    assert contingency_scores(counts)["ari"] == pytest.approx(skm.adjusted_rand_score(truth, pred))


def test_streamed_contingency_equals_in_memory_6() -> None:
    rng = np.random.default_rng(1)
    labels = rng.choice(["cat", "dog", "eel"], 1000).astype(object)
    labels[rng.random(1000) < 0.1] = None  # unlabelled documents are skipped
    clusters = rng.integers(-1, 4, 1000)
    counter = ContingencyCounter()
    for rows in np.array_split(np.arange(1000), 7):
        counter.update(pa.array(labels[rows], pa.string()), clusters[rows])
    table = counter.result()
    known = labels != None
    expected = skm.cluster.contingency_matrix(labels[known].astype(str), clusters[known])
    assert table.classes == ["cat", "dog", "eel"]
    assert table.clusters.tolist() == [-1, 0, 1, 2, 3]
    np.testing.assert_array_equal(table.counts, expected)
    assert contingency_scores(table.counts) == pytest.approx(
        label_metrics(labels[known].astype(str), clusters[known])
    )


@pytest.mark.parametrize("working_mib", [64, 0])
def test_cosine_silhouette_values_equal_sklearn_on_real_text(
    working_mib: int, sample_frame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cosine silhouette from cluster sums is scikit-learn's pairwise one, point by point,
    on WordNet glosses in their 1,000 labels' clusters, with a document alone in its cluster
    and a zero vector (distance 1 to everything) among them; in one block of rows, and one
    row at a time (no working memory)."""
    monkeypatch.setattr(udl.evaluate, "SILHOUETTE_WORKING_MEMORY", working_mib)
    x = TfidfVectorizer(min_df=2).fit_transform(sample_frame["text"])
    x = TruncatedSVD(32, random_state=0).fit_transform(x).astype(np.float32)
    labels = pd.factorize(sample_frame["label"])[0]
    labels[0] = labels.max() + 1
    x[1] = 0.0
    expected = skm.silhouette_samples(x, labels, metric="cosine")
    got = silhouette_values(x, labels, "cosine")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got[0] == 0.0
    assert len(np.unique(labels)) > 10 and got.mean() != pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_internal_scores_equal_sklearn_6(metric: str) -> None:
    x, labels = make_blobs(300, n_features=5, centers=4, random_state=0)
    x = x.astype(np.float32)
    labels[:10] = -1  # noise is left out of every internal score
    scores = internal_scores(x, labels, metric)
    keep = labels >= 0
    space = normalize(x[keep]) if metric == "cosine" else x[keep]
    distance = "cosine" if metric == "cosine" else "euclidean"
    assert scores.silhouette == pytest.approx(
        skm.silhouette_score(x[keep], labels[keep], metric=distance)
    )
    assert scores.calinski_harabasz == pytest.approx(
        skm.calinski_harabasz_score(space, labels[keep]), rel=1e-5
    )
    assert scores.davies_bouldin == pytest.approx(
        skm.davies_bouldin_score(space, labels[keep]), rel=1e-5
    )
    per_point = skm.silhouette_samples(x[keep], labels[keep], metric=distance)
    assert scores.per_cluster() == pytest.approx(
        {c: per_point[labels[keep] == c].mean() for c in range(4)}
    )


def test_internal_scores_undefined_with_one_cluster_6() -> None:
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    labels = np.r_[np.zeros(15, int), -np.ones(5, int)]
    assert internal_scores(x, labels, "l2").as_dict() == {
        "silhouette": None,
        "calinski_harabasz": None,
        "davies_bouldin": None,
    }


def test_internal_scores_say_why_they_are_undefined_22() -> None:
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    one_cluster = internal_scores(x, np.r_[np.zeros(15, int), -np.ones(5, int)], "l2")
    assert one_cluster.reason == (
        "the sample of 20 documents has 15 outside noise, in 1 cluster; silhouette, "
        "Calinski-Harabasz and Davies-Bouldin compare clusters and need at least 2"
    )
    singletons = internal_scores(x[:4], np.array([0, 1, 2, -1]), "cosine")
    assert singletons.reason is not None and "each in a cluster of its own" in singletons.reason
    assert internal_scores(x, np.arange(20) % 2, "l2").reason is None


PREVIOUS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], np.float32)


def test_match_clusters_appeared_vanished_moved_6() -> None:
    # Territory of each previous centroid: half of 10 = 5. Current ids are renumbered.
    current = np.array(
        [
            [10.2, 0.0],  # cluster 1, barely moved
            [0.0, 3.0],  # cluster 0, moved 3 > 0.5 * 5
            [30.0, 30.0],  # new
            [0.0, 10.1],  # cluster 2, barely moved
        ],
        np.float32,
    )
    changes = match_clusters(current, PREVIOUS, "l2")
    assert changes.matched_by == "centroids"
    assert {(m.current, m.previous) for m in changes.matches} == {(0, 1), (1, 0), (3, 2)}
    assert (changes.appeared, changes.vanished) == ([2], [3])
    assert [(m.current, m.previous) for m in changes.moved] == [(1, 0)]
    assert changes.moved[0].shift == pytest.approx(3.0)


def test_match_clusters_follows_alignment_and_needs_same_dims_6() -> None:
    changes = match_clusters(PREVIOUS[:2], PREVIOUS, "l2", alignment={0: 3, 1: None})
    assert changes.matched_by == "alignment"
    assert (changes.appeared, changes.vanished) == ([1], [0, 1, 2])
    assert changes.matches[0].shift == pytest.approx(np.hypot(10, 10))
    assert match_clusters(np.zeros((3, 5), np.float32), PREVIOUS, "l2").matched_by == "none"


def test_centroids_of_different_spaces_are_never_paired() -> None:
    """Two encoders trained from scratch give spaces of the same width whose coordinates mean
    nothing to each other: identical centroids there are not the same clusters."""
    changes = match_clusters(PREVIOUS, PREVIOUS, "l2", same_space=False)
    assert (changes.matched_by, changes.matches) == ("none", [])
    before = {"metric": "l2", "clusters": [{"cluster_id": 0, "size": 5, "keywords": ["a"]}]}
    result = compare_runs(before, {"metric": "l2"}, PREVIOUS, PREVIOUS, same_space=False)
    assert result["n_matched"] == 0 and "different spaces" in result["note"]
    # An alignment written by the clustering step still pairs the clusters.
    aligned = match_clusters(PREVIOUS, PREVIOUS, "l2", alignment={0: 0}, same_space=False)
    assert aligned.matched_by == "alignment"


def test_compare_runs_deltas_and_previous_keywords_6() -> None:
    before = {
        "silhouette": 0.5,
        "davies_bouldin": 1.0,
        "nmi": None,
        "metric": "l2",
        "clusters": [{"cluster_id": 3, "size": 12, "keywords": ["comet", "orbit"]}],
    }
    now = {"silhouette": 0.25, "davies_bouldin": 1.5, "nmi": 0.9, "metric": "l2", "clusters": []}
    result = compare_runs(before, now, PREVIOUS, PREVIOUS[:3])
    assert result["metric_deltas"] == {
        "silhouette": {"previous": 0.5, "current": 0.25, "delta": -0.25},
        "davies_bouldin": {"previous": 1.0, "current": 1.5, "delta": 0.5},
    }
    assert result["vanished"] == [{"cluster_id": 3, "size": 12, "keywords": ["comet", "orbit"]}]
    assert (result["n_matched"], result["appeared"], result["note"]) == (3, [], "")
