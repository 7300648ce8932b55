"""FaissDBSCAN against scikit-learn's DBSCAN, hand-built cases, and the eps estimate (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score, pairwise_distances

from udl.cluster.dbscan import _UnionFind, dbscan
from udl.cluster.selection import estimate_eps
from udl.errors import ConfigError


def _blobs_with_noise(seed: int) -> NDArray[np.float32]:
    x, _ = make_blobs(800, n_features=6, centers=5, cluster_std=0.8, random_state=seed)
    noise = np.random.default_rng(seed).uniform(x.min(), x.max(), (40, 6))
    return np.vstack([x, noise]).astype(np.float32)


def _moons() -> NDArray[np.float32]:
    x, _ = make_moons(600, noise=0.06, random_state=0)
    return x.astype(np.float32)


def _varied_density() -> NDArray[np.float32]:
    x, _ = make_blobs(
        600, n_features=4, centers=4, cluster_std=[0.3, 0.6, 1.0, 1.5], random_state=3
    )
    return x.astype(np.float32)


def _directions() -> NDArray[np.float32]:
    """Clusters of directions with varied norms, so cosine and l2 disagree."""
    x, _ = make_blobs(600, n_features=8, centers=6, cluster_std=0.4, random_state=5)
    scale = np.random.default_rng(5).uniform(0.5, 3.0, (len(x), 1))
    return (x * scale).astype(np.float32)


DATASETS = {
    "blobs_noise": (_blobs_with_noise(0), {"l2": 2.0, "cosine": 0.02}),
    "moons": (_moons(), {"l2": 0.12, "cosine": 0.0012}),
    "varied_density": (_varied_density(), {"l2": 1.5, "cosine": 0.015}),
    "directions": (_directions(), {"l2": 5.0, "cosine": 0.004}),
}


def _sklearn(x: NDArray[np.float32], eps: float, min_samples: int, metric: str) -> DBSCAN:
    return DBSCAN(
        eps=eps, min_samples=min_samples, metric="euclidean" if metric == "l2" else "cosine"
    ).fit(x)


def _assert_same_as_sklearn(
    x: NDArray[np.float32], eps: float, min_samples: int, metric: str, **kwargs: int
) -> None:
    ours = dbscan(x, eps, min_samples, metric, **kwargs)
    ref = _sklearn(x, eps, min_samples, metric)
    core = np.zeros(len(x), dtype=bool)
    core[ref.core_sample_indices_] = True
    np.testing.assert_array_equal(ours.core_mask, core)
    np.testing.assert_array_equal(ours.labels < 0, ref.labels_ < 0)
    assert adjusted_rand_score(ref.labels_[core], ours.labels[core]) == 1.0
    assert ours.n_clusters == len(set(ref.labels_) - {-1})
    # A border point reachable from two clusters may join either (sklearn: the first to reach
    # it); it must join the cluster of a core point within eps.
    border = np.flatnonzero(~core & (ref.labels_ >= 0))
    if border.size == 0:
        return
    dist = pairwise_distances(
        x[border], x[core], metric="euclidean" if metric == "l2" else "cosine"
    )
    for row, point in enumerate(border):
        assert ours.labels[point] in set(ours.labels[core][dist[row] <= eps])


@pytest.mark.parametrize("search", ["flat", "cells"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dbscan_equals_sklearn_5(name: str, metric: str, search: str) -> None:
    x, eps = DATASETS[name]
    flat_max = len(x) if search == "flat" else 50
    _assert_same_as_sklearn(x, eps[metric], 8, metric, flat_max=flat_max, batch_size=300)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_dbscan_found_clusters_on_every_dataset(metric: str) -> None:
    # Guards the comparison above against vacuous settings (all noise or one cluster).
    for x, eps in DATASETS.values():
        result = dbscan(x, eps[metric], 8, metric)
        assert result.n_clusters >= 2
        assert (result.labels >= 0).mean() > 0.8


@pytest.mark.parametrize("search", ["flat", "cells"])
def test_distance_exactly_eps_is_a_neighbour_5(search: str) -> None:
    # Integer grid: many pairs at distance exactly 1.0 = eps, where float32 rounding decides
    # unless the exact float64 check does.
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(12)), -1).reshape(-1, 2)
    x = (grid[rng.permutation(len(grid))[:100]] + 1000.0).astype(np.float32)
    flat_max = len(x) if search == "flat" else 10
    for min_samples in (3, 4, 5):
        _assert_same_as_sklearn(x, 1.0, min_samples, "l2", flat_max=flat_max, batch_size=16)


def test_core_border_noise_by_hand() -> None:
    # Points 0..3 one unit apart, eps=1, min_samples=3: 1 and 2 have 3 neighbours (self
    # included) so they are core; 0 and 3 are border; 10 is noise.
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]], dtype=np.float32)
    result = dbscan(x, 1.0, 3, "l2")
    assert result.core_mask.tolist() == [False, True, True, False, False]
    assert result.labels.tolist() == [0, 0, 0, 0, -1]


def test_border_point_joins_nearest_core() -> None:
    # Two chains, 0.25 apart within each; eps=0.6, min_samples=4. The point at 2.6 reaches
    # the left chain's end (2.0, at 0.6) and the right chain's start (3.0, at 0.4), both core,
    # but has only 3 neighbours itself: a border point, given to the nearer core (right).
    left, right = np.arange(0.0, 2.01, 0.25), np.arange(3.0, 5.01, 0.25)
    x = np.concatenate([left, [2.6], right])[:, None].astype(np.float32)
    result = dbscan(x, 0.6, 4, "l2")
    border = len(left)
    assert result.core_mask[border - 1] and result.core_mask[border + 1]
    assert not result.core_mask[border]
    assert result.n_clusters == 2
    assert result.labels[border] == result.labels[border + 1] != result.labels[border - 1]


def test_nprobe_marks_result_approximate_and_full_probe_is_exact() -> None:
    x, eps = DATASETS["blobs_noise"]
    exact = dbscan(x, eps["l2"], 8, "l2")
    full = dbscan(x, eps["l2"], 8, "l2", flat_max=50, nprobe=10_000)
    approx = dbscan(x, eps["l2"], 8, "l2", flat_max=50, nprobe=1)
    assert exact.exact and not full.exact and not approx.exact
    np.testing.assert_array_equal(full.labels, exact.labels)
    # One cell per batch can only lose neighbours: never more core points than exact.
    assert approx.core_mask.sum() <= exact.core_mask.sum()


def _add_in_batches(sets: _UnionFind, n: int, batch: int, edges: np.ndarray) -> None:
    """Feed edges (later point, earlier-or-same point) batch by batch, as DBSCAN's scan does."""
    for start in range(0, n, batch):
        ids = np.arange(start, min(start + batch, n))
        mine = edges[(edges[:, 0] >= start) & (edges[:, 0] < ids[-1] + 1)]
        mine = mine[np.argsort(mine[:, 0], kind="stable")]
        in_batch = np.where(mine[:, 1] >= start, mine[:, 1] - start, -1)
        sets.add_batch(ids, mine[:, 0] - start, mine[:, 1], in_batch)


