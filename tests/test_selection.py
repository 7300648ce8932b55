"""Issue 22 on real text: auto eps that is not one giant cluster, documents without features
(contract B), the device in the embed record (contract D), and warnings (contract A).

One module fixture ingests the bundled 1,500 fortunes, computes TF-IDF (min_df=2 leaves 12 of
them without any feature) and trains a small autoencoder on them, as a run would.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from udl import schema as S
from udl.cluster.assign import ClusterResult, cluster_embeddings
from udl.cluster.dbscan import dbscan
from udl.cluster.health import dominant_threshold
from udl.cluster.selection import estimate_eps
from udl.config import ClusterConfig, EncoderConfig, InputConfig, PreprocessConfig
from udl.corpus import ingest
from udl.embed import EmbedResult, embed_corpus
from udl.features import FeaturesResult, compute_features

SAMPLE = Path(__file__).parent / "data" / "fortunes_sample.parquet"
# The TF-IDF autoencoder: documents without a TF-IDF feature are exactly the flagged ones.
ENCODER = EncoderConfig(
    kind="autoencoder",
    dim=32,
    hidden_dim=128,
    epochs=5,
    reconstruct_features=2048,
    device="cpu",
    max_train_docs=2000,
)


@dataclass(frozen=True)
class Fortunes:
    root: Path
    features: FeaturesResult
    embed: EmbedResult

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def cluster(self, name: str, config: ClusterConfig) -> tuple[ClusterResult, pa.Table]:
        result = cluster_embeddings(
            self.embeddings,
            self.root / "corpus",
            self.root / name / "assignments",
            self.root / name / "models",
            config,
            name,
            seed=0,
        )
        return result, pq.read_table(self.root / name / "assignments")

    def empty_ids(self) -> set[str]:
        """Doc ids whose TF-IDF row is empty, read from the features step's output."""
        table = pq.read_table(self.root / "features")
        empty = pc.equal(pc.list_value_length(table.column(S.INDICES)), 0)
        return set(table.filter(empty).column(S.DOC_ID).to_pylist())


@pytest.fixture(scope="module")
def fortunes(tmp_path_factory: pytest.TempPathFactory) -> Fortunes:
    root = tmp_path_factory.mktemp("fortunes")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = InputConfig(path=str(SAMPLE), id_column="doc_id", label_column="label")
        ingest(config, root / "corpus", root / "rejects")
        with dask.config.set(scheduler="synchronous"):
            features = compute_features(
                root / "corpus", root / "features", root / "models", PreprocessConfig()
            )
        embed = embed_corpus(
            root / "corpus",
            root / "features",
            root / "embeddings",
            root / "models",
            ENCODER,
            PreprocessConfig(),
            seed=0,
        )
    finally:
        torch.set_num_threads(threads)
    return Fortunes(root, features, embed)


def _featured_embeddings(fortunes: Fortunes) -> np.ndarray:
    table = pq.read_table(fortunes.embeddings).filter(pc.field(S.HAS_FEATURES))
    column = table.column(S.EMBEDDING).combine_chunks()
    return column.flatten().to_numpy().reshape(table.num_rows, -1)


# --- contract B: documents without features --------------------------------------------------


def test_embeddings_flag_documents_without_features(fortunes: Fortunes) -> None:
    table = pq.read_table(fortunes.embeddings)
    flagged = set(
        table.filter(pc.invert(table.column(S.HAS_FEATURES))).column(S.DOC_ID).to_pylist()
    )
    assert flagged == fortunes.empty_ids()
    assert len(flagged) == fortunes.features.n_empty_docs == fortunes.embed.n_no_features == 12


def test_encoder_is_not_trained_on_documents_without_features(fortunes: Fortunes) -> None:
    # max_train_docs covers the corpus, so the sample is every document that has features.
    assert fortunes.embed.n_train + fortunes.embed.n_valid == 1500 - 12


