"""Hashed TF-IDF features, computed partition by partition with Dask.

Two passes over the corpus parts, each partition-parallel and out of core:

1. per part: normalise and tokenise (scikit-learn's analyzer), hash tokens to feature ids
   (scikit-learn's `FeatureHasher`, the hashing of `HashingVectorizer`), write raw counts, and
   return document frequencies plus the most frequent token strings; a Dask tree reduction
   sums them into the IDF and a vocabulary naming the hashed features;
2. per part: apply pruning (min_df/max_df), sublinear tf, IDF and L2 normalisation.

Feature parts mirror corpus parts one to one and keep row order, so later steps can stream
corpus, features and embeddings side by side.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dask.bag as db
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction import FeatureHasher
from sklearn.feature_extraction.text import HashingVectorizer

from udl import schema as S
from udl.config import PreprocessConfig
from udl.storage import atomic_dir, dataset_parts, write_part

__all__ = [
    "FeaturesResult",
    "build_analyzer",
    "compute_features",
    "hash_tokens",
    "read_csr",
    "read_idf",
    "read_vocabulary",
]

log = logging.getLogger(__name__)

TFIDF_FILE = "tfidf.parquet"
VOCABULARY_FILE = "vocabulary.parquet"


@dataclass(frozen=True)
class FeaturesResult:
    """Summary of a features computation."""

    n_docs: int
    n_features_kept: int
    n_empty_docs: int  # documents left with no feature after tokenising and pruning
    n_parts: int


def _vectorizer(config: PreprocessConfig) -> HashingVectorizer:
    return HashingVectorizer(
        n_features=config.n_features,
        lowercase=config.lowercase,
        strip_accents="unicode" if config.strip_accents else None,
        stop_words="english" if config.stop_words == "english" else None,
        ngram_range=(1, config.ngram_max),
        alternate_sign=False,
        norm=None,
    )


def build_analyzer(config: PreprocessConfig):
    """The text → tokens function: unicode/case/accent normalisation, stop words, n-grams."""
    return _vectorizer(config).build_analyzer()


def hash_tokens(tokens: list[str], n_features: int) -> NDArray[np.int64]:
    """Feature id of each token, identical to the id `HashingVectorizer` gives it."""
    hasher = FeatureHasher(n_features=n_features, input_type="string", alternate_sign=False)
    return hasher.transform([[t] for t in tokens]).indices.astype(np.int64)


def _csr_table(doc_ids: pa.Array, matrix: sp.csr_matrix) -> pa.Table:
    offsets = pa.array(matrix.indptr.astype(np.int32))
    indices = pa.ListArray.from_arrays(offsets, pa.array(matrix.indices.astype(np.int32)))
    values = pa.ListArray.from_arrays(offsets, pa.array(matrix.data.astype(np.float32)))
    return pa.Table.from_arrays([doc_ids, indices, values], schema=S.FEATURES_SCHEMA)


def read_csr(table: pa.Table, n_features: int) -> sp.csr_matrix:
    """Rebuild the float32 CSR matrix (n_docs, n_features) of a features table."""
    indices = table.column(S.INDICES).combine_chunks()
    values = table.column(S.VALUES).combine_chunks()
    indptr = indices.offsets.to_numpy().astype(np.int64)
    indptr -= indptr[0]
    return sp.csr_matrix(
        (values.flatten().to_numpy(), indices.flatten().to_numpy(), indptr),
        shape=(table.num_rows, n_features),
        dtype=np.float32,
    )


def _count_part(
    index: int, corpus_part: Path, counts_dir: Path, config: PreprocessConfig
) -> tuple[NDArray[np.int64], Counter[str], int]:
    """Pass 1 on one part: write raw hashed counts; return df, token df and row count."""
    table = pq.read_table(corpus_part, columns=[S.DOC_ID, S.TEXT])
    analyzer = build_analyzer(config)
    tokens = [analyzer(text) for text in table.column(S.TEXT).to_pylist()]
    hasher = FeatureHasher(config.n_features, input_type="string", alternate_sign=False)
    counts = hasher.transform(tokens).tocsr()
    counts.sum_duplicates()
    counts.sort_indices()
    write_part(_csr_table(table.column(S.DOC_ID).combine_chunks(), counts), counts_dir, index)
    df = np.bincount(counts.indices, minlength=config.n_features).astype(np.int64)
    token_df: Counter[str] = Counter()
    for doc_tokens in tokens:
        token_df.update(set(doc_tokens))
    return df, Counter(dict(token_df.most_common(config.keyword_vocabulary))), table.num_rows


def _merge_stats(a: tuple, b: tuple, limit: int) -> tuple:
    tokens = a[1] + b[1]
    return a[0] + b[0], Counter(dict(tokens.most_common(limit))), a[2] + b[2]


def _tfidf_part(
    index: int, counts_part: Path, out_dir: Path, models_dir: Path, config: PreprocessConfig
) -> int:
    """Pass 2 on one part: prune, weight and L2-normalise; returns docs left empty."""
    idf = read_idf(models_dir, config.n_features)
    table = pq.read_table(counts_part)
    matrix = read_csr(table, idf.shape[0])
    if config.sublinear_tf:
        matrix.data = np.log(matrix.data) + np.float32(1.0)
    matrix = matrix.multiply(idf[np.newaxis, :]).tocsr()
    matrix.eliminate_zeros()
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    matrix = sp.diags((1.0 / norms).astype(np.float32)) @ matrix
    matrix.sort_indices()
    write_part(
        _csr_table(table.column(S.DOC_ID).combine_chunks(), matrix.astype(np.float32)),
        out_dir,
        index,
    )
    return int(np.sum(np.diff(matrix.indptr) == 0))


def _idf(df: NDArray[np.int64], n_docs: int, config: PreprocessConfig) -> NDArray[np.float32]:
    """Smoothed IDF as scikit-learn's TfidfTransformer; pruned features get weight 0."""
    idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
    keep = (df >= config.min_df) & (df <= config.max_df * n_docs)
    return np.where(keep, idf, 0.0).astype(np.float32)


