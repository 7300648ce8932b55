"""The closing lines of `udl run`, `udl recluster` and `udl assign`: what was found, how good
it is, where new documents went."""

from __future__ import annotations

from typing import Any

__all__ = ["assigned_line", "summary_lines", "update_line"]

LABEL_SCORES = ("nmi", "ari", "acc")


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _clusters(metrics: dict[str, Any]) -> str:
    n = metrics.get("n_clusters")
    if metrics.get("algorithm") == "dbscan":
        eps = metrics.get("eps")
        shown = "?" if eps is None else f"{eps:.4g}"
        return (
            f"{n} (DBSCAN, eps={shown}, min_samples={metrics.get('min_samples')}; "
            f"{metrics.get('n_noise', 0)} noise documents)"
        )
    return f"k={metrics.get('k', n)} (k-means)"


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Lines naming the clusters found (k, or eps for DBSCAN) and the headline scores.

    Args:
        metrics: the run's ``report/metrics.json``.

    Returns:
        ``clusters:`` and ``scores:`` lines; label scores (NMI, ARI, accuracy) appear only
        when the corpus had labels.
    """
    scores = [f"silhouette {_number(metrics.get('silhouette'))}"]
    scores += [f"{name} {_number(metrics[name])}" for name in LABEL_SCORES if name in metrics]
    return [f"clusters:    {_clusters(metrics)}", f"scores:      {' · '.join(scores)}"]


def assigned_line(ingested: dict[str, Any], assigned: dict[str, Any]) -> str:
    """Where the documents of `udl assign` went, from its ingest and cluster step records."""
    rejected = ingested["rows_rejected"]
    return (
        f"{assigned['n_docs']:,} documents joined {len(assigned['sizes'])} of the "
        f"{assigned['n_clusters']} clusters of run {assigned['source_run']} "
        f"({assigned['n_no_features']:,} without features, not assigned); "
        f"{rejected:,} {'row' if rejected == 1 else 'rows'} rejected"
    )


def update_line(update: dict[str, Any]) -> str | None:
    """What an incremental run reused and embedded (from its ``update.json``); None for a
    run that asked for a full recompute and got one."""
    policy, changes = update["policy"], update.get("changes")
    if changes is None:
        return None if update["asked"] == "full" else f"update:      {policy} ({update['reason']})"
    clusters = "clusters kept" if update["clusters"] == "kept" else "clusters fitted again"
    by_text = "; matched by text: no id column" if changes.get("matched_by") == "text" else ""
    return (
        f"update:      {policy}: {changes['computed']:,} texts embedded, {changes['reused']:,} "
        f"reused ({changes['new']:,} new, {changes['changed']:,} changed, "
        f"{changes['deleted']:,} deleted{by_text}); {clusters}"
    )