@pytest.mark.parametrize("algorithm", ["kmeans", "dbscan"])
def test_documents_without_features_are_not_clustered(
    fortunes: Fortunes, algorithm: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = ClusterConfig(algorithm=algorithm, k=8, eps="auto", selection_sample=2000)
    with caplog.at_level(logging.WARNING, logger="udl"):
        result, table = fortunes.cluster(f"nf-{algorithm}", config)
    frame = table.to_pandas()
    empty = frame[S.DOC_ID].isin(fortunes.empty_ids())
    assert (frame.loc[empty, S.STATUS] == S.NO_FEATURES).all()
    assert (frame.loc[empty, S.CLUSTER_ID] == -1).all()
    assert frame.loc[empty, S.DISTANCE].isna().all()
    assert (frame.loc[empty, S.CONFIDENCE] == 0.0).all()
    rest = frame[~empty]
    assert not rest[S.DISTANCE].isna().any()
    expected = np.where(rest[S.CLUSTER_ID] >= 0, S.CLUSTERED, S.NOISE)
    assert (rest[S.STATUS] == expected).all()
    assert result.n_no_features == 12
    assert result.n_noise == int((rest[S.CLUSTER_ID] < 0).sum())
    assert result.n_train == 1488 if algorithm == "dbscan" else result.n_train <= 1488
    warning = next(w for w in result.warnings if "no_features" in w)
    assert warning.startswith("12 of 1,500 documents have no word kept by preprocessing")
    assert warning in caplog.messages


# --- auto eps --------------------------------------------------------------------------------


def test_auto_eps_is_not_one_giant_cluster(fortunes: Fortunes) -> None:
    x = _featured_embeddings(fortunes)
    # The knee of the k-distance curve alone (the rule before issue 22) chains almost every
    # fortune into one cluster.
    knee = dbscan(x, estimate_eps(x, 5, "cosine", 10_000, 0), 5, "cosine").labels
    assert np.bincount(knee[knee >= 0]).max() / len(knee) > 0.9

    result, table = fortunes.cluster("eps", ClusterConfig(algorithm="dbscan", eps="auto"))
    featured = pc.not_equal(table.column(S.STATUS), S.NO_FEATURES)
    labels = table.filter(featured).column(S.CLUSTER_ID).to_numpy()
    largest = np.bincount(labels[labels >= 0]).max() / len(labels)
    assert result.n_clusters >= 2 and largest <= dominant_threshold(result.n_clusters)
    candidates = result.selection["candidates"]
    assert len(candidates) >= 2 and result.selection["eps"] == result.eps
    chosen = next(c for c in candidates if c["eps"] == result.eps)
    assert chosen["eligible"] and chosen["score"] == max(
        c["score"] for c in candidates if c["eligible"] and c["score"] is not None
    )
    assert [c["eps"] for c in candidates] == sorted(c["eps"] for c in candidates)
    # Rerunning gives the same choice and the same assignments.
    again, second = fortunes.cluster("eps-again", ClusterConfig(algorithm="dbscan", eps="auto"))
    assert again.selection == result.selection
    pd.testing.assert_frame_equal(
        second.drop_columns([S.RUN_ID]).to_pandas(), table.drop_columns([S.RUN_ID]).to_pandas()
    )


# --- contract D: device ----------------------------------------------------------------------


def test_embed_records_and_logs_the_device(
    fortunes: Fortunes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert fortunes.embed.device == "cpu"
    config = ENCODER.model_copy(update={"epochs": 1})
    shutil.copytree(fortunes.root / "models", tmp_path / "models")
    with caplog.at_level(logging.INFO, logger="udl"):
        result = embed_corpus(
            fortunes.root / "corpus",
            fortunes.root / "features",
            tmp_path / "embeddings",
            tmp_path / "models",
            config,
            PreprocessConfig(),
            seed=0,
        )
    assert result.device == "cpu"
    assert "embedding on cpu" in caplog.messages
