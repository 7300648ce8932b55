"""The main flow: ingest → preprocess → embed → cluster → report, one run folder per run."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger

from tasks.steps import cluster_task, embed_task, ingest_task, preprocess_task, report_task
from udl.config import PipelineConfig
from udl.manifest import new_run_id, write_manifest
from udl.storage import RunLayout

__all__ = ["clustering_pipeline", "run_layout"]


def run_layout(config: PipelineConfig) -> RunLayout:
    """The run's folders; a configured run id resumes that run, none starts a new one."""
    output = Path(config.runtime.output_dir).expanduser().resolve()
    return RunLayout(output, config.runtime.run_id or new_run_id())


@flow(name="udl-pipeline", log_prints=True)
def clustering_pipeline(config: PipelineConfig = PipelineConfig()) -> str:  # noqa: B008
    """Cluster a text corpus: ingest, TF-IDF on Dask, embed with PyTorch, cluster with FAISS,
    evaluate and report. Returns the run folder (``<output_dir>/runs/<run_id>``)."""
    logging.getLogger("udl").setLevel(logging.INFO)
    # Dask's scheduler and nanny log every worker start and stop at INFO; keep the run log readable.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    layout = run_layout(config)
    get_run_logger().info("run %s in %s", layout.run_id, layout.run_dir)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(layout, config, status="running")
    try:
        ingested = ingest_task(layout, config)
        features = preprocess_task(layout, config, ingested)
        embedded = embed_task(layout, config, features)
        clustered = cluster_task(layout, config, embedded)
        report_task(layout, config, clustered)
    except BaseException:
        write_manifest(layout, config, status="failed")
        raise
    return str(layout.run_dir)
