"""The report's HTML page: its tables and the template (``udl/templates/report.html``),
rendered with autoescaping on (document text is untrusted) and written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined

from udl.compare import COMPARED
from udl.describe import Description
from udl.report_inputs import NO_FEATURES_REASON

__all__ = ["HEADLINE", "METRIC_NOTES", "Figure", "changes_sentence", "render_html"]

# The scores the page and the run summary lead with: the first of those compared between runs.
HEADLINE = COMPARED[:6]
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


def changes_sentence(comparison: dict[str, Any]) -> str:
    """What happened to the clusters since the previous run, in one sentence."""
    if comparison["matched_by"] == "none":
        return f"clusters not compared ({comparison['note']})."
    return (
        f"{len(comparison['appeared'])} clusters appeared, {len(comparison['vanished'])} "
        f"vanished, {len(comparison['moved'])} moved."
    )


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


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, value, about) of each metric present; a missing value says why it is missing."""
    rows = []
    for name, note in METRIC_NOTES.items():
        if name not in metrics:
            continue
        value = metrics[name]
        if value is None and metrics.get("internal_metrics_reason"):
            note = f"not computed: {metrics['internal_metrics_reason']}"
        rows.append((name, _fmt(value), note))
    return rows


@dataclass(frozen=True)
class Figure:
    """One figure of the report: caption, base64 PNG, and whether it spans the page width."""

    caption: str
    png: str
    wide: bool


# Why a document changed cluster (`udl.changes.document_moves`), as the report says it.
MOVE_REASONS = {
    "text_changed": "its text changed",
    "cluster_vanished": "its cluster has no continuation",
    "refitted": "the clusters were fitted again",
}


def render_html(
    path: Path,
    run_id: str,
    metrics: dict[str, Any],
    description: Description,
    figures: list[Figure],
    silhouettes: dict[int, float],
    outlier_fraction: float,
    undefined: type[Undefined] = Undefined,
    similar: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Write the report page to `path` (through a temporary file); `undefined` is what the
    template does with a missing value (tests pass `jinja2.StrictUndefined`); `similar`: the
    nearest neighbours of representative documents, by doc id (`read_similar`)."""
    comparison = metrics.get("comparison")
    candidates = metrics["selection"].get("candidates", [])
    env = Environment(
        loader=PackageLoader("udl", "templates"), autoescape=True, undefined=undefined
    )
    env.filters["fmt"] = _fmt
    html = env.get_template("report.html").render(
        run_id=run_id,
        metrics=metrics,
        headline=HEADLINE,
        metric_rows=_metric_rows(metrics),
        selection=candidates,
        selection_columns=list(dict.fromkeys(name for c in candidates for name in c)),
        comparison=comparison,
        delta_rows=_delta_rows(comparison) if comparison else [],
        matched_by_text=MATCHED_BY[comparison["matched_by"] if comparison else "none"],
        figures=figures,
        description=description,
        silhouettes=silhouettes,
        outlier_fraction=outlier_fraction,
        no_features_reason=NO_FEATURES_REASON,
        similar=similar or {},
        move_reasons=MOVE_REASONS,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
