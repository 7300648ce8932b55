"""Bounded Lloyd iterations (udl.cluster.lloyd) against plain Lloyd computed in full."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.cluster import kmeans_plusplus
from sklearn.datasets import make_blobs

from udl.cluster import lloyd as lloyd_module
from udl.cluster.kmeans import FaissKMeans
from udl.cluster.lloyd import lloyd


def _overlapping(n: int, k: int, offset: float, spherical: bool, seed: int) -> NDArray[np.float32]:
    """Blobs that touch, so points keep changing cluster for several iterations."""
    x, _ = make_blobs(n, n_features=16, centers=k, cluster_std=4.0, random_state=seed)
    x = x + offset
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def _plain_lloyd(
    x: NDArray[np.float32], start: NDArray[np.float32], niter: int, spherical: bool
) -> tuple[NDArray[np.float64], NDArray[np.int64], list[float], int]:
    """Every distance every iteration, in float64: the definition the bounds must reproduce."""
    x64, centroids = x.astype(np.float64), start.astype(np.float64)

    def assign(c: NDArray[np.float64]) -> tuple[NDArray[np.int64], float]:
        sq = ((x64[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        return sq.argmin(1), float(sq.min(1).sum())

    labels, objective = assign(centroids)
    objectives = [objective]
    for _ in range(niter):
        centroids = np.stack([x64[labels == j].mean(0) for j in range(len(centroids))])
        if spherical:
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        new, objective = assign(centroids)
        objectives.append(objective)
        if np.array_equal(new, labels):
            break
        labels = new
    return centroids, labels, objectives, len(objectives) - 1


@pytest.mark.parametrize(
    ("offset", "spherical", "seed"),
    [(0.0, False, 0), (0.0, False, 1), (0.0, True, 2), (1000.0, False, 3)],
)
def test_bounded_lloyd_gives_plain_lloyds_iterations(
    offset: float, spherical: bool, seed: int
) -> None:
    # offset 1000 puts the points far from the origin, where FAISS's float32 |x|^2 + |c|^2 -
    # 2 x.c loses digits: the rounding margin on the lower bounds must still hold.
    x = _overlapping(6000, 30, offset, spherical, seed)
    start = kmeans_plusplus(x, 30, random_state=seed)[0].astype(np.float32)
    result = lloyd(x, start, 50, spherical)
    centroids, labels, objective, n_iter = _plain_lloyd(x, start, 50, spherical)

    assert result.n_iter == n_iter > 3
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.centroids, centroids, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(result.objective, objective, rtol=1e-5)
    assert result.inertia == result.objective[-1]
    # The point of the bounds: near convergence few points are searched (plain Lloyd: all).
    assert result.searched[-1] < 0.1 * len(x)
    assert sum(result.searched) < 0.6 * len(x) * result.n_iter


def test_switching_between_bounded_and_plain_iterations_keeps_plain_lloyds_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A strict threshold makes these blobs leave the bounds for plain iterations and come
    # back (as a slowly converging corpus does): every switch must keep the labels exact.
    monkeypatch.setattr(lloyd_module, "_BOUNDED_MAX_SHARE", 0.2)
    x = _overlapping(6000, 30, 0.0, False, 0)
    start = kmeans_plusplus(x, 30, random_state=0)[0].astype(np.float32)
    result = lloyd(x, start, 50)
    _, labels, objective, n_iter = _plain_lloyd(x, start, 50, False)

    assert result.n_iter == n_iter
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.objective, objective, rtol=1e-5)
    plain = [s == len(x) for s in result.searched]
    # plain, then bounded, then plain again, then bounded again
    switches = [a != b for a, b in itertools.pairwise(plain)]
    assert plain[0] and sum(switches) >= 3


def test_empty_clusters_take_the_farthest_points() -> None:
    x, _ = make_blobs(3000, n_features=8, centers=6, cluster_std=0.5, random_state=4)
    x = np.ascontiguousarray(x, dtype=np.float32)
    # Three copies of one centroid: two of them get no point in the first assignment.
    start = np.concatenate([x[:4], np.repeat(x[4:5], 2, axis=0)])
    result = lloyd(x, start, 30)

    counts = np.bincount(result.labels, minlength=6)
    assert (counts > 0).all()
    sq = ((x[:, None, :] - result.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(result.labels, sq.argmin(1))
    assert all(
        b <= a * (1 + 1e-9) for a, b in zip(result.objective, result.objective[1:], strict=False)
    )


def test_fit_stops_once_converged_and_reports_its_objective() -> None:
    x, _ = make_blobs(2000, n_features=8, centers=5, cluster_std=0.5, random_state=5)
    model = FaissKMeans(5, "l2", niter=100, max_points_per_centroid=400, seed=0)
    model.fit(x.astype(np.float32))
    assert model.n_iter_ < 100
    # 5 x 400 points per centroid: the training sample is the whole data.
    assert model.objective_[-1] == pytest.approx(model.inertia_, rel=1e-6)
    assert model.objective_[-1] < model.objective_[0]


def test_points_without_structure_fall_back_to_plain_iterations() -> None:
    # Uniform points: bounds spare little, so most iterations search every point, and the
    # result is still plain Lloyd's.
    x = np.random.default_rng(6).random((4000, 8), dtype=np.float32)
    start = x[:40].copy()
    result = lloyd(x, start, 15)
    _, labels, objective, n_iter = _plain_lloyd(x, start, 15, False)
    assert result.n_iter == n_iter == 15
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.objective, objective, rtol=1e-5)
    assert sum(s == len(x) for s in result.searched) > result.n_iter // 2
