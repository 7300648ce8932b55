"""The run report: ``report/metrics.json`` and one self-contained ``report/index.html``.

Memory does not grow with the corpus: one seeded sample (``report.metrics_sample`` documents)
feeds the internal scores, the map, the silhouette plot and the anomaly threshold; everything
else (sizes, keywords, representatives, outliers, label scores) comes from one streamed pass
over the run's aligned parts. The HTML (template ``udl/templates/report.html``) inlines its
CSS and figures (`udl.figures`), is autoescaped (document text is untrusted) and needs no
network to view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
from jinja2 import Environment, PackageLoader
from numpy.typing import NDArray

from udl import schema as S
from udl.config import PipelineConfig
from udl.describe import ClusterDescriber, Description
from udl.evaluate import (
    Contingency,
    ContingencyCounter,
    InternalScores,
    compare_runs,
    contingency_scores,
    internal_scores,
)
from udl.features import read_csr, read_vocabulary
from udl.figures import figure_confusion, figure_map, figure_silhouette, figure_sizes
from udl.storage import RunLayout, dataset_parts, read_json, sample_rows, write_json_atomic

__all__ = ["ReportResult", "build_report", "previous_run"]

log = logging.getLogger(__name__)

HEADLINE = ("silhouette", "calinski_harabasz", "davies_bouldin", "nmi", "ari", "acc")
METRIC_NOTES = {
    "silhouette": "−1…1, higher is better (sample, the clustering's metric)",
    "calinski_harabasz": "higher is better (sample)",
    "davies_bouldin": "≥ 0, lower is better (sample)",
    "nmi": "normalised mutual information with the labels, 0…1",
    "ari": "adjusted Rand index with the labels, ~0 for chance, 1 perfect",
    "acc": "accuracy under the best one-to-one cluster→label matching (Hungarian)",
    "homogeneity": "each cluster holds one label, 0…1",
    "completeness": "each label sits in one cluster, 0…1",
}
# The clustering step's centroids (udl.cluster.assign.CENTROIDS_FILE), named here rather than
# imported so that the report does not load FAISS and the clustering code.
CENTROIDS_FILE = "centroids.npy"


@dataclass(frozen=True)
class _Sample:
    """A seeded sample of documents: embeddings (n, dim), their cluster ids and anomaly scores."""

    x: NDArray[np.float32]
    clusters: NDArray[np.int64]
    anomaly: NDArray[np.float32]


@dataclass(frozen=True)
class ReportResult:
    """What `build_report` wrote, with what the Prefect artifacts need.

    Attributes:
        run_id: the run reported on.
        metrics: the content of ``metrics.json``.
        description: per-cluster summaries, noise and outliers.
        html_path: the report, ``report/index.html``.
        metrics_path: ``report/metrics.json``.
    """

    run_id: str
    metrics: dict[str, Any]
    description: Description
    html_path: Path
    metrics_path: Path

    def summary_markdown(self) -> str:
        """Headline metrics (with changes since the previous run) and a link to the report."""
        m = self.metrics
        deltas = (m.get("comparison") or {}).get("metric_deltas", {})
        lines = [
            f"# udl run `{self.run_id}`",
            (
                f"{m['n_docs']} documents, {m['n_clusters']} clusters, {m['n_noise']} noise "
                f"({m['algorithm']}, {m['metric']}); {m['n_rejected']} rows rejected."
            ),
            "",
            "| metric | value | change since previous run |",
            "| --- | --- | --- |",
        ]
        for name in HEADLINE:
            if m.get(name) is not None:
                change = f"{deltas[name]['delta']:+.4f}" if name in deltas else ""
                lines.append(f"| {name} | {m[name]:.4f} | {change} |")
        if changes := m.get("comparison"):
            lines += ["", f"Compared with run `{changes['previous_run_id']}`: {_changes(changes)}"]
        lines += [
            "",
            f"Report: [{self.html_path.name}]({self.html_path.resolve().as_uri()})  ",
            f"Run folder: `{self.html_path.parent.parent}`",
        ]
        return "\n".join(lines)

    def cluster_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """One row per cluster (largest first): id, size, share and keywords."""
        return [
            {
                "cluster": c.cluster_id,
                "size": c.size,
                "share": round(c.share, 4),
                "keywords": ", ".join(c.keywords),
            }
            for c in self.description.clusters[:limit]
        ]


def _changes(comparison: dict[str, Any]) -> str:
    if comparison["matched_by"] == "none":
        return f"clusters not compared ({comparison['note']})."
    return (
        f"{len(comparison['appeared'])} clusters appeared, {len(comparison['vanished'])} "
        f"vanished, {len(comparison['moved'])} moved."
    )


def previous_run(layout: RunLayout) -> RunLayout | None:
    """The run ``<output_dir>/latest`` points to, when it is another run with a report.

    Call it before this run marks itself latest. If it already has (the report is rebuilt
    after a resume), the run that the first report compared with is used again.
    """
    if not layout.latest.is_dir():
        return None
    run_id = layout.latest.resolve().name
    if run_id == layout.run_id:
        own = layout.report / "metrics.json"
        earlier = (read_json(own).get("comparison") or {}) if own.exists() else {}
        run_id = earlier.get("previous_run_id", layout.run_id)
    previous = RunLayout(layout.output_dir, run_id)
    if run_id == layout.run_id or not (previous.report / "metrics.json").exists():
        return None
    return previous


def _read_sample(layout: RunLayout, size: int, seed: int) -> _Sample:
    """Reads only the sampled rows' embedding, anomaly and cluster columns, part by part."""
    emb_parts, assign_parts = dataset_parts(layout.embeddings), dataset_parts(layout.assignments)
    xs, clusters, anomaly = [], [], []
    for i, rows in sample_rows(emb_parts, size, seed):
        emb = pq.read_table(emb_parts[i], columns=[S.EMBEDDING, S.ANOMALY]).take(rows)
        vectors = emb.column(S.EMBEDDING).combine_chunks()
        xs.append(vectors.flatten().to_numpy().reshape(len(rows), vectors.type.list_size))
        anomaly.append(emb.column(S.ANOMALY).to_numpy())
        assign = pq.read_table(assign_parts[i], columns=[S.CLUSTER_ID]).take(rows)
        clusters.append(assign.column(S.CLUSTER_ID).to_numpy().astype(np.int64))
    return _Sample(np.concatenate(xs), np.concatenate(clusters), np.concatenate(anomaly))


