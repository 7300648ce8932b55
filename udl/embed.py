"""The embedding step: train an encoder on a sample of the corpus, then embed every part.

Training reads only the sampled rows; inference streams part by part, so memory is bounded by
the sample and one part, whatever the corpus size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray
from tqdm.auto import tqdm

from udl import schema as S
from udl.config import EncoderConfig, PreprocessConfig
from udl.encoders.autoencoder import AutoencoderEncoder
from udl.encoders.base import DocumentBatch, Encoder
from udl.features import TFIDF_FILE, read_csr
from udl.storage import atomic_dir, dataset_parts, sample_rows, write_part

__all__ = ["EmbedResult", "embed_corpus", "load_encoder", "read_documents", "read_embeddings"]

log = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
VALID_SHARE = 0.1


@dataclass(frozen=True)
class EmbedResult:
    """Summary of the embedding step."""

    n_docs: int
    n_train: int
    n_valid: int
    dim: int
    epochs_run: int
    best_valid_loss: float
    n_parameters: int


def read_documents(
    corpus_part: Path, features_part: Path, n_features: int, rows: NDArray[np.int64] | None = None
) -> tuple[list[str], DocumentBatch]:
    """Doc ids and the `DocumentBatch` of one aligned corpus/features part (optionally some rows)."""
    features = pq.read_table(features_part)
    texts = pq.read_table(corpus_part, columns=[S.TEXT]).column(S.TEXT)
    if rows is not None:
        features, texts = features.take(rows), texts.take(rows)
    docs = DocumentBatch(read_csr(features, n_features), texts.to_pylist())
    return features.column(S.DOC_ID).to_pylist(), docs


def _kept_features(models_dir: Path, count: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """All features kept by pruning, and the `count` most frequent of them (both sorted)."""
    table = pq.read_table(models_dir / TFIDF_FILE)
    features = table.column("feature").to_numpy().astype(np.int64)
    top = np.argsort(-table.column("df").to_numpy(), kind="stable")[:count]
    return features, np.sort(features[top])


def _sample(
    corpus_dir: Path, features_dir: Path, n_features: int, max_docs: int, seed: int
) -> DocumentBatch:
    """A seeded uniform sample of at most `max_docs` documents across all parts."""
    corpus_parts, features_parts = dataset_parts(corpus_dir), dataset_parts(features_dir)
    batches = [
        read_documents(corpus_parts[i], features_parts[i], n_features, rows)[1]
        for i, rows in sample_rows(features_parts, max_docs, seed)
    ]
    texts = [t for b in batches for t in b.texts]
    return DocumentBatch(sp.vstack([b.tfidf for b in batches], format="csr"), texts)


def make_encoder(config: EncoderConfig, n_features: int, models_dir: Path, seed: int) -> Encoder:
    """A fresh, untrained encoder of the configured kind."""
    inputs, target = _kept_features(models_dir, config.reconstruct_features)
    if config.kind == "autoencoder":
        return AutoencoderEncoder(config, inputs, target, seed)
    from udl.encoders.attention import AttentionEncoder

    return AttentionEncoder(config, n_features, target, seed)


def load_encoder(folder: Path) -> Encoder:
    """Load a saved encoder of any kind from its checkpoint folder."""
    kind = json.loads((folder / "config.json").read_text())["kind"]
    if kind == "autoencoder":
        return AutoencoderEncoder.load(folder)
    from udl.encoders.attention import AttentionEncoder

    return AttentionEncoder.load(folder)


def embed_corpus(
    corpus_dir: Path,
    features_dir: Path,
    embeddings_dir: Path,
    models_dir: Path,
    encoder_config: EncoderConfig,
    preprocess_config: PreprocessConfig,
    seed: int,
) -> EmbedResult:
    """Train the configured encoder on a sample and write `embeddings/` for every document.

    Args:
        corpus_dir: ingested corpus (for texts).
        features_dir: TF-IDF features aligned with the corpus parts.
        embeddings_dir: output dataset (`doc_id`, `embedding`, `anomaly_score`), atomic.
        models_dir: holds `tfidf.parquet`; receives the `encoder/` checkpoint.
        encoder_config: encoder kind and training settings.
        preprocess_config: gives the number of hashed features.
        seed: seeds sampling, initialisation and batch order.

    Returns:
        Sizes and training figures.
    """
    n_features = preprocess_config.n_features
    sample = _sample(corpus_dir, features_dir, n_features, encoder_config.max_train_docs, seed)
    n_valid = max(1, int(len(sample) * VALID_SHARE)) if len(sample) > 1 else 0
    order = np.random.default_rng(seed + 1).permutation(len(sample))
    valid, train = sample.take(order[:n_valid]), sample.take(order[n_valid:])
    encoder = make_encoder(encoder_config, n_features, models_dir, seed)
    encoder.fit(train, valid if n_valid else train)
    encoder.save(models_dir / ENCODER_DIR)
    schema = S.embeddings_schema(encoder.dim)
    n_docs = 0
    with atomic_dir(embeddings_dir) as out:
        parts = list(zip(dataset_parts(corpus_dir), dataset_parts(features_dir), strict=True))
        for index, (corpus_part, features_part) in enumerate(
            tqdm(parts, desc="embed", disable=None)
        ):
            doc_ids, docs = read_documents(corpus_part, features_part, n_features)
            vectors, scores = encoder.transform(docs)
            flat = pa.array(vectors.reshape(-1), pa.float32())
            table = pa.Table.from_arrays(
                [
                    pa.array(doc_ids, pa.string()),
                    pa.FixedSizeListArray.from_arrays(flat, encoder.dim),
                    pa.array(scores, pa.float32()),
                ],
                schema=schema,
            )
            write_part(table, out, index)
            n_docs += table.num_rows
    history = encoder.training_
    return EmbedResult(
        n_docs=n_docs,
        n_train=len(train),
        n_valid=n_valid,
        dim=encoder.dim,
        epochs_run=len(history.valid_loss),
        best_valid_loss=min(history.valid_loss),
        n_parameters=sum(p.numel() for p in encoder.model.parameters()),
    )


def read_embeddings(path: Path) -> tuple[list[str], NDArray[np.float32], NDArray[np.float32]]:
    """Doc ids, embeddings (n, dim) and anomaly scores of one embeddings part or dataset."""
    table = pq.read_table(path)
    column = table.column(S.EMBEDDING).combine_chunks()
    vectors = column.flatten().to_numpy().reshape(table.num_rows, column.type.list_size)
    return table.column(S.DOC_ID).to_pylist(), vectors, table.column(S.ANOMALY).to_numpy()
