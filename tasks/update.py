"""The tasks of a run that reuses the previous run's fitted models (update policy `refresh` or
`frozen`, see `udl.config.UpdateConfig`): features and embeddings computed only for new or
changed texts, and under `frozen` the previous clusters kept. They record themselves as the
preprocess, embed and cluster steps they stand in for."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import task

from tasks._common import STEP_OPTIONS, inference_workers, run_step
from udl import schema as S
from udl.changes import delta_path, read_changes
from udl.cluster.assign import keep_assignments
from udl.cluster.drift import measure_drift
from udl.config import PipelineConfig
from udl.datasets import CENTROIDS_FILE, RunLayout, decode_vectors
from udl.embed import embed_with_checkpoint
from udl.features import transform_features
from udl.incremental import copy_models, merge_embeddings, merge_features, plan_delta
from udl.lineage import config_of, recorded_key, space_of
from udl.parallel import dask_client
from udl.storage import read_json

__all__ = ["keep_clusters_task", "reuse_embeddings_task", "reuse_features_task"]

LOCAL_MAX_DOCS = 100_000


@task(name="preprocess", **STEP_OPTIONS)
def reuse_features_task(
    layout: RunLayout, config: PipelineConfig, key: str, previous: RunLayout
) -> dict:
    """`previous`'s features for the texts it had, TF-IDF with its IDF for the others."""

    def compute() -> dict:
        # Derived ids change with the file name and row: documents are then matched by text.
        by_id = None not in (config.input.id_column, config_of(previous).input.id_column)
        changes = plan_delta(layout, previous, by_id)
        empty = 0
        if changes.n_computed:
            # A few documents cost less than starting a local Dask cluster: in this process.
            local = changes.n_computed < LOCAL_MAX_DOCS and not config.runtime.dask_address
            with nullcontext() if local else dask_client(config.runtime):
                empty = transform_features(
                    delta_path(layout, "corpus"),
                    delta_path(layout, "features"),
                    previous.models,
                    config.preprocess,
                ).n_empty_docs
        linked = merge_features(layout, previous)
        return {
            "rows": len(changes.sources),
            "reused_from": previous.run_id,
            "changes": changes.record(),
            "n_empty_docs_computed": empty,
            "parts_linked": linked,
        }

    return run_step(layout, "preprocess", key, compute)


@task(name="embed", **STEP_OPTIONS)
def reuse_embeddings_task(
    layout: RunLayout, config: PipelineConfig, key: str, previous: RunLayout
) -> dict:
    """`previous`'s embeddings for the texts it had, its encoder applied to the others, and
    the drift of those from its clusters."""

    def compute() -> dict:
        sources, result = read_changes(layout), None
        if (sources < 0).any():
            result = embed_with_checkpoint(
                delta_path(layout, "corpus"),
                delta_path(layout, "features"),
                delta_path(layout, "embeddings"),
                previous.encoder,
                config.encoder,
                inference_workers(config.runtime),
            )
        computed, linked = merge_embeddings(layout, previous)
        featured = computed.column(S.HAS_FEATURES).to_numpy(zero_copy_only=False)
        drift = measure_drift(
            decode_vectors(computed.column(S.EMBEDDING))[featured],
            previous.models,
            previous.assignments,
            config_of(previous).cluster.metric,  # the metric of the distances compared
            config.update.drift_threshold,
        )
        return {
            "rows": len(sources),
            "reused_from": previous.run_id,
            # The embeddings the rows came from: the report's kept sample must be of them.
            "reused_key": recorded_key(previous, "embed"),
            "computed": computed.num_rows,
            "parts_linked": linked,
            "space": space_of(previous),
            "device": result.device if result else None,
            "embed_seconds": result.embed_seconds if result else 0.0,
            "drift": drift.record() if drift else None,
        }

    return run_step(layout, "embed", key, compute)


@task(name="cluster", **STEP_OPTIONS)
def keep_clusters_task(
    layout: RunLayout, config: PipelineConfig, key: str, previous: RunLayout
) -> dict:
    """The previous clusters kept: documents with a text the previous run had keep its
    assignment, the others join the nearest previous centroid."""

    def compute() -> dict:
        copy_models(previous.models, layout.models, (CENTROIDS_FILE,))
        result = keep_assignments(
            layout.corpus,
            delta_path(layout, "embeddings"),
            layout.assignments,
            previous.assignments,
            layout.models,
            read_changes(layout),
            config.cluster.metric,
            layout.run_id,
            config.cluster.assign_batch_size,
        )
        before: dict[str, Any] = read_json(previous.step_record("cluster"))
        chosen = ("algorithm", "metric", "k", "eps", "min_samples", "spherical", "selection")
        return {
            **{name: before.get(name) for name in chosen},
            "rows": result.n_docs,
            "n_docs": result.n_docs,
            "n_clusters": result.n_clusters,
            "n_noise": 0,
            "n_no_features": result.n_no_features,
            "kept_from": previous.run_id,
            "sizes": result.sizes,
            "warnings": [],
            "n_train": 0,
            "warm_start": False,
            "exact": True,
            "alignment": {},
        }

    return run_step(layout, "cluster", key, compute)
