"""A single self-contained HTML report (inline CSS, figures as embedded PNG) and metrics.json."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from jinja2 import Environment
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from udl import schema as S
from udl.config import PipelineConfig
from udl.describe import Description, describe_clusters
from udl.embed import read_embeddings
from udl.evaluate import evaluate_run
from udl.storage import RunLayout, dataset_parts, sample_rows, write_json_atomic

__all__ = ["build_report", "figure_confusion", "figure_map", "figure_sizes", "render_report"]

log = logging.getLogger(__name__)

MAP_SAMPLE = 5000

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>udl report · {{ run_id }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border:1px solid #ddd;padding:.35rem .5rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.kw{color:#0b5394}.doc{color:#444;font-size:.85rem;margin:.15rem 0}.muted{color:#777}
figure{margin:1rem 0}img{max-width:100%}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
</style></head><body>
<h1>Clustering report</h1>
<p class="muted">run <b>{{ run_id }}</b> · {{ metrics.n_docs }} documents · {{ metrics.n_clusters }} clusters
{% if metrics.n_noise %}· {{ metrics.n_noise }} noise{% endif %} · {{ metrics.algorithm }} ({{ metrics.metric }})</p>

<section id="metrics"><h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>about</th></tr>
{% for name, value, about in metric_rows %}<tr><td>{{ name }}</td><td class="num">{{ value }}</td><td class="muted">{{ about }}</td></tr>{% endfor %}
</table>
{% if selection %}<h3>Choice of k</h3>
<table><tr><th>k</th><th>silhouette</th><th>Calinski-Harabasz</th><th>Davies-Bouldin</th><th>rank sum</th></tr>
{% for c in selection %}<tr{% if c.k == metrics.k %} style="font-weight:bold"{% endif %}><td class="num">{{ c.k }}</td><td class="num">{{ "%.4f"|format(c.silhouette) }}</td><td class="num">{{ "%.1f"|format(c.calinski_harabasz) }}</td><td class="num">{{ "%.4f"|format(c.davies_bouldin) }}</td><td class="num">{{ c.rank_sum }}</td></tr>{% endfor %}
</table>{% endif %}
{% if timings %}<h3>Timings</h3><table><tr><th>step</th><th>seconds</th></tr>
{% for step, seconds in timings.items() %}<tr><td>{{ step }}</td><td class="num">{{ "%.2f"|format(seconds) }}</td></tr>{% endfor %}</table>{% endif %}
</section>

<section id="figures"><h2>Figures</h2><div class="grid">
{% for title, png in figures %}<figure><img alt="{{ title }}" src="data:image/png;base64,{{ png }}"><figcaption>{{ title }}</figcaption></figure>{% endfor %}
</div></section>

<section id="clusters"><h2>Clusters</h2>
<table><tr><th>cluster</th><th>size</th><th>share</th><th>keywords</th><th>representative documents</th><th>mean anomaly</th></tr>
{% for c in description.clusters %}<tr><td class="num">{{ c.cluster_id }}</td><td class="num">{{ c.size }}</td><td class="num">{{ "%.1f%%"|format(100 * c.share) }}</td>
<td class="kw">{{ c.keywords|join(", ") }}</td>
<td>{% for e in c.examples %}<div class="doc">{{ e.text|truncate(240) }}</div>{% endfor %}</td>
<td class="num">{{ "%.3f"|format(c.mean_anomaly) }}</td></tr>{% endfor %}
</table></section>

<section id="outliers"><h2>Noise and outliers</h2>
{% if description.noise %}<p>{{ description.noise.size }} documents are noise (cluster -1). Examples:</p>
{% for e in description.noise.examples %}<div class="doc">{{ e.text|truncate(240) }}</div>{% endfor %}{% endif %}
<p>{{ description.n_outliers_flagged }} documents have an anomaly score (reconstruction error) of at least
{{ "%.3f"|format(description.anomaly_threshold) }}. The most anomalous:</p>
<table><tr><th>doc_id</th><th>anomaly</th><th>text</th></tr>
{% for e in description.outliers %}<tr><td>{{ e.doc_id }}</td><td class="num">{{ "%.3f"|format(e.score) }}</td><td class="doc">{{ e.text|truncate(240) }}</td></tr>{% endfor %}
</table></section>
</body></html>
"""