def _stream(layout: RunLayout, describer: ClusterDescriber, n_features: int) -> Contingency | None:
    """One pass over the aligned parts; returns the label contingency of labelled runs."""
    assign_parts = dataset_parts(layout.assignments)
    has_label = S.LABEL in pq.read_schema(assign_parts[0]).names
    counter = ContingencyCounter() if has_label else None
    columns = [S.DOC_ID, S.CLUSTER_ID, S.DISTANCE] + ([S.LABEL] if has_label else [])
    for assign_part, corpus_part, features_part, emb_part in zip(
        assign_parts,
        dataset_parts(layout.corpus),
        dataset_parts(layout.features),
        dataset_parts(layout.embeddings),
        strict=True,
    ):
        assign = pq.read_table(assign_part, columns=columns)
        clusters = assign.column(S.CLUSTER_ID).to_numpy()
        describer.update(
            doc_ids=assign.column(S.DOC_ID),
            texts=pq.read_table(corpus_part, columns=[S.TEXT]).column(S.TEXT),
            clusters=clusters,
            distance=assign.column(S.DISTANCE).to_numpy(),
            anomaly=pq.read_table(emb_part, columns=[S.ANOMALY]).column(S.ANOMALY).to_numpy(),
            tfidf=read_csr(pq.read_table(features_part, columns=[S.INDICES, S.VALUES]), n_features),
        )
        if counter is not None:
            counter.update(assign.column(S.LABEL), clusters)
    return counter.result() if counter is not None else None


