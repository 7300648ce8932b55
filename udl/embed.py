"""The embedding step: train an encoder on a sample of the corpus, then embed every part.

Training reads only the sampled rows; inference streams part by part (the next part read and
the previous one written while one is embedded), so memory is bounded by the sample and three
parts, whatever the corpus size.

A corpus ingested with supplied vectors (`input.embedding_column`, the corpus column
`embedding`) trains no encoder: `copy_embeddings` writes those vectors, L2-normalised if
configured, with a typicality anomaly score (1 - cosine to the corpus's mean direction).

A document whose TF-IDF row is empty (every token pruned by min_df/max_df/stop words, or no word
at all) gets the TF-IDF encoders' output for an empty input, the same vector for all such
documents, which means nothing; `embeddings/` marks it `has_features = False` (see
`udl.schema.HAS_FEATURES`), the encoder is not trained on it, and clustering leaves it out.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from udl import schema as S
from udl.cluster.kmeans import initial_clusters
from udl.config import EncoderConfig, PreprocessConfig, RuntimeConfig
from udl.datasets import (
    ENCODER_DIR,
    TFIDF_FILE,
    aligned_parts,
    decode_vectors,
    embeddings_table,
    read_csr,
    read_feature_width,
)
from udl.encoders.base import DocumentBatch, Encoder
from udl.encoders.registry import load_encoder, make_encoder
from udl.encoders.training import TrainingResult
from udl.encoders.views import unit_rows
from udl.errors import SchemaError
from udl.parallel import dask_client, map_parts, worker_threads
from udl.storage import (
    BackgroundWriter,
    atomic_dir,
    dataset_parts,
    read_ahead,
    sample_rows,
    write_part,
)

__all__ = [
    "EmbedResult",
    "copy_embeddings",
    "embed_corpus",
    "embed_with_checkpoint",
    "has_features",
    "has_supplied_vectors",
    "read_documents",
    "write_embeddings",
    "write_embeddings_on_workers",
]

log = logging.getLogger(__name__)

VALID_SHARE = 0.1


@dataclass(frozen=True)
class EmbedResult:
    """Summary of the embedding step."""

    n_docs: int
    n_train: int
    n_valid: int
    dim: int
    epochs_run: int
    best_valid_loss: float  # NaN for the pretrained encoder, which is not trained
    n_parameters: int
    dec_iterations: int  # DEC mini-batches run; 0 without DEC
    dec_converged: bool  # DEC stopped by its `tol` rule rather than its iteration cap
    train_seconds: float  # sampling, training, DEC and saving the checkpoint
    embed_seconds: float  # inference over every part, written to `embeddings/`
    device: str | None = None  # "cpu", "cuda:0" or "dask workers (auto)"; None: supplied
    n_no_features: int = 0  # documents without features (has_features False)
    teacher: str | None = None  # two_view: the teacher model's name; None without one
    teacher_sample: int = 0  # two_view: documents the teacher embedded
    teacher_seconds: float = 0.0  # two_view: loading, vocabulary distillation and the sample


def read_documents(
    corpus_part: Path, features_part: Path, rows: NDArray[np.int64] | None = None
) -> tuple[list[str], DocumentBatch]:
    """Doc ids and the `DocumentBatch` of one aligned corpus/features part (optionally some rows)."""
    features = pq.read_table(features_part)
    texts = pq.read_table(corpus_part, columns=[S.TEXT]).column(S.TEXT)
    if rows is not None:
        features, texts = features.take(rows), texts.take(rows)
    docs = DocumentBatch(read_csr(features), texts.to_pylist())
    return features.column(S.DOC_ID).to_pylist(), docs


def _sample(corpus_dir: Path, features_dir: Path, max_docs: int, seed: int) -> DocumentBatch:
    """A seeded uniform sample of at most `max_docs` documents across all parts, less those
    without features: an empty input row teaches the encoder nothing."""
    corpus_parts, features_parts = dataset_parts(corpus_dir), dataset_parts(features_dir)
    batches = [
        read_documents(corpus_parts[i], features_parts[i], rows)[1]
        for i, rows in sample_rows(features_parts, max_docs, seed)
    ]
    texts = [t for b in batches for t in b.texts]
    sample = DocumentBatch(sp.vstack([b.tfidf for b in batches], format="csr"), texts)
    return sample.take(np.flatnonzero(has_features(sample)))


def has_features(docs: DocumentBatch) -> NDArray[np.bool_]:
    """Whether each document's TF-IDF row holds any feature (bool array of shape (n_docs,))."""
    return np.diff(docs.tfidf.indptr) > 0


