"""Run-to-run lineage: which run a run follows, warm starts, and stable cluster ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from tests.helpers import task_states
from udl.config import PipelineConfig, ReportConfig
from udl.datasets import RunLayout, mark_latest
from udl.fingerprint import step_key
from udl.lineage import (
    centroids_fingerprint,
    cluster_key,
    embed_key,
    embedding_space,
    followed_models,
    pin_previous_run,
    preprocess_key,
    recluster_config,
    report_key,
    rereport_config,
    resolve_warm_start,
)
from udl.storage import write_json_atomic


def _completed_run(output: Path, run_id: str, encoder_kind: str = "two_view") -> RunLayout:
    layout = RunLayout(output, run_id)
    write_json_atomic(layout.steps / "embed.json", {"space": f"trained:{run_id}"})
    write_json_atomic(layout.steps / "cluster.json", {"rows": 1})
    write_json_atomic(layout.models / "encoder" / "config.json", {"kind": encoder_kind})
    (layout.models / "encoder" / "weights.pt").write_bytes(b"")
    return layout


def test_previous_run_is_pinned_when_the_run_starts(tmp_path: Path) -> None:
    first = _completed_run(tmp_path, "a")
    mark_latest(first)
    second = RunLayout(tmp_path, "b")
    assert pin_previous_run(second) == first
    write_json_atomic(second.manifest, {"previous_run_id": "a"})
    write_json_atomic(second.steps / "cluster.json", {"rows": 1})
    mark_latest(second)  # latest moves onto the run itself; a rerun still follows "a"
    assert pin_previous_run(second) == first
    assert pin_previous_run(RunLayout(tmp_path, "c")) == second


def test_no_previous_run_without_a_completed_latest(tmp_path: Path) -> None:
    assert pin_previous_run(RunLayout(tmp_path, "a")) is None
    unfinished = RunLayout(tmp_path, "a")
    unfinished.steps.mkdir(parents=True)
    mark_latest(unfinished)
    assert pin_previous_run(RunLayout(tmp_path, "b")) is None


def test_warm_start_previous_resolves_to_a_compatible_checkpoint(tmp_path: Path) -> None:
    config = PipelineConfig().with_overrides({"encoder.warm_start": "previous"})
    previous = _completed_run(tmp_path, "a")
    assert resolve_warm_start(config, previous).encoder.warm_start == str(
        previous.models / "encoder"
    )
    assert resolve_warm_start(config, None).encoder.warm_start is None
    other_kind = _completed_run(tmp_path, "b", encoder_kind="attention")
    assert resolve_warm_start(config, other_kind).encoder.warm_start is None
    explicit = PipelineConfig().with_overrides(
        {"encoder.warm_start": str(other_kind.models / "encoder")}
    )
    assert resolve_warm_start(explicit, previous) == explicit


def test_embedding_spaces(tmp_path: Path) -> None:
    base = PipelineConfig()
    assert embedding_space(base, "embed-1") == "trained:embed-1"
    assert embedding_space(base, "embed-1") != embedding_space(base, "embed-2")
    previous = _completed_run(tmp_path, "a")
    warm = base.with_overrides({"encoder.warm_start": str(previous.models / "encoder")})
    assert embedding_space(warm, "embed-2") == "trained:a"
    pretrained = base.with_overrides({"encoder.kind": "pretrained"})
    assert embedding_space(pretrained, "x") == embedding_space(pretrained, "y")
    column = base.with_overrides({"input.embedding_column": "vec"})
    assert embedding_space(column, "x") == "column:vec"


def test_clusters_are_continued_only_within_one_space(tmp_path: Path) -> None:
    config = PipelineConfig()
    previous = _completed_run(tmp_path, "a")
    same, other = RunLayout(tmp_path, "b"), RunLayout(tmp_path, "c")
    write_json_atomic(same.steps / "embed.json", {"space": "trained:a"})
    write_json_atomic(other.steps / "embed.json", {"space": "trained:c"})
    assert followed_models(same, config, previous) == previous.models
    assert followed_models(other, config, previous) is None
    assert followed_models(same, config, None) is None
    unaligned = config.with_overrides({"cluster.align_to_previous": False})
    assert followed_models(same, unaligned, previous) is None


def test_keys_change_with_the_followed_centroids_and_the_compared_run(tmp_path: Path) -> None:
    config = PipelineConfig()
    previous = _completed_run(tmp_path, "a")
    fresh = cluster_key("embed-1", config, None)
    np.save(previous.centroids, np.eye(3, dtype=np.float32))
    followed = cluster_key("embed-1", config, previous.models)
    assert followed != fresh
    assert cluster_key("embed-1", config, previous.models) == followed
    np.save(previous.centroids, 2 * np.eye(3, dtype=np.float32))
    assert cluster_key("embed-1", config, previous.models) != followed
    assert cluster_key("embed-2", config, None) != fresh
    assert report_key(fresh, config, previous) != report_key(fresh, config, None)


def test_step_keys_hash_what_each_step_depends_on(tmp_path: Path) -> None:
    """The keys are the same hashes the flows computed before lineage owned them, so runs
    started by an earlier build of this code version resume from their cache."""
    config = PipelineConfig()
    previous = _completed_run(tmp_path, "a")
    np.save(previous.centroids, np.eye(3, dtype=np.float32))
    assert preprocess_key("i", config) == step_key("preprocess", "i", config.preprocess)
    assert embed_key("p", config) == step_key("embed", "p", config.run_encoder, config.runtime.seed)
    assert cluster_key("e", config, previous.models) == step_key(
        "cluster",
        "e",
        config.cluster,
        config.runtime.seed,
        centroids_fingerprint(previous.centroids),
    )
    assert report_key("c", config, previous) == step_key("report", "c", config.report, "a")


def test_a_recluster_inherits_what_it_reuses(tmp_path: Path) -> None:
    source = _completed_run(tmp_path, "a")
    ran = PipelineConfig().with_overrides(
        {"input.path": "corpus.csv", "encoder.kind": "pretrained", "cluster.k": 5}
    )
    write_json_atomic(source.manifest, {"config": ran.model_dump(mode="json")})
    new = PipelineConfig().with_overrides({"cluster.k": 9, "report.n_keywords": 4})
    config = recluster_config(new, source)
    assert (config.input, config.encoder) == (ran.input, ran.encoder)
    assert (config.cluster.k, config.report.n_keywords) == (9, 4)
    rereport = rereport_config(source, ReportConfig(n_keywords=3))
    assert rereport.cluster == ran.cluster and rereport.report.n_keywords == 3


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_runs_keep_cluster_ids(small_corpus: Path, tmp_path: Path) -> None:
    from flows.pipeline import clustering_pipeline

    config = PipelineConfig().with_overrides(
        {
            "input.path": str(small_corpus),
            "input.id_column": "doc_id",
            "input.label_column": "label",
            "cluster.k": 4,
            "encoder.warm_start": "previous",
            "runtime.output_dir": str(tmp_path),
        }
    )
    first = Path(clustering_pipeline(config.with_overrides({"runtime.run_id": "night-1"})))
    second_config = config.with_overrides({"runtime.run_id": "night-2", "runtime.seed": 1})
    second = Path(clustering_pipeline(second_config))

    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["previous_run_id"] == "night-1"
    assert manifest["config"]["encoder"]["warm_start"] == str(first / "models" / "encoder")
    embed = [json.loads((run / "steps" / "embed.json").read_text()) for run in (first, second)]
    assert embed[0]["space"] == embed[1]["space"]
    cluster = json.loads((second / "steps" / "cluster.json").read_text())
    assert cluster["warm_start"] is True
    assert cluster["alignment"]["status"] == "aligned"
    metrics = json.loads((second / "report" / "metrics.json").read_text())
    assert metrics["comparison"]["previous_run_id"] == "night-1"

    # Another seed, the same topics: each cluster keeps the id of the cluster it continues, so
    # the ids as written agree as well as the best matching of the two runs' clusters could.
    a = pd.read_parquet(first / "assignments", columns=["doc_id", "cluster_id"])
    b = pd.read_parquet(second / "assignments", columns=["doc_id", "cluster_id"])
    joined = a.merge(b, on="doc_id", suffixes=("_a", "_b"))
    assert len(joined) == 1000
    overlap = pd.crosstab(joined["cluster_id_a"], joined["cluster_id_b"]).to_numpy()
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    assert list(rows) == list(cols)
    assert np.trace(overlap) == overlap[rows, cols].sum() > 0.75 * len(joined)

    # Rerunning night-2 after it became latest still follows night-1: nothing to redo.
    state = clustering_pipeline(second_config, return_state=True)
    assert set(task_states(state).values()) == {"Cached"}
