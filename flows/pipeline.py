"""The flows: the whole pipeline, the steps a user runs alone (ingest, re-cluster, re-report),
and new documents joining a run's clusters (assign).

Each run lives in ``<output_dir>/runs/<run_id>/``. Every step's key comes from `udl.lineage`
(the upstream key, the step's config, the code version); tasks are cached on that key inside
the run folder, so rerunning a run id does only the work that is not done yet. This module is
wiring: the policy (keys, the followed run, what a re-clustering inherits) lives in `udl`.

Dask runs *inside* the tasks (a client to the configured scheduler, or to a LocalCluster the
run's steps share, see `udl.parallel.cluster_per_run`), not as the Prefect task runner: the
corpus is a few large partitions, not thousands of small Prefect tasks. Ingest and preprocess
always run on it; training and fitting stay in the flow process, which owns the machine's
cores or GPU, and the fitted encoder and centroids are applied on the workers part by part
when `runtime.dask_inference` says so.

No ``from __future__ import annotations`` here, unlike everywhere else: `udl serve` hands each
run the flow object, which Prefect cloudpickles into the run's subprocess, and a flow function
travels by value with only the globals its body uses. String annotations such as
``"PipelineConfig"`` then cannot be resolved when Prefect validates the run's parameters
("PipelineModel is not fully defined"); evaluated annotations travel as references.
"""

import logging
from pathlib import Path

from prefect import flow, get_run_logger

from tasks._common import for_run
from tasks.assign import assign_task, embed_new_task, transform_task
from tasks.steps import (
    cluster_task,
    embed_task,
    ingest_task,
    neighbours_task,
    preprocess_task,
    report_task,
)
from tasks.update import keep_clusters_task, reuse_embeddings_task, reuse_features_task
from udl import lineage
from udl.config import PipelineConfig, ReportConfig
from udl.datasets import RunLayout
from udl.manifest import new_run_id, recording, write_manifest
from udl.parallel import cluster_per_run
from udl.preflight import check_assign, check_recluster, reusable_run
from udl.storage import read_json, write_json_atomic

__all__ = [
    "assign_documents",
    "clustering_pipeline",
    "ingest_only",
    "recluster",
    "rereport",
    "run_layout",
]


def run_layout(config: PipelineConfig) -> RunLayout:
    """The run's folders; a configured run id resumes that run, none starts a new one."""
    output = Path(config.runtime.output_dir).expanduser().resolve()
    return RunLayout(output, config.runtime.run_id or new_run_id())


def _quiet_dask_logs() -> None:
    logging.getLogger("udl").setLevel(logging.INFO)
    # Dask's scheduler and nanny log every worker start and stop at INFO; keep the run log readable.
    logging.getLogger("distributed").setLevel(logging.WARNING)


def _cluster_and_report(
    layout: RunLayout,
    config: PipelineConfig,
    embed_key: str,
    previous: RunLayout | None,
    keep_clusters: bool = False,
) -> None:
    runtime = config.runtime
    if keep_clusters and previous is not None:
        key = lineage.reused_key("cluster", embed_key, previous)
        for_run(keep_clusters_task, layout, runtime)(layout, config, key, previous)
    else:
        followed = lineage.followed_models(layout, config, previous)
        key = lineage.cluster_key(embed_key, config, followed)
        for_run(cluster_task, layout, runtime)(layout, config, key, followed)
    if config.neighbours.enabled:
        indexed = lineage.neighbours_key(embed_key, config)
        for_run(neighbours_task, layout, runtime)(layout, config, indexed)
    key = lineage.report_key(key, config, previous)
    for_run(report_task, layout, runtime)(layout, config, key, previous)


def _preprocess_and_embed(
    layout: RunLayout, config: PipelineConfig, ingested: str, previous: RunLayout | None
) -> tuple[str, bool]:
    """Features and embeddings under the update policy (`udl.config.UpdateConfig`): reused
    from `previous` for the texts it had, or all computed; ``update.json`` says which and why.
    Returns the embed step's key and whether the previous clusters are kept."""
    runtime = config.runtime
    lineage.check_same_update(layout, config)
    policy, reason = lineage.update_policy(config, previous)
    update = {
        "asked": config.update.policy,
        "settings": config.update.model_dump(),
        "policy": policy,
        "reason": reason,
    }
    if policy != "full" and previous is not None:
        key = lineage.reused_key("preprocess", ingested, previous)
        features = for_run(reuse_features_task, layout, runtime)(layout, config, key, previous)
        # The drift check's verdict is part of the record: its settings are part of the key.
        key = lineage.reused_key("embed", key, previous, config.update)
        embedded = for_run(reuse_embeddings_task, layout, runtime)(layout, config, key, previous)
        policy = lineage.after_drift(policy, embedded["drift"], config)
        update |= {"policy": policy, "changes": features["changes"], "drift": embedded["drift"]}
        if (
            policy == "refresh"
            and lineage.unchanged(features["changes"])
            and lineage.clusters_not_kept(config, previous) is None
        ):
            policy, update["reason"] = "frozen", "nothing changed: the clusters are kept"
    if policy == "full":
        key = lineage.preprocess_key(ingested, config)
        for_run(preprocess_task, layout, runtime)(layout, config, key)
        key = lineage.embed_key(key, config)
        space = lineage.embedding_space(config, key)
        for_run(embed_task, layout, runtime)(layout, config, key, space)
    update["clusters"] = "kept" if policy == "frozen" else "fitted"
    write_json_atomic(layout.update, update)
    return key, policy == "frozen"


