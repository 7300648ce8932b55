"""The report's figures as base64 PNG: cluster sizes, a 2-D map of embeddings, silhouettes
per cluster, and labels x clusters.

Matplotlib's object API (`Figure`, no pyplot), so no global state, no display backend and no
figure left open between calls.
"""

from __future__ import annotations

import base64
import importlib.util
import io

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from udl.describe import Description
from udl.evaluate import Contingency

__all__ = ["figure_confusion", "figure_map", "figure_silhouette", "figure_sizes"]

MAX_CONFUSION_CLASSES = 40
MAX_CONFUSION_CLUSTERS = 60


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_sizes(description: Description) -> str:
    """Bar chart of cluster sizes, largest first (base64 PNG).

    Args:
        description: the clusters, largest first.
    """
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    clusters = description.clusters
    ax.bar(range(len(clusters)), [c.size for c in clusters], color="#4a7ab5")
    step = max(1, len(clusters) // 20)
    ax.set_xticks(range(0, len(clusters), step), [str(c.cluster_id) for c in clusters][::step])
    ax.set(xlabel="cluster", ylabel="documents", title="Cluster sizes")
    return _png(fig)


def figure_map(x: NDArray[np.float32], clusters: NDArray[np.int64], metric: str, seed: int) -> str:
    """2-D map of embeddings coloured by cluster, noise in grey (base64 PNG).

    UMAP when the optional `umap` package is installed (it keeps local neighbourhoods, which
    PCA flattens), PCA otherwise.

    Args:
        x: float32 array (n, dim), a sample of embeddings.
        clusters: int array (n,), their cluster ids (-1 = noise).
        metric: the clustering's metric, ``"cosine"`` or ``"l2"``.
        seed: seeds the projection.
    """
    if importlib.util.find_spec("umap") is not None:
        import umap

        method = "UMAP"
        distance = "cosine" if metric == "cosine" else "euclidean"
        points = umap.UMAP(n_components=2, metric=distance, random_state=seed).fit_transform(x)
    else:
        method = "PCA"
        points = PCA(n_components=2, random_state=seed).fit_transform(x)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    noise = clusters < 0
    ax.scatter(points[noise, 0], points[noise, 1], s=3, c="#bbbbbb")
    ax.scatter(points[~noise, 0], points[~noise, 1], s=3, c=clusters[~noise] % 20, cmap="tab20")
    ax.set(xticks=[], yticks=[], title=f"Embedding map ({method}, {len(x)} documents)")
    return _png(fig)


def figure_silhouette(labels: NDArray[np.int64], silhouettes: NDArray[np.float64]) -> str:
    """Silhouette plot: each cluster's sorted per-point silhouettes, the mean dashed.

    Args:
        labels: int array (n,), cluster ids of the sampled clustered points.
        silhouettes: float array (n,), their silhouettes.
    """
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    y = 0
    for i, cluster in enumerate(np.unique(labels)):
        values = np.sort(silhouettes[labels == cluster])
        ax.fill_betweenx(np.arange(y, y + len(values)), 0, values, color=f"C{i % 10}", lw=0)
        # x in axes units: the cluster id sits left of the axes, clear of negative values.
        ax.text(
            -0.01,
            y + len(values) / 2,
            str(cluster),
            fontsize=7,
            ha="right",
            va="center",
            transform=ax.get_yaxis_transform(),
        )
        y += len(values) + 2
    if len(silhouettes):
        ax.axvline(float(silhouettes.mean()), color="#b42318", ls="--", lw=1)
    ax.set(yticks=[], xlabel="silhouette", title=f"Silhouette per cluster ({len(labels)} docs)")
    return _png(fig)


def figure_confusion(contingency: Contingency) -> str:
    """Heat map of labels × clusters (rows normalised), clusters ordered by their main label
    so a good clustering shows a diagonal; the largest classes and clusters when there are many.

    Args:
        contingency: documents per (class, cluster), at least one of each.
    """
    counts = contingency.counts
    rows = np.sort(np.argsort(-counts.sum(axis=1), kind="stable")[:MAX_CONFUSION_CLASSES])
    cols = np.argsort(-counts.sum(axis=0), kind="stable")[:MAX_CONFUSION_CLUSTERS]
    counts = counts[np.ix_(rows, cols)].astype(np.float64)
    order = np.lexsort((-counts.max(axis=0), counts.argmax(axis=0)))
    counts, cols = counts[:, order], cols[order]
    counts /= np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(6, max(2.5, 0.22 * len(rows) + 1)))
    ax = fig.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_yticks(range(len(rows)), [contingency.classes[r][:30] for r in rows], fontsize=7)
    ax.set_xticks(range(len(cols)), [str(contingency.clusters[c]) for c in cols], fontsize=6)
    ax.set(xlabel="cluster", title="Labels × clusters (share of each label)")
    return _png(fig)