METRIC_NOTES = {
    "silhouette": "−1…1, higher is better (sample)",
    "calinski_harabasz": "higher is better (sample)",
    "davies_bouldin": "≥ 0, lower is better (sample)",
    "nmi": "normalised mutual information with the labels, 0…1",
    "ari": "adjusted Rand index with the labels, ~0 for chance, 1 perfect",
    "acc": "accuracy under the best cluster→label matching",
    "homogeneity": "each cluster holds one label, 0…1",
    "completeness": "each label sits in one cluster, 0…1",
    "metrics_sample": "documents sampled for the internal scores",
}


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_sizes(description: Description) -> str:
    """Bar chart of cluster sizes, largest first (base64 PNG)."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    clusters = description.clusters
    ax.bar(range(len(clusters)), [c.size for c in clusters], color="#4a7ab5")
    step = max(1, len(clusters) // 20)
    ax.set_xticks(range(0, len(clusters), step), [str(c.cluster_id) for c in clusters][::step])
    ax.set_xlabel("cluster")
    ax.set_ylabel("documents")
    return _png(fig)


def figure_map(x: NDArray[np.float32], labels: NDArray[np.int32], seed: int) -> str:
    """2-D PCA map of a sample of embeddings, coloured by cluster (noise in grey)."""
    points = PCA(n_components=2, random_state=seed).fit_transform(x)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    noise = labels < 0
    ax.scatter(points[noise, 0], points[noise, 1], s=3, c="#bbbbbb", label="noise")
    ax.scatter(points[~noise, 0], points[~noise, 1], s=3, c=labels[~noise], cmap="tab20")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def figure_confusion(labels_true: NDArray, labels_pred: NDArray) -> str:
    """Heat map of label × cluster counts, rows normalised."""
    classes, true_idx = np.unique(labels_true, return_inverse=True)
    clusters, pred_idx = np.unique(labels_pred, return_inverse=True)
    counts = np.zeros((len(classes), len(clusters)))
    np.add.at(counts, (true_idx, pred_idx), 1)
    counts /= counts.sum(axis=1, keepdims=True)
    fig = Figure(figsize=(6, max(2.5, 0.25 * len(classes))))
    ax = fig.subplots()
    ax.imshow(counts, aspect="auto", cmap="Blues")
    ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=7)
    step = max(1, len(clusters) // 20)
    ax.set_xticks(range(0, len(clusters), step), [str(c) for c in clusters][::step], fontsize=7)
    ax.set_xlabel("cluster")
    return _png(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def render_report(
    path: Path,
    run_id: str,
    metrics: dict[str, Any],
    description: Description,
    figures: list[tuple[str, str]],
) -> None:
    """Write the self-contained report to `path` (no network needed to view it)."""
    rows = [
        (name, _fmt(metrics.get(name)), note)
        for name, note in METRIC_NOTES.items()
        if name in metrics
    ]
    html = (
        Environment(autoescape=True)
        .from_string(TEMPLATE)
        .render(
            run_id=run_id,
            metrics=metrics,
            metric_rows=rows,
            selection=metrics.get("selection", {}).get("candidates", []),
            timings=metrics.get("timings", {}),
            description=description,
            figures=figures,
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)


def _figure_sample(
    layout: RunLayout, size: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.int32], NDArray | None]:
    """Embeddings, cluster ids and labels (if any) of a seeded sample of documents."""
    emb_parts, assign_parts = dataset_parts(layout.embeddings), dataset_parts(layout.assignments)
    has_label = S.LABEL in pq.read_schema(assign_parts[0]).names
    xs, clusters, labels = [], [], []
    for i, rows in sample_rows(emb_parts, size, seed):
        xs.append(read_embeddings(emb_parts[i])[1][rows])
        columns = [S.CLUSTER_ID] + ([S.LABEL] if has_label else [])
        table = pq.read_table(assign_parts[i], columns=columns).take(rows)
        clusters.append(table.column(S.CLUSTER_ID).to_numpy())
        if has_label:
            labels.append(table.column(S.LABEL).to_numpy(zero_copy_only=False))
    return (
        np.concatenate(xs),
        np.concatenate(clusters),
        np.concatenate(labels) if has_label else None,
    )


def build_report(
    layout: RunLayout, config: PipelineConfig, steps: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], Description]:
    """Evaluate a finished run, write ``report/metrics.json`` and ``report/index.html``.

    Args:
        layout: the run's folders.
        config: the run's configuration.
        steps: step records (ingest … cluster) with their ``seconds`` and chosen values.

    Returns:
        The metrics written and the cluster description (for Prefect artifacts).
    """
    cluster = steps["cluster"]
    metrics: dict[str, Any] = evaluate_run(
        layout.assignments,
        layout.embeddings,
        cluster["metric"],
        config.report.metrics_sample,
        config.runtime.seed,
    )
    metrics.update(
        {key: cluster[key] for key in ("algorithm", "metric", "k", "eps", "min_samples")}
    )
    metrics["selection"] = cluster.get("selection", {})
    metrics["n_rejected"] = steps["ingest"]["rows_rejected"]
    metrics["timings"] = {step: record["seconds"] for step, record in steps.items()}
    description = describe_clusters(
        layout.assignments,
        layout.corpus,
        layout.features,
        layout.embeddings,
        layout.models,
        config.preprocess.n_features,
        config.report.n_keywords,
        config.report.n_examples,
        config.report.outlier_fraction,
    )
    x, clusters, labels = _figure_sample(layout, MAP_SAMPLE, config.runtime.seed)
    figures = [
        ("Cluster sizes", figure_sizes(description)),
        ("Embedding map (PCA of a sample)", figure_map(x, clusters, config.runtime.seed)),
    ]
    if labels is not None and (known := labels != None).any():
        figures.append(
            (
                "Labels × clusters (sample, rows normalised)",
                figure_confusion(labels[known].astype(str), clusters[known]),
            )
        )
    write_json_atomic(layout.report / "metrics.json", metrics)
    render_report(layout.report / "index.html", layout.run_id, metrics, description, figures)
    log.info("report written to %s", layout.report)
    return metrics, description