@pytest.mark.parametrize("batch", [1, 7, 200])
def test_union_find_matches_connected_components(batch: int) -> None:
    rng = np.random.default_rng(batch)
    n = 200
    a, b = rng.integers(0, n, 150), rng.integers(0, n, 150)
    a, b = a[a != b], b[a != b]
    edges = np.column_stack([np.maximum(a, b), np.minimum(a, b)])
    sets = _UnionFind(n)
    _add_in_batches(sets, n, batch, edges)
    expected = connected_components(
        coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False
    )[1]
    assert adjusted_rand_score(expected, sets.roots()) == 1.0


def test_union_find_long_chain_ends_in_one_set() -> None:
    # A path 0-1-...-999 met one point at a time, and points that repeat a root many times.
    n = 1000
    sets = _UnionFind(n)
    chain = np.column_stack([np.arange(1, n), np.arange(n - 1)])
    _add_in_batches(sets, n, 1, chain)
    np.testing.assert_array_equal(sets.roots(), np.zeros(n))


def test_dbscan_is_deterministic_and_leaves_input_alone() -> None:
    x, eps = DATASETS["moons"]
    before = x.copy()
    first = dbscan(x, eps["cosine"], 8, "cosine", flat_max=50)
    second = dbscan(x, eps["cosine"], 8, "cosine", flat_max=50)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.labels.dtype == np.int32


@pytest.mark.parametrize("flat_max", [100_000, 50])
@pytest.mark.parametrize("min_samples", [1, 5])
def test_cosine_zero_rows_match_sklearn(min_samples: int, flat_max: int) -> None:
    # FAISS gives a zero row similarity 0 even with itself; it still counts as its own
    # neighbour (min_samples=1 makes each zero row a cluster of its own, as in sklearn).
    x = np.vstack([_directions()[:300], np.zeros((3, 8), np.float32)])
    _assert_same_as_sklearn(x, 0.01, min_samples, "cosine", flat_max=flat_max)


def test_empty_input() -> None:
    result = dbscan(np.empty((0, 3), np.float32), 0.5, 3, "l2")
    assert result.labels.shape == (0,) and result.n_clusters == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "'eps'"),
        ({"eps": float("nan")}, "'eps'"),
        ({"min_samples": 0}, "'min_samples'"),
        ({"metric": "manhattan"}, "'metric'"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"nprobe": 0}, "'nprobe'"),
    ],
)
def test_bad_parameters_raise_config_error(kwargs: dict, match: str) -> None:
    args = {"eps": 0.5, "min_samples": 3, "metric": "l2"} | kwargs
    with pytest.raises(ConfigError, match=match):
        dbscan(np.zeros((4, 2), np.float32), **args)


def test_non_finite_input_names_the_row() -> None:
    x = np.zeros((4, 2), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ConfigError, match="row 2"):
        dbscan(x, 0.5, 3, "l2")


def test_estimate_eps_lies_between_within_and_between_cluster_scales() -> None:
    # Blobs of std 0.5 in 4-D, centres at least ~10 apart: the 8-NN distance inside a blob is
    # well below 1.5, the gap between blobs far above; the knee must sit in between.
    x, truth = make_blobs(
        3000, n_features=4, centers=6, cluster_std=0.5, center_box=(-30, 30), random_state=1
    )
    x = np.vstack([x, np.random.default_rng(1).uniform(-30, 30, (150, 4))]).astype(np.float32)
    eps = estimate_eps(x, 8, "l2", sample_size=2000, seed=0)
    assert 0.2 < eps < 3.0
    labels = dbscan(x, eps, 8, "l2").labels
    clustered = labels[: len(truth)] >= 0
    assert clustered.mean() > 0.95
    assert adjusted_rand_score(truth[clustered], labels[: len(truth)][clustered]) > 0.99


def test_estimate_eps_is_seeded_and_rejects_duplicates() -> None:
    x = _blobs_with_noise(2)
    assert estimate_eps(x, 5, "cosine", 500, seed=3) == estimate_eps(x, 5, "cosine", 500, seed=3)
    with pytest.raises(ConfigError, match="duplicates"):
        estimate_eps(np.ones((50, 3), np.float32), 5, "l2")
    with pytest.raises(ConfigError, match="min_samples"):
        estimate_eps(x, 1, "l2")