def _write_models(
    models_dir: Path,
    df: NDArray[np.int64],
    idf: NDArray[np.float32],
    token_df: Counter[str],
    config: PreprocessConfig,
) -> None:
    kept = np.flatnonzero(idf > 0)
    models_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"feature": kept.astype(np.int32), "df": df[kept], "idf": idf[kept]}),
        models_dir / TFIDF_FILE,
    )
    # Name each kept hashed feature by its most frequent token (ties: alphabetical).
    ranked = sorted(token_df.items(), key=lambda kv: (-kv[1], kv[0]))
    tokens = [t for t, _ in ranked]
    ids = hash_tokens(tokens, config.n_features) if tokens else np.array([], np.int64)
    names: dict[int, tuple[str, int]] = {}
    for token, feature, count in zip(tokens, ids.tolist(), (c for _, c in ranked), strict=True):
        if idf[feature] > 0 and feature not in names:
            names[feature] = (token, count)
    features = sorted(names)
    pq.write_table(
        pa.table(
            {
                "feature": pa.array(features, pa.int32()),
                "token": pa.array([names[f][0] for f in features], pa.string()),
                "df": pa.array([names[f][1] for f in features], pa.int64()),
            }
        ),
        models_dir / VOCABULARY_FILE,
    )


def compute_features(
    corpus_dir: Path, features_dir: Path, models_dir: Path, config: PreprocessConfig
) -> FeaturesResult:
    """Compute hashed TF-IDF for every corpus part with Dask.

    Runs on whatever Dask scheduler is active: a `distributed.Client` (LocalCluster or an
    existing cluster) when the caller opened one, else Dask's default local scheduler. Paths
    must be reachable from the workers (local disk on one machine, shared or object storage
    beyond).

    Args:
        corpus_dir: ingested corpus dataset.
        features_dir: output dataset (`doc_id`, `indices`, `values`), replaced atomically.
        models_dir: folder receiving `tfidf.parquet` (df, idf) and `vocabulary.parquet`.
        config: preprocessing settings.

    Returns:
        Counts describing the features.
    """
    parts = dataset_parts(corpus_dir)
    limit = config.keyword_vocabulary
    with atomic_dir(features_dir) as out_dir:
        counts_dir = out_dir / "_counts"
        counts_dir.mkdir()
        bag = db.from_sequence(list(enumerate(parts)), partition_size=1)
        df, token_df, n_docs = (
            bag.map(lambda item: _count_part(item[0], item[1], counts_dir, config))
            .fold(
                lambda a, b: _merge_stats(a, b, limit),
                initial=(np.zeros(config.n_features, np.int64), Counter(), 0),
            )
            .compute()
        )
        idf = _idf(df, n_docs, config)
        _write_models(models_dir, df, idf, token_df, config)
        count_parts = dataset_parts(counts_dir)
        empty = (
            db.from_sequence(list(enumerate(count_parts)), partition_size=1)
            .map(lambda item: _tfidf_part(item[0], item[1], out_dir, models_dir, config))
            .sum()
            .compute()
        )
        for part in count_parts:
            part.unlink()
        counts_dir.rmdir()
    result = FeaturesResult(n_docs, int(np.count_nonzero(idf)), int(empty), len(parts))
    log.info("features: %s", result)
    return result


def read_idf(models_dir: Path, n_features: int) -> NDArray[np.float32]:
    """Dense IDF vector (n_features,); pruned features have weight 0."""
    table = pq.read_table(models_dir / TFIDF_FILE)
    idf = np.zeros(n_features, np.float32)
    idf[table.column("feature").to_numpy()] = table.column("idf").to_numpy()
    return idf


def read_vocabulary(models_dir: Path) -> dict[int, str]:
    """Hashed feature id → its most frequent token, for naming keywords."""
    table = pq.read_table(models_dir / VOCABULARY_FILE)
    return dict(
        zip(table.column("feature").to_pylist(), table.column("token").to_pylist(), strict=True)
    )
