"""The tasks of a run of new documents joining a finished run's clusters (`udl assign`): each
applies what the source run fitted (IDF, encoder, centroids) and trains nothing. They record
themselves as the preprocess, embed and cluster steps of the new run, like the steps they stand
in for.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import task

from tasks._common import STEP_OPTIONS, inference_workers, run_step
from udl.cluster.assign import assign_to_centroids
from udl.config import PipelineConfig
from udl.datasets import RunLayout
from udl.embed import embed_with_checkpoint
from udl.features import transform_features
from udl.lineage import space_of
from udl.parallel import dask_client

__all__ = ["assign_task", "embed_new_task", "transform_task"]


@task(name="preprocess", **STEP_OPTIONS)
def transform_task(layout: RunLayout, config: PipelineConfig, key: str, source: RunLayout) -> dict:
    """TF-IDF of the new documents with `source`'s IDF, into `features/`."""

    def compute() -> dict:
        with dask_client(config.runtime):
            result = transform_features(
                layout.corpus, layout.features, source.models, config.preprocess
            )
        return {"rows": result.n_docs, "source_run": source.run_id, **asdict(result)}

    return run_step(layout, "preprocess", key, compute)


@task(name="embed", **STEP_OPTIONS)
def embed_new_task(layout: RunLayout, config: PipelineConfig, key: str, source: RunLayout) -> dict:
    """Embed the new documents with `source`'s encoder, into `source`'s embedding space."""

    def compute() -> dict:
        result = embed_with_checkpoint(
            layout.corpus,
            layout.features,
            layout.embeddings,
            source.encoder,
            config.encoder,
            inference_workers(config.runtime),
        )
        return {
            "rows": result.n_docs,
            "source_run": source.run_id,
            "space": space_of(source),
            **asdict(result),
        }

    return run_step(layout, "embed", key, compute)


@task(name="cluster", **STEP_OPTIONS)
def assign_task(layout: RunLayout, config: PipelineConfig, key: str, source: RunLayout) -> dict:
    """Assign each new document to the nearest of `source`'s centroids, into `assignments/`."""

    def compute() -> dict:
        result = assign_to_centroids(
            layout.embeddings,
            layout.corpus,
            layout.assignments,
            source.models,
            config.cluster.metric,
            source.run_id,
            config.cluster.assign_batch_size,
            inference_workers(config.runtime),
        )
        return {"rows": result.n_docs, "source_run": source.run_id, **asdict(result)}

    return run_step(layout, "cluster", key, compute)
