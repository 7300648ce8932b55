"""The report's figures: cluster sizes, a 2-D map of embeddings, silhouettes per cluster, and
labels x clusters, readable from a handful of clusters to a few hundred.

Each ``plot_*`` function returns a Matplotlib `Figure` (object API, no pyplot: no global state,
no display backend, nothing left open); `to_png` encodes one as base64 PNG for the HTML.
Figures widen with the number of clusters, and axis labels that would overlap are thinned
(`fit_tick_labels`) using their real rendered extents, so no two labels ever collide.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Sequence

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from udl.evaluate import Contingency

__all__ = [
    "WIDE_INCHES",
    "diagonal_order",
    "fit_tick_labels",
    "plot_confusion",
    "plot_map",
    "plot_silhouette",
    "plot_sizes",
    "to_png",
]

MAX_CONFUSION_CLASSES = 60
MAX_CONFUSION_CLUSTERS = 200
# Beyond this many clusters a figure takes the page's full width (WIDE_INCHES at 100 dpi).
WIDE_FROM = 30
WIDE_INCHES = 10.5
# Up to WIDE_FROM clusters, two figures side by side (each half the page, ~550 px) unscaled.
NARROW_INCHES = 5.0
MAX_MAP_LABELS = 80
TICK_FONT = 7
# Pixels kept free between two neighbouring tick labels.
LABEL_GAP = 2.0


def to_png(fig: Figure) -> str:
    """The figure as a base64 PNG at 100 dpi (one inch = 100 pixels)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas, so text can be measured before it is saved."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _width(n: int) -> float:
    return WIDE_INCHES if n > WIDE_FROM else NARROW_INCHES


def _overlaps(box: Bbox, kept: Sequence[Bbox]) -> bool:
    return any(box.padded(LABEL_GAP / 2).overlaps(other) for other in kept)


def fit_tick_labels(
    fig: Figure, axis: Axis, positions: Sequence[float], labels: Sequence[str]
) -> None:
    """Set ticks at `positions`, keeping only labels that do not overlap one kept before.

    Labels are measured as drawn; earlier labels win, so pass the most important first (the
    largest clusters, or axis order for a uniform thinning).
    """
    axis.set_ticks(list(positions), list(labels))
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    kept_boxes: list[Bbox] = []
    kept: list[int] = []
    for i, label in enumerate(axis.get_ticklabels()):
        box = label.get_window_extent(renderer)
        if not _overlaps(box, kept_boxes):
            kept_boxes.append(box)
            kept.append(i)
    axis.set_ticks([positions[i] for i in kept], [labels[i] for i in kept])


