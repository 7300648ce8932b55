"""Hashed TF-IDF features, computed partition by partition with Dask.

Two passes over the corpus parts, each partition-parallel and out of core:

1. per part: normalise with Arrow compute kernels and tokenise vectorised over the part (a
   byte table over the Arrow buffer for ASCII documents, Arrow's regex split for the rest;
   no Python loop per document), hash each distinct token once to its feature id (the
   MurmurHash3 scheme of scikit-learn's `HashingVectorizer`, so ids agree with it), write raw
   counts, and return document frequencies plus the part's most frequent token strings; a
   Dask tree reduction sums them into the IDF and a vocabulary naming the hashed features;
2. per part: apply pruning (min_df/max_df), sublinear tf, IDF and L2 normalisation.

Memory is bounded by one part per worker task: the reduction carries a dense df vector
(`n_features` int64) and at most `keyword_vocabulary` token strings, whatever the corpus size.
Feature parts mirror corpus parts one to one and keep row order, so later steps can stream
corpus, features and embeddings side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import dask.bag as db
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from udl import schema as S
from udl.config import PreprocessConfig
from udl.datasets import (
    TFIDF_FILE,
    VOCABULARY_FILE,
    features_table,
    read_csr,
    read_idf,
    tfidf_table,
)
from udl.parallel import compute
from udl.storage import atomic_dir, dataset_parts, write_part, write_table_atomic
from udl.tokens import hash_tokens, split_tokens

__all__ = ["FeaturesResult", "compute_features", "transform_features"]

log = logging.getLogger(__name__)

TOKEN_STATS = pa.schema([pa.field("token", pa.string()), pa.field("df", pa.int64())])


@dataclass(frozen=True)
class FeaturesResult:
    """Summary of a features computation."""

    n_docs: int
    n_features_kept: int
    n_empty_docs: int  # documents left with no feature after tokenising and pruning
    n_parts: int


def _top_tokens(stats: pa.Table, limit: int) -> pa.Table:
    """The `limit` tokens of highest df; ties broken by token so every run keeps the same."""
    order = pc.sort_indices(stats, [("df", "descending"), ("token", "ascending")])
    return stats.take(order[:limit])


def _count_part(
    index: int, corpus_part: Path, counts_dir: Path, config: PreprocessConfig
) -> tuple[NDArray[np.int64], pa.Table, int]:
    """Pass 1 on one part: write raw hashed counts; return df, top token df and row count."""
    table = pq.read_table(corpus_part, columns=[S.DOC_ID, S.TEXT], use_threads=False)
    n_docs = table.num_rows
    doc, tokens = split_tokens(table.column(S.TEXT).combine_chunks(), config)
    encoded = pc.dictionary_encode(tokens)
    token_index = encoded.indices.to_numpy().astype(np.int64)
    vocab = encoded.dictionary
    features = hash_tokens(vocab.to_pylist(), config.n_features)
    # (row, col) pairs with repeats: the COO -> CSR conversion sums them into counts.
    counts = sp.csr_matrix(
        (np.ones(len(doc), np.float32), (doc, features[token_index])),
        shape=(n_docs, config.n_features),
    )
    counts.sum_duplicates()
    counts.sort_indices()
    write_part(features_table(table.column(S.DOC_ID).combine_chunks(), counts), counts_dir, index)
    df = np.bincount(counts.indices, minlength=config.n_features).astype(np.int64)
    # Same trick per distinct token: its column's stored entries are the documents holding it.
    by_token = sp.csr_matrix(
        (np.ones(len(doc), np.float32), (doc, token_index)), shape=(n_docs, len(vocab))
    )
    by_token.sum_duplicates()
    token_df = np.bincount(by_token.indices, minlength=len(vocab)).astype(np.int64)
    stats = pa.Table.from_arrays([vocab, pa.array(token_df)], schema=TOKEN_STATS)
    return df, _top_tokens(stats, config.keyword_vocabulary), n_docs


def _merge_stats(a: tuple, b: tuple, limit: int) -> tuple:
    """Sum two pass-1 results; the token table stays capped at `limit` rows."""
    grouped = (
        pa.concat_tables([a[1], b[1]])
        .group_by("token", use_threads=False)
        .aggregate([("df", "sum")])
    )
    tokens = pa.Table.from_arrays([grouped["token"], grouped["df_sum"]], schema=TOKEN_STATS)
    return a[0] + b[0], _top_tokens(tokens, limit), a[2] + b[2]


def _tfidf_part(
    index: int, counts_part: Path, out_dir: Path, models_dir: Path, config: PreprocessConfig
) -> int:
    """Pass 2 on one part: prune, weight and L2-normalise; returns docs left empty."""
    # The IDF of a run written before widths were recorded (`transform_features`) has it here.
    idf = read_idf(models_dir, legacy=config.n_features)
    table = pq.read_table(counts_part, use_threads=False)
    matrix = read_csr(table)
    n_docs = matrix.shape[0]
    data = matrix.data.astype(np.float64)
    if config.sublinear_tf:
        data = np.log(data) + 1.0
    weighted = data * idf[matrix.indices]
    rows = np.repeat(np.arange(n_docs), np.diff(matrix.indptr))
    keep = weighted != 0  # features pruned by min_df/max_df have idf 0
    rows, indices, weighted = rows[keep], matrix.indices[keep], weighted[keep]
    norms = np.sqrt(np.bincount(rows, weighted**2, minlength=n_docs))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_docs))])
    matrix = sp.csr_matrix(
        ((weighted / norms[rows]).astype(np.float32), indices, indptr),
        shape=matrix.shape,
    )
    write_part(features_table(table.column(S.DOC_ID).combine_chunks(), matrix), out_dir, index)
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
    tokens: pa.Table,
    config: PreprocessConfig,
) -> None:
    write_table_atomic(tfidf_table(df, idf, np.flatnonzero(idf > 0)), models_dir / TFIDF_FILE)
    # Name each kept hashed feature by its most frequent token (`tokens` is ranked).
    ranked = tokens.column("token").to_pylist()
    ids = hash_tokens(ranked, config.n_features)
    alive = idf[ids] > 0
    _, first = np.unique(ids[alive], return_index=True)
    chosen = np.flatnonzero(alive)[first]  # np.unique sorts, so features come out ascending
    write_table_atomic(
        pa.table(
            {
                "feature": pa.array(ids[chosen], pa.int32()),
                "token": tokens.column("token").take(pa.array(chosen)),
                "df": tokens.column("df").take(pa.array(chosen)),
            }
        ),
        models_dir / VOCABULARY_FILE,
    )


def compute_features(
    corpus_dir: Path, features_dir: Path, models_dir: Path, config: PreprocessConfig
) -> FeaturesResult:
    """Compute hashed TF-IDF for every corpus part with Dask.

    Runs on whatever Dask scheduler is active: a `distributed.Client` (LocalCluster or an
    existing cluster, see `udl.parallel.dask_client`) when the caller opened one, else this
    process (`udl.parallel.compute`). Paths must be reachable from the workers (local disk on one machine,
    shared storage beyond). The result does not depend on the scheduler or worker count.

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
    empty_stats = (np.zeros(config.n_features, np.int64), TOKEN_STATS.empty_table(), 0)
    with atomic_dir(features_dir) as out_dir:
        counts_dir = out_dir / "_counts"
        counts_dir.mkdir()
        df, tokens, n_docs = compute(
            db.from_sequence(list(enumerate(parts)), partition_size=1)
            .map(lambda item: _count_part(item[0], item[1], counts_dir, config))
            .fold(lambda a, b: _merge_stats(a, b, limit), initial=empty_stats)
        )
        idf = _idf(df, n_docs, config)
        _write_models(models_dir, df, idf, tokens, config)
        empty = _weigh_counts(counts_dir, out_dir, models_dir, config)
    result = FeaturesResult(n_docs, int(np.count_nonzero(idf)), empty, len(parts))
    log.info("features: %s", result)
    return result


