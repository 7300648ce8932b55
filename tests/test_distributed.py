"""Embedding inference and k-means assignment on Dask workers (issue 21): the same bytes as in
the flow process, also when a worker dies in the middle of the step.

A local cluster of two worker processes (one thread each, as `udl.parallel.dask_client` starts
them) embeds the 1,000-document sample split into 10 parts; the flow process embeds with
torch's default thread count, as a run does.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from udl import schema as S
from udl.cluster.assign import assign_to_centroids, cluster_embeddings
from udl.config import (
    AttentionConfig,
    ClusterConfig,
    EncoderConfig,
    InputConfig,
    PreprocessConfig,
    RuntimeConfig,
    TwoViewConfig,
)
from udl.corpus import ingest
from udl.datasets import ENCODER_DIR, RunLayout, decode_vectors, read_vocabulary
from udl.describe import ClusterDescriber, Description
from udl.embed import embed_corpus, embed_with_checkpoint, write_embeddings_on_workers
from udl.features import compute_features
from udl.parallel import cluster_per_run, dask_client
from udl.report_inputs import stream_parts
from udl.storage import dataset_parts

PREPROCESS = PreprocessConfig(n_features=2**12)
WORKERS = RuntimeConfig(dask_workers=2, dask_memory_limit="2GiB", dask_inference="on")
ENCODERS = {
    "autoencoder": EncoderConfig(
        kind="autoencoder", dim=8, hidden_dim=32, reconstruct_features=256, epochs=2
    ),
    "attention": EncoderConfig(
        kind="attention",
        dim=8,
        epochs=1,
        max_train_docs=300,
        attention=AttentionConfig(
            max_tokens=16, n_layers=1, n_heads=2, model_dim=16, feedforward_dim=32
        ),
    ),
    "two_view": EncoderConfig(
        kind="two_view",
        max_train_docs=800,
        epochs=2,
        two_view=TwoViewConfig(teacher_sample=200, lexical_dim=32),
    ),
}


@pytest.fixture(scope="module")
def run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ingested in 10 parts of 100 documents, with its TF-IDF features."""
    root = tmp_path_factory.mktemp("distributed")
    config = InputConfig(
        path=str(small_corpus), id_column="doc_id", label_column="label", partition_rows=100
    )
    ingest(config, root / "corpus", root / "rejects")
    with dask.config.set(scheduler="synchronous"):
        compute_features(root / "corpus", root / "features", root / "models", PREPROCESS)
    return root


@pytest.fixture(scope="module")
def workers() -> Iterator[Client]:
    with dask_client(WORKERS) as client:
        yield client


def _trained(run: Path, kind: str, folder: Path) -> tuple[Path, Path]:
    """The models folder with `kind`'s checkpoint and its embeddings, embedded in this process."""
    models = folder / "models"
    shutil.copytree(run / "models", models)
    embed_corpus(
        run / "corpus",
        run / "features",
        folder / "embeddings",
        models,
        ENCODERS[kind],
        PREPROCESS,
        0,
    )
    return models / ENCODER_DIR, folder / "embeddings"


def _same_bytes(left: Path, right: Path) -> None:
    parts = dataset_parts(left)
    assert len(parts) == 10
    assert [p.name for p in parts] == [p.name for p in dataset_parts(right)]
    for part in parts:
        assert part.read_bytes() == (right / part.name).read_bytes(), part.name
    assert not [p.name for p in right.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["autoencoder", "two_view"])
def test_workers_embed_the_same_bytes_as_the_flow_process(
    run: Path, workers: Client, kind: str, tmp_path: Path
) -> None:
    if kind == "two_view":
        pytest.importorskip("sentence_transformers", reason="the 'pretrained' extra is missing")
    checkpoint, in_process = _trained(run, kind, tmp_path)
    with workers.as_current():
        counts = write_embeddings_on_workers(
            checkpoint, "cpu", run / "corpus", run / "features", tmp_path / "on-workers"
        )
    assert counts[0] == 1000
    _same_bytes(in_process, tmp_path / "on-workers")


def test_attention_on_workers_differs_only_by_rounding(
    run: Path, workers: Client, tmp_path: Path
) -> None:
    """torch's transformer kernels round differently with another thread count (a worker has
    one thread, the flow process one per core): the same documents and order, vectors within
    float32 rounding."""
    checkpoint, in_process = _trained(run, "attention", tmp_path)
    with workers.as_current():
        write_embeddings_on_workers(
            checkpoint, "cpu", run / "corpus", run / "features", tmp_path / "on-workers"
        )
    here, there = pq.read_table(in_process), pq.read_table(tmp_path / "on-workers")
    assert here.column(S.DOC_ID).equals(there.column(S.DOC_ID))
    assert here.column(S.HAS_FEATURES).equals(there.column(S.HAS_FEATURES))
    vectors = [decode_vectors(t.column(S.EMBEDDING)) for t in (here, there)]
    np.testing.assert_allclose(*vectors, rtol=0, atol=1e-6)


def test_embedding_with_a_checkpoint_on_its_own_local_cluster(run: Path, tmp_path: Path) -> None:
    """`embed_with_checkpoint` with `workers` starts the cluster itself, as the steps do."""
    checkpoint, _ = _trained(run, "autoencoder", tmp_path)
    config = ENCODERS["autoencoder"]
    paths = (run / "corpus", run / "features")
    here = embed_with_checkpoint(*paths, tmp_path / "here", checkpoint, config)
    there = embed_with_checkpoint(*paths, tmp_path / "there", checkpoint, config, WORKERS)
    assert (here.n_docs, here.n_no_features) == (there.n_docs, there.n_no_features) == (1000, 0)
    _same_bytes(tmp_path / "here", tmp_path / "there")


