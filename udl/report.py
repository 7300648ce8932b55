"""The run report: ``report/metrics.json`` and one self-contained ``report/index.html``.

Memory does not grow with the corpus: one seeded sample (``report.metrics_sample`` documents,
`udl.report_sample`) feeds the internal scores, the map, the silhouette plot and the anomaly
threshold; everything else (sizes, keywords, representatives, outliers, label scores, rejects
by reason) comes from one streamed pass over the run's parts (`udl.report_inputs`). Documents without features
(status ``no_features``) are counted and shown apart, never as representatives or outliers.
Every step's ``warnings`` and the report's own open the page as a banner and go to
metrics.json. The HTML (template ``udl/templates/report.html``) inlines its CSS and figures
(`udl.figures`), is autoescaped (document text is untrusted) and needs no network to view.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Undefined
from numpy.typing import NDArray

from udl.changes import document_moves
from udl.compare import compare_runs
from udl.config import PipelineConfig, RuntimeConfig
from udl.datasets import RunLayout, read_feature_width, read_vocabulary
from udl.describe import ClusterDescriber, Description
from udl.evaluate import Contingency, InternalScores, contingency_scores, internal_scores
from udl.figures import (
    WIDE_INCHES,
    plot_confusion,
    plot_map,
    plot_silhouette,
    plot_sizes,
    to_png,
)
from udl.lineage import space_of
from udl.report_html import HEADLINE, Figure, changes_sentence, render_html
from udl.report_inputs import (
    read_alignment,
    read_centroids,
    read_similar,
    rejects_by_reason,
    stream_parts,
)
from udl.report_sample import Reused, Sample, read_sample
from udl.storage import read_json, write_json_atomic

__all__ = ["ReportResult", "build_report"]

log = logging.getLogger(__name__)


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
            *(["**Warnings:**", *(f"- {w}" for w in m["warnings"]), ""] if m["warnings"] else []),
            "| metric | value | change since previous run |",
            "| --- | --- | --- |",
        ]
        for name in HEADLINE:
            if m.get(name) is not None:
                change = f"{deltas[name]['delta']:+.4f}" if name in deltas else ""
                lines.append(f"| {name} | {m[name]:.4f} | {change} |")
        if changes := m.get("comparison"):
            lines += [
                "",
                f"Compared with run `{changes['previous_run_id']}`: {changes_sentence(changes)}",
            ]
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


def _warnings(steps: dict[str, dict[str, Any]], own: list[str]) -> list[str]:
    """Every step's warnings (contract: a step record's ``warnings``), then the report's own,
    each once and in order; the report's own are logged here."""
    for warning in own:
        log.warning("%s", warning)
    seen: dict[str, None] = {}
    for record in [*steps.values(), {"warnings": own}]:
        seen.update(dict.fromkeys(record.get("warnings") or []))
    return list(seen)


def _anomaly_threshold(sample: NDArray[np.float32], fraction: float) -> float:
    """Score of the top `fraction` of the sample (exact when the sample is the corpus)."""
    n_flagged = round(fraction * len(sample))
    return float(np.sort(sample)[-n_flagged]) if n_flagged else float("inf")


def _compare(layout: RunLayout, previous: RunLayout, metrics: dict[str, Any]) -> dict[str, Any]:
    """Read what the comparison with `previous` needs (its metrics, both centroids)."""
    return compare_runs(
        read_json(previous.metrics),
        metrics,
        read_centroids(previous),
        read_centroids(layout),
        read_alignment(layout, previous),
        same_space=_same_space(layout, previous),
    ) | {"previous_run_id": previous.run_id}


def _update(
    layout: RunLayout, previous: RunLayout | None, comparison: dict[str, Any] | None
) -> dict[str, Any]:
    """The update policy the run applied (``update.json``) and, when it reused the previous
    run's encoder (so cluster ids are comparable), the documents whose cluster changed."""
    update = read_json(layout.update)
    # Cluster ids compare only when this run embedded with the previous run's encoder.
    if previous is not None and update.get("changes") is not None and update["policy"] != "full":
        by_id = update["changes"].get("matched_by", "id") == "id"
        vanished = frozenset(c["cluster_id"] for c in (comparison or {}).get("vanished", []))
        update["moves"] = document_moves(layout, previous, by_id, vanished)
    return update


def _same_space(layout: RunLayout, previous: RunLayout) -> bool:
    """Whether both runs recorded one embedding space; unknown (runs written without a space
    record) counts as the same, as before spaces were recorded."""
    spaces = space_of(layout), space_of(previous)
    return None in spaces or spaces[0] == spaces[1]