def _anomaly_threshold(sample: NDArray[np.float32], fraction: float) -> float:
    """Score of the top `fraction` of the sample (exact when the sample is the corpus)."""
    n_flagged = round(fraction * len(sample))
    return float(np.sort(sample)[-n_flagged]) if n_flagged else float("inf")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def _delta_rows(comparison: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(name, previous, current, change, verdict) per compared metric; counts get no verdict."""
    rows = []
    for name, d in comparison["metric_deltas"].items():
        delta, verdict = d["delta"], ""
        if name in METRIC_NOTES and delta:
            verdict = "better" if (delta > 0) == (name != "davies_bouldin") else "worse"
        change = f"{delta:+.4f}" if isinstance(delta, float) else f"{delta:+d}"
        rows.append((name, _fmt(d["previous"]), _fmt(d["current"]), change, verdict))
    return rows


MATCHED_BY = {
    "alignment": "the clustering step's alignment (models/alignment.json)",
    "centroids": (
        "Hungarian matching of the two runs' centroids (meaningful when both runs embed with "
        "the same encoder)"
    ),
    "none": "nothing",
}


def _render(
    result: ReportResult,
    figures: list[tuple[str, str]],
    silhouettes: dict[int, float],
    outlier_fraction: float,
) -> None:
    """Write the HTML with autoescaping on (document text is untrusted)."""
    metrics, comparison = result.metrics, result.metrics.get("comparison")
    env = Environment(loader=PackageLoader("udl", "templates"), autoescape=True)
    env.filters["fmt"] = _fmt
    html = env.get_template("report.html").render(
        run_id=result.run_id,
        metrics=metrics,
        headline=HEADLINE,
        metric_rows=[
            (name, _fmt(metrics.get(name)), note)
            for name, note in METRIC_NOTES.items()
            if name in metrics
        ],
        selection=metrics["selection"].get("candidates", []),
        comparison=comparison,
        delta_rows=_delta_rows(comparison) if comparison else [],
        matched_by_text=MATCHED_BY[comparison["matched_by"] if comparison else "none"],
        figures=figures,
        description=result.description,
        silhouettes=silhouettes,
        outlier_fraction=outlier_fraction,
    )
    tmp = result.html_path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(result.html_path)


def _read_alignment(layout: RunLayout, previous_run_id: str) -> dict[int, int | None] | None:
    """The clustering step's ``models/alignment.json`` when it aligns with `previous_run_id`.

    Expected content: ``{"previous_run_id": "...", "mapping": {"<current id>": <previous id or
    null>}}``; an alignment made against another run is ignored.
    """
    path = layout.models / "alignment.json"
    if not path.exists():
        return None
    alignment = read_json(path)
    if alignment.get("previous_run_id", previous_run_id) != previous_run_id:
        log.info("alignment.json is against run %s, not the previous one", previous_run_id)
        return None
    return {int(c): None if p is None else int(p) for c, p in alignment["mapping"].items()}


def _centroids(layout: RunLayout) -> NDArray[np.float32]:
    """A run's centroids (k, dim); an empty (0, 0) array when the run has none saved."""
    path = layout.models / CENTROIDS_FILE
    return np.load(path) if path.exists() else np.zeros((0, 0), np.float32)


def _compare(layout: RunLayout, previous: RunLayout, metrics: dict[str, Any]) -> dict[str, Any]:
    """Read what the comparison with `previous` needs (its metrics, both centroids)."""
    return compare_runs(
        read_json(previous.report / "metrics.json"),
        metrics,
        _centroids(previous),
        _centroids(layout),
        _read_alignment(layout, previous.run_id),
    ) | {"previous_run_id": previous.run_id}


def _figures(
    description: Description,
    sample: _Sample,
    scores: InternalScores,
    contingency: Contingency | None,
    config: PipelineConfig,
    metric: str,
) -> tuple[list[tuple[str, str]], int]:
    """(caption, base64 PNG) of every figure, and how many documents the map shows."""
    seed = config.runtime.seed
    size = min(config.report.map_sample, len(sample.x))
    on_map = np.sort(np.random.default_rng(seed).choice(len(sample.x), size, replace=False))
    figures = [
        ("Cluster sizes (all documents)", figure_sizes(description)),
        (
            "2-D map of a sample of embeddings",
            figure_map(sample.x[on_map], sample.clusters[on_map], metric, seed),
        ),
    ]
    if scores.silhouette is not None:
        figures.append(
            (
                "Silhouette per cluster (sample)",
                figure_silhouette(scores.labels, scores.silhouettes),
            )
        )
    if contingency is not None and contingency.counts.size:
        figures.append(
            ("Labels × clusters (all labelled documents)", figure_confusion(contingency))
        )
    return figures, size


def build_report(
    layout: RunLayout,
    config: PipelineConfig,
    steps: dict[str, dict[str, Any]],
    previous: RunLayout | Literal["latest"] | None = "latest",
) -> ReportResult:
    """Evaluate a finished run, write ``report/metrics.json`` and ``report/index.html``.

    Args:
        layout: the run's folders.
        config: the run's configuration.
        steps: step records (ingest … cluster) with their ``seconds`` and chosen values.
        previous: the run to compare with; ``"latest"`` looks it up (`previous_run`), so call
            this before the run marks itself latest; None compares with nothing.

    Returns:
        The metrics written, the cluster description and the paths of both files.
    """
    report, metric = config.report, steps["cluster"]["metric"]
    sample = _read_sample(layout, report.metrics_sample, config.runtime.seed)
    scores = internal_scores(sample.x, sample.clusters, metric)
    threshold = _anomaly_threshold(sample.anomaly, report.outlier_fraction)
    describer = ClusterDescriber(
        config.preprocess.n_features, threshold, report.n_examples, report.n_outlier_examples
    )
    contingency = _stream(layout, describer, config.preprocess.n_features)
    description = describer.result(read_vocabulary(layout.models), report.n_keywords)
    metrics = _metrics(description, scores, contingency, steps)
    figures, map_size = _figures(description, sample, scores, contingency, config, metric)
    metrics["sample_sizes"] = {
        "internal_metrics": len(sample.x),
        "internal_metrics_clustered": len(scores.labels),
        "anomaly_threshold": len(sample.x),
        "map": map_size,
        "label_metrics": metrics.get("n_labelled", 0),
        "sizes_keywords_representatives": metrics["n_docs"],
    }
    previous_layout = previous_run(layout) if previous == "latest" else previous
    if previous_layout is not None:
        metrics["comparison"] = _compare(layout, previous_layout, metrics)
    result = ReportResult(
        layout.run_id,
        metrics,
        description,
        layout.report / "index.html",
        layout.report / "metrics.json",
    )
    write_json_atomic(result.metrics_path, metrics)
    _render(result, figures, scores.per_cluster(), report.outlier_fraction)
    log.info("report written to %s", layout.report)
    return result


def _metrics(
    description: Description,
    scores: InternalScores,
    contingency: Contingency | None,
    steps: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The metrics.json content that does not depend on the figures or the previous run."""
    cluster = steps["cluster"]
    n_noise = description.noise.size if description.noise else 0
    silhouettes = scores.per_cluster()
    metrics: dict[str, Any] = {
        "n_docs": sum(c.size for c in description.clusters) + n_noise,
        "n_clusters": len(description.clusters),
        "n_noise": n_noise,
        "n_rejected": steps["ingest"]["rows_rejected"],
        **{key: cluster.get(key) for key in ("algorithm", "metric", "k", "eps", "min_samples")},
        "selection": cluster.get("selection", {}),
        **scores.as_dict(),
        "outliers": {
            "n_flagged": description.n_outliers_flagged,
            "anomaly_threshold": (
                description.anomaly_threshold
                if np.isfinite(description.anomaly_threshold)
                else None
            ),
        },
        "clusters": [
            {
                "cluster_id": c.cluster_id,
                "size": c.size,
                "share": c.share,
                "keywords": c.keywords,
                "mean_anomaly": c.mean_anomaly,
                "silhouette": silhouettes.get(c.cluster_id),
            }
            for c in description.clusters
        ],
        "timings": {step: record["seconds"] for step, record in steps.items()},
    }
    if contingency is not None and contingency.counts.size:
        metrics.update(contingency_scores(contingency.counts))
        metrics["n_labelled"] = int(contingency.counts.sum())
    return metrics