def write_embeddings(
    encoder: Encoder, corpus_dir: Path, features_dir: Path, embeddings_dir: Path
) -> tuple[int, int]:
    """Embed every document part by part into `embeddings_dir` (atomic).

    Memory is bounded by three parts: part k + 1 is read and part k - 1 written on background
    threads while part k is embedded, and part i of the output holds the documents of part i
    of the corpus, in order. The pretrained encoder reads the text itself, so for it every
    document has features.

    Returns:
        The number of documents, and how many of them have no features.
    """
    n_docs = n_empty = 0
    parts = aligned_parts(corpus_dir, features_dir)
    # Reading part k + 1 and writing part k - 1 overlap embedding part k; a failure stops both.
    with (
        atomic_dir(embeddings_dir) as out,
        BackgroundWriter() as writer,
        closing(read_ahead(lambda part: read_documents(*part), parts)) as documents,
    ):
        for index, (doc_ids, docs) in enumerate(
            tqdm(documents, total=len(parts), desc="embed", unit="part", disable=None)
        ):
            vectors, scores, featured = encoder.encode(docs)
            vectors = vectors.reshape(len(doc_ids), encoder.dim)
            writer.write(embeddings_table(doc_ids, vectors, scores, featured), out, index)
            n_docs += len(doc_ids)
            n_empty += int(np.sum(~featured))
    return n_docs, n_empty


@lru_cache(maxsize=1)
def _checkpoint(folder: str, device: str | None, stamp: tuple) -> Encoder:
    # A worker loads the checkpoint once for all its parts; `stamp` (each file's inode, size
    # and mtime) reloads one a rerun rewrote.
    return load_encoder(Path(folder), device)