def _weigh_counts(
    counts_dir: Path, out_dir: Path, models_dir: Path, config: PreprocessConfig
) -> int:
    """Pass 2 over every counts part (then removed); returns the documents left empty."""
    count_parts = dataset_parts(counts_dir)
    empty = compute(
        db.from_sequence(list(enumerate(count_parts)), partition_size=1)
        .map(lambda item: _tfidf_part(item[0], item[1], out_dir, models_dir, config))
        .sum()
    )
    for part in count_parts:
        part.unlink()
    counts_dir.rmdir()
    return int(empty)


def transform_features(
    corpus_dir: Path, features_dir: Path, models_dir: Path, config: PreprocessConfig
) -> FeaturesResult:
    """Hashed TF-IDF of new documents with a finished run's IDF: nothing is refitted, so a
    document gets exactly the features it has (or would have) in that run.

    Args:
        corpus_dir: ingested corpus dataset of the new documents.
        features_dir: output dataset, replaced atomically.
        models_dir: the run's ``models/`` (its ``tfidf.parquet``); only read.
        config: the run's preprocessing settings (tokenisation, hashing, sublinear tf).

    Returns:
        Counts describing the features (``n_features_kept``: the run's).
    """
    parts = dataset_parts(corpus_dir)
    with atomic_dir(features_dir) as out_dir:
        counts_dir = out_dir / "_counts"
        counts_dir.mkdir()
        n_docs = compute(
            db.from_sequence(list(enumerate(parts)), partition_size=1)
            .map(lambda item: _count_part(item[0], item[1], counts_dir, config)[2])
            .sum()
        )
        empty = _weigh_counts(counts_dir, out_dir, models_dir, config)
    n_kept = int(np.count_nonzero(read_idf(models_dir, legacy=config.n_features)))
    return FeaturesResult(int(n_docs), n_kept, empty, len(parts))
