"""The report's figures stay readable from 5 to 200 clusters (issue 22): no two axis labels
overlap (measured on the rendered text, as Matplotlib draws it), figures keep a sane size, the
heat map puts its mass on the diagonal, and cluster ids on the map do not cover each other.
"""

from __future__ import annotations

import base64
import io
from itertools import combinations

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Text
from sklearn.metrics import silhouette_samples

from udl.evaluate import Contingency
from udl.figures import (
    WIDE_INCHES,
    diagonal_order,
    plot_confusion,
    plot_map,
    plot_silhouette,
    plot_sizes,
    to_png,
)

KS = [5, 50, 150, 200]


def _clusters(k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3,000 points in 16-d around k centres with skewed sizes; (x, cluster ids)."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.5, k) + 1
    ids = rng.choice(k, 3000, p=weights / weights.sum())
    ids[:k] = np.arange(k)  # every cluster has a member
    centres = rng.normal(scale=4, size=(k, 16))
    return (centres[ids] + rng.normal(size=(3000, 16))).astype(np.float32), ids


def _overlapping(texts: list[Text], fig: Figure) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
    return [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]


def _check_readable(fig: Figure) -> None:
    fig.draw_without_rendering()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible()]
            assert not _overlapping(labels, fig), axis.axis_name
    width, height = fig.get_size_inches()
    assert width <= WIDE_INCHES and 0.2 <= height / width <= 1.2
    png = imread(io.BytesIO(base64.b64decode(to_png(fig))))
    assert png.shape[1] <= 100 * WIDE_INCHES + 50  # fits the page (1,150 px) unscaled


@pytest.mark.parametrize("k", KS)
def test_sizes_labels_never_overlap_22(k: int) -> None:
    _, ids = _clusters(k)
    sizes = np.bincount(ids, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    fig = plot_sizes(order.tolist(), sizes[order].tolist())
    _check_readable(fig)
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown[0] == str(order[0])  # the largest cluster is always named
    assert len(shown) == k if k <= 50 else len(shown) >= k // 4


@pytest.mark.parametrize("k", KS)
def test_silhouette_labels_never_overlap_22(k: int) -> None:
    x, ids = _clusters(k)
    _check_readable(plot_silhouette(ids, silhouette_samples(x, ids)))


@pytest.mark.parametrize("k", KS)
def test_heat_map_labels_never_overlap_22(k: int) -> None:
    _, ids = _clusters(k)
    n_classes = max(2, min(k // 3, 45))
    classes = ids % n_classes
    counts = np.zeros((n_classes, k), np.int64)
    np.add.at(counts, (classes, ids), 1)
    names = [f"class-{i}" for i in range(n_classes)]
    fig = plot_confusion(Contingency(names, np.arange(k), counts))
    _check_readable(fig)
    assert len(fig.axes[0].get_yticklabels()) == n_classes  # every class is named


@pytest.mark.parametrize("k", KS)
def test_map_cluster_ids_never_overlap_22(k: int) -> None:
    x, ids = _clusters(k)
    ids[::50] = -1  # some noise
    fig = plot_map(x, ids, "l2", seed=0)
    _check_readable(fig)
    ax = fig.axes[0]
    written = [t.get_text() for t in ax.texts]
    assert written and not _overlapping(list(ax.texts), fig)
    largest = np.bincount(ids[ids >= 0]).argmax()
    assert str(largest) in written
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["noise (-1)"]


def test_heat_map_order_is_diagonal_22() -> None:
    """A shuffled block table comes back with each class's clusters on the diagonal."""
    rng = np.random.default_rng(0)
    blocks = np.kron(np.diag([50, 40, 30, 20]), np.ones((1, 2), np.int64)) + rng.integers(
        0, 3, (4, 8)
    )
    rows_perm, cols_perm = rng.permutation(4), rng.permutation(8)
    shuffled = blocks[np.ix_(rows_perm, cols_perm)]
    rows, cols = diagonal_order(shuffled)
    ordered = shuffled[np.ix_(rows, cols)]
    np.testing.assert_array_equal(ordered.argmax(axis=1), [0, 2, 4, 6])  # matched cluster first
    np.testing.assert_array_equal(ordered.argmax(axis=0), [0, 0, 1, 1, 2, 2, 3, 3])
    assert sorted(rows) == list(range(4)) and sorted(cols) == list(range(8))
