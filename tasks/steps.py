"""One Prefect task per pipeline step. Each returns its small step record (a dict).

Every task takes the run layout, the config and its step key (see `tasks._common`); the flow
binds each task to the run with `for_run` so the cache lives in the run folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks._common import STEP_OPTIONS, inference_workers, run_step
from udl.changes import record_hashes
from udl.cluster.assign import cluster_embeddings
from udl.config import PipelineConfig
from udl.corpus import ingest
from udl.datasets import RunLayout, mark_latest
from udl.embed import embed_corpus
from udl.features import compute_features
from udl.manifest import OPTIONAL_STEPS, STEPS
from udl.parallel import dask_client
from udl.report import ReportResult, build_report
from udl.similar import build_index, write_neighbours
from udl.storage import read_json

__all__ = [
    "cluster_task",
    "embed_task",
    "ingest_task",
    "neighbours_task",
    "preprocess_task",
    "report_task",
]

MAX_TABLE_ROWS = 100


@task(name="ingest", **STEP_OPTIONS)
def ingest_task(layout: RunLayout, config: PipelineConfig, key: str) -> dict:
    """Read the corpus into `corpus/` and `rejects/`, one chunk of files per Dask task, and
    hash its texts for the next run (`udl.changes.record_hashes`)."""

    def compute() -> dict:
        with dask_client(config.runtime):
            result = ingest(config.input, layout.corpus, layout.rejects)
            record_hashes(layout, key)
        record = asdict(result)
        record["per_source"] = {k: asdict(v) for k, v in result.per_source.items()}
        return {"rows": result.rows_ingested, **record}

    return run_step(layout, "ingest", key, compute)


@task(name="preprocess", **STEP_OPTIONS)
def preprocess_task(layout: RunLayout, config: PipelineConfig, key: str) -> dict:
    """Hashed TF-IDF of every corpus part on Dask, into `features/`."""

    def compute() -> dict:
        with dask_client(config.runtime):
            result = compute_features(
                layout.corpus, layout.features, layout.models, config.preprocess
            )
        return {"rows": result.n_docs, **asdict(result)}

    return run_step(layout, "preprocess", key, compute)


@task(name="embed", **STEP_OPTIONS)
def embed_task(layout: RunLayout, config: PipelineConfig, key: str, space: str) -> dict:
    """Train the encoder on a sample and write `embeddings/` (in embedding space `space`, see
    `udl.lineage`)."""

    def compute() -> dict:
        result = embed_corpus(
            layout.corpus,
            layout.features,
            layout.embeddings,
            layout.models,
            config.run_encoder,
            config.preprocess,
            config.runtime.seed,
            inference_workers(config.runtime),
        )
        return {"rows": result.n_docs, "space": space, **asdict(result)}

    return run_step(layout, "embed", key, compute)


@task(name="cluster", **STEP_OPTIONS)
def cluster_task(
    layout: RunLayout, config: PipelineConfig, key: str, previous_models: Path | None
) -> dict:
    """Cluster the embeddings and write `assignments/`; with `previous_models` (the previous
    run's, same embedding space) warm-start from and align ids to its centroids."""

    def compute() -> dict:
        result = cluster_embeddings(
            layout.embeddings,
            layout.corpus,
            layout.assignments,
            layout.models,
            config.cluster,
            layout.run_id,
            config.runtime.seed,
            previous_models,
            inference_workers(config.runtime),
        )
        return {"rows": result.n_docs, **asdict(result)}

    return run_step(layout, "cluster", key, compute)


@task(name="neighbours", **STEP_OPTIONS)
def neighbours_task(layout: RunLayout, config: PipelineConfig, key: str) -> dict:
    """Index the embeddings with FAISS and write each document's neighbours to `neighbours/`."""

    def compute() -> dict:
        info = build_index(layout.embeddings, layout.models, config.neighbours, config.runtime.seed)
        rows = write_neighbours(
            layout.embeddings, layout.models, layout.neighbours, config.neighbours.k
        )
        return {
            "rows": info.n_docs,
            "neighbour_rows": rows,
            "k": config.neighbours.k,
            **asdict(info),
        }

    return run_step(layout, "neighbours", key, compute)


def _artifacts(result: ReportResult) -> None:
    """Headline metrics (markdown) and a cluster table in the Prefect UI; data stays in Parquet."""
    create_markdown_artifact(markdown=result.summary_markdown(), key="udl-run-summary")
    create_table_artifact(table=result.cluster_rows(MAX_TABLE_ROWS), key="udl-clusters")


@task(name="report", **STEP_OPTIONS)
def report_task(
    layout: RunLayout, config: PipelineConfig, key: str, previous: RunLayout | None
) -> dict:
    """Evaluate, compare with the `previous` run, write `report/`, publish artifacts, point
    `<output_dir>/latest` here."""
    steps = {
        step: read_json(layout.step_record(step))
        for step in (*STEPS[:-1], *OPTIONAL_STEPS)
        if step in STEPS or layout.step_record(step).exists()
    }

    def compute() -> dict:
        result = build_report(
            layout, config, steps, previous, workers=inference_workers(config.runtime)
        )
        _artifacts(result)
        mark_latest(layout)
        return {"rows": result.metrics["n_docs"], "metrics": result.metrics}

    return run_step(layout, "report", key, compute)