class _DieOnce(WorkerPlugin):
    """Kills its worker process when the worker starts its first embedding task, once per
    cluster (the flag file is shared by every worker)."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "executing" and str(key).startswith("embed-part"):
            try:
                self.flag.touch(exist_ok=False)
            except FileExistsError:
                return
            os._exit(1)


def test_a_worker_killed_while_embedding_changes_nothing(
    run: Path, workers: Client, tmp_path: Path
) -> None:
    checkpoint, in_process = _trained(run, "autoencoder", tmp_path)
    flag = tmp_path / "killed"
    workers.register_plugin(_DieOnce(flag), name="die-once")
    try:
        with workers.as_current():
            counts = write_embeddings_on_workers(
                checkpoint, "cpu", run / "corpus", run / "features", tmp_path / "on-workers"
            )
    finally:
        workers.unregister_worker_plugin("die-once")
    assert flag.exists(), "no worker was killed"
    assert counts == (1000, 0)
    _same_bytes(in_process, tmp_path / "on-workers")


def test_kmeans_assigns_the_same_bytes_on_workers(run: Path, tmp_path: Path) -> None:
    """Fitted in the flow process, assigned on the workers: the assignments (also relabelled
    to a previous run's ids) and the result records are those of the flow process."""
    _, embeddings = _trained(run, "autoencoder", tmp_path)
    config = ClusterConfig(k=4)

    def cluster(name: str, previous: Path | None, on: RuntimeConfig | None) -> dict:
        models = tmp_path / name / "models"
        result = cluster_embeddings(
            embeddings,
            run / "corpus",
            tmp_path / name / "assignments",
            models,
            config,
            "r",
            0,
            previous,
            on,
        )
        return {k: v for k, v in result.__dict__.items() if not k.endswith("_seconds")}

    first = cluster("first", None, None)
    assert first == cluster("first-workers", None, WORKERS)
    _same_bytes(tmp_path / "first" / "assignments", tmp_path / "first-workers" / "assignments")
    # New documents joining the run's clusters (`udl assign`), here the run's own.
    joined = [
        assign_to_centroids(
            embeddings,
            run / "corpus",
            tmp_path / name,
            tmp_path / "first" / "models",
            config.metric,
            "first",
            256,
            on,
        )
        for name, on in (("joined", None), ("joined-workers", WORKERS))
    ]
    assert joined[0] == joined[1] and joined[0].n_docs == 1000
    _same_bytes(tmp_path / "joined", tmp_path / "joined-workers")
    previous = tmp_path / "first" / "models"
    again = cluster("again", previous, None)
    assert again["alignment"]["status"] == "aligned"
    assert again == cluster("again-workers", previous, WORKERS)
    _same_bytes(tmp_path / "again" / "assignments", tmp_path / "again-workers" / "assignments")


def test_the_steps_of_a_run_share_one_local_cluster() -> None:
    settings = RuntimeConfig(dask_workers=1, dask_memory_limit="1GiB")
    with cluster_per_run():
        with dask_client(settings) as first:
            address = first.scheduler.address
        with dask_client(settings) as second:
            assert second.scheduler.address == address
            assert len(second.scheduler_info()["workers"]) == 1
        with dask_client(settings.model_copy(update={"dask_workers": 2})) as other:
            assert other.scheduler.address != address
    with pytest.raises(OSError), Client(address, timeout="2s"):
        pass  # closed with the run


def test_the_report_pass_on_workers_describes_the_same_clusters(
    run: Path, workers: Client, tmp_path: Path
) -> None:
    """Each part described on a worker, the summaries merged in part order: the same
    keywords, sizes, representatives, outliers and label counts, bit for bit."""
    layout = RunLayout(tmp_path, "r")
    for name in ("corpus", "features"):
        layout.run_dir.mkdir(parents=True, exist_ok=True)
        (layout.run_dir / name).symlink_to(run / name)
    _, embeddings = _trained(run, "autoencoder", tmp_path)
    embeddings.rename(layout.embeddings)
    cluster_embeddings(
        layout.embeddings,
        layout.corpus,
        layout.assignments,
        tmp_path / "models",
        ClusterConfig(k=4),
        "r",
        0,
    )
    vocabulary = read_vocabulary(run / "models")

    def described(on: RuntimeConfig | None) -> tuple:
        describer = ClusterDescriber(PREPROCESS.n_features, 0.5, n_examples=3)
        with workers.as_current():
            contingency = stream_parts(layout, describer, PREPROCESS.n_features, on)
        return describer.result(vocabulary), contingency

    here, there = described(None), described(WORKERS)
    assert here[0] == there[0]

    def shown(description: Description) -> list[tuple[float, str]]:
        examples = [e for c in description.clusters for e in c.examples]
        return [(e.score, e.doc_id) for e in (*examples, *description.outliers)]

    assert shown(here[0]) == shown(there[0])
    assert here[0].n_outliers_flagged > 0 and len(here[0].clusters) == 4
    assert here[1].classes == there[1].classes
    np.testing.assert_array_equal(here[1].counts, there[1].counts)
    assert here[1].counts.sum() == 1000