def _figures(
    description: Description,
    sample: Sample,
    scores: InternalScores,
    contingency: Contingency | None,
    config: PipelineConfig,
    metric: str,
) -> tuple[list[Figure], int]:
    """Every figure, and how many documents the map shows."""
    seed = config.runtime.seed
    size = min(config.report.map_sample, len(sample.x))
    on_map = np.sort(np.random.default_rng(seed).choice(len(sample.x), size, replace=False))
    clusters = description.clusters
    plots = [
        (
            "Cluster sizes (all documents)",
            plot_sizes([c.cluster_id for c in clusters], [c.size for c in clusters]),
        ),
        (
            "2-D map of a sample of embeddings",
            plot_map(sample.x[on_map], sample.clusters[on_map], metric, seed),
        ),
    ]
    if scores.silhouette is not None:
        plots.append(
            ("Silhouette per cluster (sample)", plot_silhouette(scores.labels, scores.silhouettes))
        )
    if contingency is not None and contingency.counts.size:
        plots.append(("Labels × clusters (all labelled documents)", plot_confusion(contingency)))
    figures = [
        Figure(caption, to_png(fig), fig.get_figwidth() >= WIDE_INCHES) for caption, fig in plots
    ]
    return figures, size


def build_report(
    layout: RunLayout,
    config: PipelineConfig,
    steps: dict[str, dict[str, Any]],
    previous: RunLayout | None = None,
    undefined: type[Undefined] = Undefined,
    workers: RuntimeConfig | None = None,
) -> ReportResult:
    """Evaluate a finished run, write ``report/metrics.json`` and ``report/index.html``.

    Args:
        layout: the run's folders.
        config: the run's configuration.
        steps: step records (ingest … cluster) with their ``seconds``, chosen values and
            ``warnings``.
        previous: the run this one follows (`udl.lineage.pin_previous_run`), compared with
            when it has a report; None compares with nothing.
        undefined: what the template does with a missing value; tests pass
            `jinja2.StrictUndefined` so that one fails there rather than in front of a user.
        workers: the Dask cluster that describes the parts (`stream_parts`); None: here.

    Returns:
        The metrics written, the cluster description and the paths of both files.
    """
    started = time.perf_counter()
    report, metric = config.report, steps["cluster"]["metric"]
    embed = steps.get("embed", {})
    reused = None
    if embed.get("reused_key"):  # an incremental run: its rows are the previous run's
        reused = Reused(RunLayout(layout.output_dir, embed["reused_from"]), embed["reused_key"])
    sample = read_sample(layout, report.metrics_sample, config.runtime.seed, reused)
    scores = internal_scores(sample.x, sample.clusters, metric)
    threshold = _anomaly_threshold(sample.anomaly, report.outlier_fraction)
    # Runs written before the width was recorded with the features have it in their config.
    width = read_feature_width(layout.models, legacy=config.preprocess.n_features)
    describer = ClusterDescriber(width, threshold, report.n_examples, report.n_outlier_examples)
    contingency = stream_parts(layout, describer, width, workers)
    description = describer.result(read_vocabulary(layout.models), report.n_keywords)
    metrics = _metrics(description, scores, contingency, steps)
    metrics["rejects_by_reason"] = rejects_by_reason(layout, steps["ingest"])
    figures, map_size = _figures(description, sample, scores, contingency, config, metric)
    metrics["sample_sizes"] = {
        "internal_metrics": len(sample.x),
        "internal_metrics_clustered": len(scores.labels),
        "anomaly_threshold": len(sample.x),
        "map": map_size,
        "label_metrics": metrics.get("n_labelled", 0),
        "sizes_keywords_representatives": metrics["n_docs"],
    }
    own = [f"Internal scores are not computed: {scores.reason}."] if scores.reason else []
    if previous is not None and previous.metrics.exists():
        metrics["comparison"] = _compare(layout, previous, metrics)
    elif previous is not None:
        own.append(
            f"Not compared with the previous run {previous.run_id}: it has no report "
            f"({previous.metrics} is missing)."
        )
    if layout.update.exists():
        metrics["update"] = _update(layout, previous, metrics.get("comparison"))
    metrics["warnings"] = _warnings(steps, own)
    # The report's own time, up to its HTML: the timings table would otherwise miss a step.
    metrics["timings"]["report"] = time.perf_counter() - started
    result = ReportResult(
        layout.run_id,
        metrics,
        description,
        layout.report_html,
        layout.metrics,
    )
    write_json_atomic(result.metrics_path, metrics)
    representatives = [e.doc_id for c in description.clusters for e in c.examples]
    render_html(
        result.html_path,
        result.run_id,
        metrics,
        description,
        figures,
        scores.per_cluster(),
        config.report.outlier_fraction,
        undefined,
        similar=read_similar(layout, representatives),
    )
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
    silhouettes = scores.per_cluster()
    metrics: dict[str, Any] = {
        "n_docs": description.n_docs,
        "n_clusters": len(description.clusters),
        "n_noise": description.noise.size if description.noise else 0,
        "n_no_features": description.n_no_features,
        "n_rejected": steps["ingest"]["rows_rejected"],
        **{key: cluster.get(key) for key in ("algorithm", "metric", "k", "eps", "min_samples")},
        "selection": cluster.get("selection", {}),
        **scores.as_dict(),
        "internal_metrics_reason": scores.reason,
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