def _embed_part(
    part: tuple[int, Path, Path], encoder_dir: Path, device: str | None, out: Path
) -> tuple[int, int]:
    """Embed one aligned corpus/features part on a Dask worker into part `index` of `out`;
    returns its document count and how many have no features."""
    index, corpus_part, features_part = part
    files = sorted(encoder_dir.iterdir())
    stamp = tuple((p.name, p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    encoder = _checkpoint(str(encoder_dir), device, stamp)
    # torch would start a thread per core in every worker process: as many as the worker has.
    threads = worker_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    doc_ids, docs = read_documents(corpus_part, features_part)
    vectors, scores, featured = encoder.encode(docs)
    vectors = vectors.reshape(len(doc_ids), encoder.dim)
    write_part(embeddings_table(doc_ids, vectors, scores, featured), out, index)
    return len(doc_ids), int(np.sum(~featured))


def write_embeddings_on_workers(
    encoder_dir: Path,
    device: str | None,
    corpus_dir: Path,
    features_dir: Path,
    embeddings_dir: Path,
) -> tuple[int, int]:
    """`write_embeddings` as one task per part on the active Dask client: each worker loads
    the checkpoint once (`weights_only=True`) and writes the parts it embeds itself, so only
    two counts per part come back. A part whose worker is lost is embedded again elsewhere and
    written under the same name. The output is the flow process's byte for byte for the
    two-view encoder and the autoencoder, whose vectors do not depend on the batch or the
    thread count; the attention encoder's can differ in the last bits (torch's kernels round
    differently with another thread count).

    Args:
        encoder_dir: the saved encoder (`Encoder.save`), on a path every worker reads.
        device: torch device on the workers ("auto": the worker's GPU if it has one).
    """
    parts = aligned_parts(corpus_dir, features_dir)
    with atomic_dir(embeddings_dir) as out:
        counts = map_parts(
            _embed_part,
            [(index, *pair) for index, pair in enumerate(parts)],
            "embed-part",
            encoder_dir=encoder_dir,
            device=device,
            out=out,
        )
    return sum(n for n, _ in counts), sum(empty for _, empty in counts)


def _where(encoder: Encoder, config: EncoderConfig, workers: RuntimeConfig | None) -> str:
    """Where the documents were embedded, for the step record."""
    return str(encoder.device) if workers is None else f"dask workers ({config.device})"


def _embed_all(
    encoder: Encoder,
    encoder_dir: Path,
    device: str | None,
    paths: tuple[Path, Path, Path],
    workers: RuntimeConfig | None,
) -> tuple[int, int]:
    if workers is None:
        return write_embeddings(encoder, *paths)
    with dask_client(workers):
        return write_embeddings_on_workers(encoder_dir, device, *paths)


def has_supplied_vectors(corpus_dir: Path) -> bool:
    """Whether the corpus carries supplied vectors (ingested with `input.embedding_column`).

    Metadata columns are strings, so a fixed-size list column `embedding` can only be those.
    """
    parts = dataset_parts(corpus_dir)
    if not parts:
        return False
    schema = pq.read_schema(parts[0])
    index = schema.get_field_index(S.EMBEDDING)
    return index >= 0 and pa.types.is_fixed_size_list(schema.field(index).type)


def _read_supplied(part: Path) -> tuple[list[str], NDArray[np.float32]]:
    """Doc ids and supplied vectors (n, dim) float32 of one corpus part."""
    table = pq.read_table(part, columns=[S.DOC_ID, S.EMBEDDING])
    return table.column(S.DOC_ID).to_pylist(), decode_vectors(table.column(S.EMBEDDING))


def copy_embeddings(corpus_dir: Path, embeddings_dir: Path, normalize: bool) -> EmbedResult:
    """Write the corpus's supplied vectors as `embeddings/`: no encoder is trained.

    Two streamed passes over the corpus's `embedding` column, one part in memory at a time.
    The first sums the unit-normalised vectors into the corpus's mean direction ``m``; the
    second writes each part (part i of the output holds part i of the corpus, in order) with

        anomaly_score = 1 - cos(x, m)   (in [0, 2]; 1 for a zero vector, or if m is zero)

    a typicality score: documents pointing away from what the corpus has in common score high.
    It is exact (no sample) and does not depend on `normalize`. On a corpus of a few
    well-separated clusters, a whole cluster lying far from the mean direction scores high
    too; the assignments' distance to the centroid gives the within-cluster view.

    Args:
        corpus_dir: ingested corpus with the `embedding` column (see `has_supplied_vectors`).
        embeddings_dir: output dataset (`doc_id`, `embedding`, `anomaly_score`), atomic.
        normalize: write the vectors L2-normalised (as `EncoderConfig.normalize`), else as
            supplied.

    Returns:
        Sizes and timings; nothing is trained (`n_train` is 0, `train_seconds` is the first
        pass).
    """
    started = time.perf_counter()
    parts = dataset_parts(corpus_dir)
    dim = pq.read_schema(parts[0]).field(S.EMBEDDING).type.list_size
    total = np.zeros(dim, np.float64)
    for part in parts:
        total += unit_rows(_read_supplied(part)[1]).sum(axis=0, dtype=np.float64)
    direction = (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32)
    summed = time.perf_counter()
    n_docs = 0
    with atomic_dir(embeddings_dir) as out:
        for index, part in enumerate(parts):
            doc_ids, vectors = _read_supplied(part)
            unit = unit_rows(vectors)
            scores = np.clip(1.0 - unit @ direction, 0.0, 2.0).astype(np.float32)
            write_part(
                embeddings_table(doc_ids, unit if normalize else vectors, scores), out, index
            )
            n_docs += len(doc_ids)
    return EmbedResult(
        n_docs=n_docs,
        n_train=0,
        n_valid=0,
        dim=dim,
        epochs_run=0,
        best_valid_loss=float("nan"),
        n_parameters=0,
        dec_iterations=0,
        dec_converged=False,
        train_seconds=summed - started,
        embed_seconds=time.perf_counter() - summed,
    )


def embed_corpus(
    corpus_dir: Path,
    features_dir: Path,
    embeddings_dir: Path,
    models_dir: Path,
    encoder_config: EncoderConfig,
    preprocess_config: PreprocessConfig,
    seed: int,
    workers: RuntimeConfig | None = None,
) -> EmbedResult:
    """Train the configured encoder on a sample and write `embeddings/` for every document.

    With `encoder_config.dec.method` set, the trained encoder is then refined by DEC/IDEC on
    the same sample before embedding. A corpus with supplied vectors (`has_supplied_vectors`)
    trains nothing: its vectors are written by `copy_embeddings`, and of the encoder settings
    only `normalize` applies.

    Args:
        corpus_dir: ingested corpus (for texts).
        features_dir: TF-IDF features aligned with the corpus parts.
        embeddings_dir: output dataset (`doc_id`, `embedding`, `anomaly_score`), atomic.
        models_dir: holds `tfidf.parquet`; receives the `encoder/` checkpoint.
        encoder_config: encoder kind and training settings.
        preprocess_config: the tokenisation and hashing that produced the features (an
            encoder that reads the text hashes it the same way); its ``n_features`` must be
            the width recorded with the features.
        seed: seeds sampling, initialisation and batch order.
        workers: the Dask cluster (`udl.parallel.dask_client`'s settings) that embeds every
            part from the saved checkpoint after training (`write_embeddings_on_workers`);
            None embeds in this process.

    Returns:
        Sizes, training figures and timings.

    Raises:
        ConfigError: see `make_encoder`; DEC with fewer sampled documents than clusters.
        SchemaError: the features are not as wide as ``preprocess_config.n_features``.
    """
    if has_supplied_vectors(corpus_dir):
        log.info("the corpus has supplied vectors: no encoder is trained")
        return copy_embeddings(corpus_dir, embeddings_dir, encoder_config.normalize)
    width = read_feature_width(models_dir)
    if width != preprocess_config.n_features:
        raise SchemaError(
            f"the features in {features_dir} are {width} wide ({models_dir / TFIDF_FILE}) but "
            f"preprocess.n_features is {preprocess_config.n_features}: embed with the "
            "preprocess settings that made them"
        )
    started = time.perf_counter()
    sample = _sample(corpus_dir, features_dir, encoder_config.max_train_docs, seed)
    n_valid = max(1, int(len(sample) * VALID_SHARE)) if len(sample) > 1 else 0
    order = np.random.default_rng(seed + 1).permutation(len(sample))
    valid, train = sample.take(order[:n_valid]), sample.take(order[n_valid:])
    encoder = make_encoder(encoder_config, preprocess_config, models_dir, seed)
    device = str(encoder.device)
    log.info("embedding on %s", device)
    encoder.fit(train, valid if n_valid else train)
    dec = None
    if encoder_config.dec.method != "none":
        dec = encoder.refine_clusters(
            sample.take(order[: encoder_config.dec.max_docs]), initial_clusters
        )
    encoder.save(models_dir / ENCODER_DIR)
    trained = time.perf_counter()
    paths = (corpus_dir, features_dir, embeddings_dir)
    checkpoint = models_dir / ENCODER_DIR
    n_docs, n_empty = _embed_all(encoder, checkpoint, encoder_config.device, paths, workers)
    history = encoder.training_ or TrainingResult()
    return EmbedResult(
        n_docs=n_docs,
        n_train=len(train),
        n_valid=n_valid,
        dim=encoder.dim,
        epochs_run=len(history.valid_loss),
        best_valid_loss=min(history.valid_loss, default=float("nan")),
        n_parameters=encoder.n_parameters,
        dec_iterations=dec.n_iter_ if dec else 0,
        dec_converged=dec.converged if dec else False,
        train_seconds=trained - started,
        embed_seconds=time.perf_counter() - trained,
        device=_where(encoder, encoder_config, workers),
        n_no_features=n_empty,
        teacher=encoder.teacher_,
        teacher_sample=encoder.teacher_sample_,
        teacher_seconds=encoder.teacher_seconds_,
    )


def embed_with_checkpoint(
    corpus_dir: Path,
    features_dir: Path,
    embeddings_dir: Path,
    encoder_dir: Path,
    encoder_config: EncoderConfig,
    workers: RuntimeConfig | None = None,
) -> EmbedResult:
    """Embed new documents with a finished run's encoder: nothing is trained, so each
    document gets the vector it has (or would have) in that run.

    A corpus with supplied vectors is copied as in `embed_corpus` (its anomaly scores are
    relative to the new documents' own mean direction).

    Args:
        corpus_dir: ingested corpus of the new documents.
        features_dir: their features, made with the run's IDF (`udl.features.transform_features`).
        embeddings_dir: output dataset, atomic.
        encoder_dir: the run's ``models/encoder`` checkpoint.
        encoder_config: the run's ``normalize``, and the device to embed on.
        workers: as in `embed_corpus`.

    Raises:
        ConfigError: `encoder_dir` holds no checkpoint this udl can load.
    """
    if has_supplied_vectors(corpus_dir):
        return copy_embeddings(corpus_dir, embeddings_dir, encoder_config.normalize)
    started = time.perf_counter()
    encoder = load_encoder(encoder_dir, encoder_config.device)
    loaded = time.perf_counter()
    paths = (corpus_dir, features_dir, embeddings_dir)
    n_docs, n_empty = _embed_all(encoder, encoder_dir, encoder_config.device, paths, workers)
    return EmbedResult(
        n_docs=n_docs,
        n_train=0,
        n_valid=0,
        dim=encoder.dim,
        epochs_run=0,
        best_valid_loss=float("nan"),
        n_parameters=encoder.n_parameters,
        dec_iterations=0,
        dec_converged=False,
        train_seconds=loaded - started,
        embed_seconds=time.perf_counter() - loaded,
        device=_where(encoder, encoder_config, workers),
        n_no_features=n_empty,
    )