@flow(name="udl-pipeline", log_prints=True)
def clustering_pipeline(config: PipelineConfig = PipelineConfig()) -> str:  # noqa: B008
    """Cluster a text corpus: ingest, TF-IDF on Dask, embed with PyTorch, cluster with FAISS,
    evaluate and report. Returns the run folder (``<output_dir>/runs/<run_id>``)."""
    _quiet_dask_logs()
    layout = run_layout(config)
    runtime = config.runtime
    get_run_logger().info("run %s in %s", layout.run_id, layout.run_dir)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    previous = lineage.pin_previous_run(layout)
    config = lineage.resolve_warm_start(config, previous)
    with recording(layout, config, previous), cluster_per_run():
        ingested = lineage.ingest_key(layout, config)
        for_run(ingest_task, layout, runtime)(layout, config, ingested)
        key, keep_clusters = _preprocess_and_embed(layout, config, ingested, previous)
        _cluster_and_report(layout, config, key, previous, keep_clusters)
    return str(layout.run_dir)


@flow(name="udl-ingest", log_prints=True)
def ingest_only(config: PipelineConfig = PipelineConfig()) -> str:  # noqa: B008
    """Ingest the corpus into a run folder (corpus + rejects) and stop. Running the pipeline
    later with the same run id reuses this ingest."""
    _quiet_dask_logs()
    layout = run_layout(config)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    previous = lineage.pin_previous_run(layout)
    with recording(layout, config, previous, done="ingested"):
        key = lineage.ingest_key(layout, config)
        for_run(ingest_task, layout, config.runtime)(layout, config, key)
    return str(layout.run_dir)


@flow(name="udl-recluster", log_prints=True)
def recluster(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    source_run: str = "latest",
) -> str:
    """Cluster the embeddings of an existing run again with this config's cluster and report
    settings, into a new run (the source run is never modified)."""
    _quiet_dask_logs()
    source = check_recluster(config, source_run)
    layout = run_layout(config)
    get_run_logger().info("run %s re-clusters run %s", layout.run_id, source.run_id)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    previous = lineage.pin_previous_run(layout)
    config = lineage.recluster_config(config, source)
    with recording(layout, config, previous), cluster_per_run():
        embedded = lineage.reuse_steps(source, layout, lineage.RECLUSTER_REUSES)
        _cluster_and_report(layout, config, embedded["key"], previous)
    return str(layout.run_dir)


@flow(name="udl-assign", log_prints=True)
def assign_documents(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    source_run: str = "latest",
) -> str:
    """Assign the documents of ``config.input`` to the clusters of an existing k-means run,
    into a new run: the source run's IDF, encoder and centroids are applied, nothing is
    trained, and ``latest`` stays where it is."""
    _quiet_dask_logs()
    source = check_assign(config, source_run)
    layout = run_layout(config)
    get_run_logger().info("run %s assigns documents to run %s", layout.run_id, source.run_id)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    config = lineage.assign_config(config, source)
    runtime = config.runtime
    with recording(layout, config, source, done="assigned"), cluster_per_run():
        key = lineage.ingest_key(layout, config)
        for_run(ingest_task, layout, runtime)(layout, config, key)
        for step, step_task in (
            ("preprocess", transform_task),
            ("embed", embed_new_task),
            ("cluster", assign_task),
        ):
            key = lineage.joined_key(step, key, source)
            for_run(step_task, layout, runtime)(layout, config, key, source)
    return str(layout.run_dir)


@flow(name="udl-report", log_prints=True)
def rereport(
    output_dir: str = "udl-output",
    run_id: str = "latest",
    report: ReportConfig = ReportConfig(),  # noqa: B008
) -> str:
    """Rebuild the report of an existing run with these report settings."""
    _quiet_dask_logs()
    layout = reusable_run(output_dir, run_id, ("cluster",))
    # The run keeps its status: a re-report neither completes nor fails the run.
    status = read_json(layout.manifest)["status"]
    config = lineage.rereport_config(layout, report)
    previous = lineage.pin_previous_run(layout)
    key = lineage.report_key(lineage.recorded_key(layout, "cluster"), config, previous)
    for_run(report_task, layout, config.runtime)(layout, config, key, previous)
    write_manifest(layout, config, status, previous)
    return str(layout.run_dir)
