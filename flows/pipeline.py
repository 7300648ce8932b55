"""The flows: the whole pipeline, and the steps a user runs alone (ingest, re-cluster, re-report).

Each run lives in ``<output_dir>/runs/<run_id>/``. The flow computes every step's key from the
upstream key, the step's config and the code version; tasks are cached on that key inside the
run folder, so rerunning a run id does only the work that is not done yet.

Dask runs *inside* the ingest and preprocess tasks (a client to a LocalCluster, or to the
configured scheduler), not as the Prefect task runner: the corpus is a few large partitions, not
thousands of small Prefect tasks, and the other steps (torch, FAISS) must stay in the flow
process where they own the machine's cores or GPU.

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
from tasks.steps import cluster_task, embed_task, ingest_task, preprocess_task, report_task
from udl.config import PipelineConfig, ReportConfig, parse_config
from udl.datasets import CENTROIDS_FILE, RunLayout
from udl.fingerprint import source_fingerprint, step_key
from udl.lineage import (
    centroids_fingerprint,
    embedding_space,
    pin_previous_run,
    resolve_warm_start,
    space_of,
)
from udl.manifest import new_run_id, reuse_steps, write_manifest
from udl.preflight import RECLUSTER_REUSES, check_recluster, reusable_run
from udl.storage import read_json

__all__ = ["clustering_pipeline", "ingest_only", "recluster", "rereport", "run_layout"]


def run_layout(config: PipelineConfig) -> RunLayout:
    """The run's folders; a configured run id resumes that run, none starts a new one."""
    output = Path(config.runtime.output_dir).expanduser().resolve()
    return RunLayout(output, config.runtime.run_id or new_run_id())


def _quiet_dask_logs() -> None:
    logging.getLogger("udl").setLevel(logging.INFO)
    # Dask's scheduler and nanny log every worker start and stop at INFO; keep the run log readable.
    logging.getLogger("distributed").setLevel(logging.WARNING)


def _ingest_key(layout: RunLayout, config: PipelineConfig) -> str:
    return step_key("ingest", str(layout.run_dir), source_fingerprint(config.input), config.input)


def _followed_models(
    layout: RunLayout, config: PipelineConfig, previous: RunLayout | None
) -> Path | None:
    """The previous run's models folder when its clusters can be continued: same embedding
    space (see `udl.lineage`) and alignment switched on."""
    if previous is None or not config.cluster.align_to_previous:
        return None
    space = space_of(layout)
    if space is None or space_of(previous) != space:
        get_run_logger().info(
            "cluster ids start afresh: run %s embedded into another space (an encoder trained "
            "from scratch); set encoder.warm_start=previous to keep them stable",
            previous.run_id,
        )
        return None
    return previous.models


def _cluster_and_report(
    layout: RunLayout, config: PipelineConfig, embed_key: str, previous: RunLayout | None
) -> None:
    runtime = config.runtime
    followed = _followed_models(layout, config, previous)
    followed_centroids = centroids_fingerprint(followed / CENTROIDS_FILE) if followed else None
    cluster_key = step_key("cluster", embed_key, config.cluster, runtime.seed, followed_centroids)
    for_run(cluster_task, layout, runtime)(layout, config, cluster_key, followed)
    report_key = step_key("report", cluster_key, config.report, previous and previous.run_id)
    for_run(report_task, layout, runtime)(layout, config, report_key, previous)


@flow(name="udl-pipeline", log_prints=True)
def clustering_pipeline(config: PipelineConfig = PipelineConfig()) -> str:  # noqa: B008
    """Cluster a text corpus: ingest, TF-IDF on Dask, embed with PyTorch, cluster with FAISS,
    evaluate and report. Returns the run folder (``<output_dir>/runs/<run_id>``)."""
    _quiet_dask_logs()
    layout = run_layout(config)
    runtime = config.runtime
    get_run_logger().info("run %s in %s", layout.run_id, layout.run_dir)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    previous = pin_previous_run(layout)
    config = resolve_warm_start(config, previous)
    write_manifest(layout, config, "running", previous)
    try:
        key = _ingest_key(layout, config)
        for_run(ingest_task, layout, runtime)(layout, config, key)
        key = step_key("preprocess", key, config.preprocess)
        for_run(preprocess_task, layout, runtime)(layout, config, key)
        key = step_key("embed", key, config.run_encoder, runtime.seed)
        space = embedding_space(config, key)
        for_run(embed_task, layout, runtime)(layout, config, key, space)
        _cluster_and_report(layout, config, key, previous)
    except BaseException:
        write_manifest(layout, config, "failed", previous)
        raise
    write_manifest(layout, config, "completed", previous)
    return str(layout.run_dir)


@flow(name="udl-ingest", log_prints=True)
def ingest_only(config: PipelineConfig = PipelineConfig()) -> str:  # noqa: B008
    """Ingest the corpus into a run folder (corpus + rejects) and stop. Running the pipeline
    later with the same run id reuses this ingest."""
    _quiet_dask_logs()
    layout = run_layout(config)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    previous = pin_previous_run(layout)
    write_manifest(layout, config, "running", previous)
    try:
        for_run(ingest_task, layout, config.runtime)(layout, config, _ingest_key(layout, config))
    except BaseException:
        write_manifest(layout, config, "failed", previous)
        raise
    write_manifest(layout, config, "ingested", previous)
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
    previous = pin_previous_run(layout)
    source_config = parse_config(read_json(source.manifest)["config"])
    # The new run inherits what it reuses: input, preprocessing and encoder settings.
    config = config.inherit(source_config, ("input", "preprocess", "encoder"))
    write_manifest(layout, config, "running", previous)
    try:
        embedded = reuse_steps(source, layout, RECLUSTER_REUSES)
        _cluster_and_report(layout, config, embedded["key"], previous)
    except BaseException:
        write_manifest(layout, config, "failed", previous)
        raise
    write_manifest(layout, config, "completed", previous)
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
    manifest = read_json(layout.manifest)
    config = parse_config(manifest["config"]).with_overrides({"report": report.model_dump()})
    previous = pin_previous_run(layout)
    cluster_key = read_json(layout.step_record("cluster"))["key"]
    report_key = step_key("report", cluster_key, config.report, previous and previous.run_id)
    for_run(report_task, layout, config.runtime)(layout, config, report_key, previous)
    write_manifest(layout, config, manifest["status"], previous)
    return str(layout.run_dir)