def plot_sizes(cluster_ids: Sequence[int], sizes: Sequence[int]) -> Figure:
    """Bar chart of cluster sizes, in the given order (largest first).

    Args:
        cluster_ids: the clusters' ids.
        sizes: their numbers of documents.
    """
    n = len(cluster_ids)
    fig = _figure(_width(n), 3.6)
    ax = fig.subplots()
    ax.bar(range(n), sizes, color="#4a7ab5", width=0.8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.tick_params(axis="x", labelsize=TICK_FONT, labelrotation=90 if n > WIDE_FROM else 0)
    fit_tick_labels(fig, ax.xaxis, range(n), [str(c) for c in cluster_ids])
    ax.set(xlabel="cluster id (largest first)", ylabel="documents", title=f"Cluster sizes ({n})")
    return fig


def _project(x: NDArray[np.float32], metric: str, seed: int) -> tuple[NDArray, str]:
    """2-D points: UMAP when the optional `umap` package is installed (it keeps local
    neighbourhoods, which PCA flattens), PCA otherwise."""
    if importlib.util.find_spec("umap") is not None:
        import umap

        distance = "cosine" if metric == "cosine" else "euclidean"
        return umap.UMAP(n_components=2, metric=distance, random_state=seed).fit_transform(
            x
        ), "UMAP"
    return PCA(n_components=2, random_state=seed).fit_transform(x), "PCA"


def _label_medians(fig: Figure, ax: Axes, points: NDArray, clusters: NDArray[np.int64]) -> int:
    """Write each cluster's id at the median of its points, largest clusters first, skipping
    ids that would cover one already written; returns how many were written."""
    ids, counts = np.unique(clusters[clusters >= 0], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")][:MAX_MAP_LABELS]
    renderer = fig.canvas.get_renderer()
    kept: list[Bbox] = []
    outline = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for cluster in order:
        x, y = np.median(points[clusters == cluster], axis=0)
        text = ax.text(x, y, str(cluster), fontsize=8, weight="bold", ha="center", va="center")
        text.set_path_effects(outline)
        box = text.get_window_extent(renderer)
        if _overlaps(box, kept):
            text.remove()
        else:
            kept.append(box)
    return len(kept)


def plot_map(x: NDArray[np.float32], clusters: NDArray[np.int64], metric: str, seed: int) -> Figure:
    """2-D map of embeddings coloured by cluster, noise in grey, cluster ids at their medians.

    Args:
        x: float32 array (n, dim), a sample of embeddings.
        clusters: int array (n,), their cluster ids (-1 = noise).
        metric: the clustering's metric, ``"cosine"`` or ``"l2"``.
        seed: seeds the projection.
    """
    points, method = _project(x, metric, seed)
    k = len(np.unique(clusters[clusters >= 0]))
    fig = _figure(WIDE_INCHES, 8) if k > WIDE_FROM else _figure(NARROW_INCHES, 4.4)
    ax = fig.subplots()
    noise = clusters < 0
    if noise.any():
        ax.scatter(points[noise, 0], points[noise, 1], s=3, c="#bbbbbb", label="noise (-1)")
        ax.legend(loc="upper right", fontsize=TICK_FONT, markerscale=3)
    ax.scatter(points[~noise, 0], points[~noise, 1], s=3, c=clusters[~noise] % 20, cmap="tab20")
    ax.set(xticks=[], yticks=[])
    fig.draw_without_rendering()
    shown = _label_medians(fig, ax, points, clusters)
    labelled = "every cluster" if shown == k else f"the {shown} largest of {k} clusters"
    ax.set_title(
        f"Embedding map ({method}, {len(x)} documents)\nnumbers: id of {labelled} at its median",
        fontsize=9,
    )
    return fig


def plot_silhouette(labels: NDArray[np.int64], silhouettes: NDArray[np.float64]) -> Figure:
    """Silhouette plot: one band per cluster (width = its sampled documents), each document's
    silhouette as a bar, sorted, the mean dashed.

    Args:
        labels: int array (n,), cluster ids of the sampled clustered points.
        silhouettes: float array (n,), their silhouettes.
    """
    clusters, sizes = np.unique(labels, return_counts=True)
    gap = max(1, len(labels) // 400)
    starts = np.concatenate([[0], np.cumsum(sizes + gap)[:-1]])
    fig = _figure(_width(len(clusters)), 4.2)
    ax = fig.subplots()
    ax.set_xlim(-1, max(int(starts[-1] + sizes[-1]) if len(sizes) else 1, 1))
    ax.tick_params(axis="x", labelsize=TICK_FONT, labelrotation=90 if len(clusters) > 15 else 0)
    # Ticks are fitted before the bands are drawn: measuring them draws the figure.
    fit_tick_labels(fig, ax.xaxis, starts + (sizes - 1) / 2, [str(c) for c in clusters])
    for i, (cluster, start) in enumerate(zip(clusters, starts, strict=True)):
        values = -np.sort(-silhouettes[labels == cluster])
        ax.fill_between(np.arange(start, start + len(values)), 0, values, color=f"C{i % 10}", lw=0)
    if len(silhouettes):
        ax.axhline(float(silhouettes.mean()), color="#b42318", ls="--", lw=1)
    ax.set(
        xlabel="cluster id",
        ylabel="silhouette",
        title=f"Silhouette per cluster ({len(labels)} sampled documents; mean dashed)",
    )
    return fig


def diagonal_order(counts: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row and column orders that put a contingency table's mass on its diagonal.

    Rows (classes) go largest first. Each column (cluster) joins the row it shares most
    documents with; within a row's group, the cluster the Hungarian matching pairs with that
    row comes first, then the others by size. Unmatched rows keep their place.

    Args:
        counts: int array (n_rows, n_cols).

    Returns:
        (rows, cols): index arrays, a permutation of each axis.
    """
    from scipy.optimize import linear_sum_assignment

    rows = np.argsort(-counts.sum(axis=1), kind="stable")
    rank = np.empty(len(rows), np.int64)
    rank[rows] = np.arange(len(rows))
    matched_rows, matched_cols = linear_sum_assignment(counts, maximize=True)
    owner = counts.argmax(axis=0)
    owner[matched_cols] = matched_rows
    first = np.zeros(counts.shape[1], bool)
    first[matched_cols] = True
    cols = np.lexsort((-counts.sum(axis=0), ~first, rank[owner]))
    return rows, cols


def plot_confusion(contingency: Contingency) -> Figure:
    """Heat map of labels x clusters (share of each label), ordered along the diagonal
    (`diagonal_order`); the largest classes and clusters when there are very many.

    Args:
        contingency: documents per (class, cluster), at least one of each.
    """
    counts = contingency.counts
    keep_rows = np.sort(np.argsort(-counts.sum(axis=1), kind="stable")[:MAX_CONFUSION_CLASSES])
    keep_cols = np.sort(np.argsort(-counts.sum(axis=0), kind="stable")[:MAX_CONFUSION_CLUSTERS])
    counts = counts[np.ix_(keep_rows, keep_cols)]
    rows, cols = diagonal_order(counts)
    shares = counts[np.ix_(rows, cols)].astype(np.float64)
    shares /= np.maximum(shares.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = shares.shape
    fig = _figure(_width(max(n_cols, n_rows)), max(3.0, 0.17 * n_rows + 1.6))
    ax = fig.subplots()
    image = ax.imshow(shares, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="none")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    ax.tick_params(axis="both", labelsize=TICK_FONT)
    ax.tick_params(axis="x", labelrotation=90 if n_cols > 15 else 0)
    classes = [contingency.classes[i][:30] for i in keep_rows[rows]]
    fit_tick_labels(fig, ax.yaxis, range(n_rows), classes)
    ids = [str(c) for c in contingency.clusters[keep_cols[cols]]]
    fit_tick_labels(fig, ax.xaxis, range(n_cols), ids)
    shown = "" if (n_rows, n_cols) == contingency.counts.shape else " (largest only)"
    ax.set(xlabel="cluster id", title=f"Labels × clusters, share of each label{shown}")
    return fig
