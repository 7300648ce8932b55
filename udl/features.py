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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.bag as db
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.utils import murmurhash3_32

from udl import schema as S
from udl.config import PreprocessConfig
from udl.parallel import compute
from udl.storage import atomic_dir, dataset_parts, write_part, write_table_atomic

__all__ = [
    "FeaturesResult",
    "compute_features",
    "hash_tokens",
    "normalize_texts",
    "read_csr",
    "read_idf",
    "read_vocabulary",
    "tokenize",
]

log = logging.getLogger(__name__)

TFIDF_FILE = "tfidf.parquet"
VOCABULARY_FILE = "vocabulary.parquet"
STOP_WORDS = pa.array(sorted(ENGLISH_STOP_WORDS), pa.string())
# Runs of characters that are not letters, digits or "_": the complement of Python's `\w`,
# so splitting on them and keeping pieces of 2+ characters gives scikit-learn's default
# token pattern `\b\w\w+\b`.
NON_WORD = r"[^\p{L}\p{N}_]+"
# Bytes that are ASCII word characters: letters, digits and "_" (Python's `\w` on ASCII).
WORD_BYTES = np.array([b < 128 and (chr(b).isalnum() or b == ord("_")) for b in range(256)])
TOKEN_STATS = pa.schema([pa.field("token", pa.string()), pa.field("df", pa.int64())])


@dataclass(frozen=True)
class FeaturesResult:
    """Summary of a features computation."""

    n_docs: int
    n_features_kept: int
    n_empty_docs: int  # documents left with no feature after tokenising and pruning
    n_parts: int


def normalize_texts(texts: pa.Array, config: PreprocessConfig) -> pa.Array:
    """Unicode-normalise (NFKC; NFKD minus combining marks when folding accents), then case.

    Args:
        texts: string array of documents.
        config: `strip_accents` and `lowercase`.

    Returns:
        A string array of the same length.
    """
    if config.strip_accents:
        texts = pc.replace_substring_regex(pc.utf8_normalize(texts, "NFKD"), r"\p{Mn}+", "")
    else:
        texts = pc.utf8_normalize(texts, "NFKC")
    return pc.utf8_lower(texts) if config.lowercase else texts


def _ascii_words(texts: pa.Array) -> tuple[NDArray[np.int64], pa.Array]:
    """Maximal runs of [A-Za-z0-9_] in ASCII texts, found on the Arrow data buffer.

    For ASCII text these are exactly the runs of Python's `\\w`, at a fraction of the cost of
    a regex split (a lookup table and a few passes over the bytes).
    """
    texts = pa.concat_arrays([texts, pa.array([""], pa.string())])  # fresh buffers, offset 0
    offsets = np.frombuffer(texts.buffers()[1], np.int32)[: len(texts) + 1].astype(np.int64)
    data = np.frombuffer(texts.buffers()[2] or b"", np.uint8)[: offsets[-1]]
    word = WORD_BYTES[data]
    prev, after = np.zeros_like(word), np.zeros_like(word)
    prev[1:], after[:-1] = word[:-1], word[1:]
    prev[offsets[:-1][offsets[:-1] < len(data)]] = False  # a word never spans two documents
    after[offsets[1:][offsets[1:] > 0] - 1] = False
    starts, ends = np.flatnonzero(word & ~prev), np.flatnonzero(word & ~after) + 1
    lengths = ends - starts
    token_offsets = np.concatenate([[0], np.cumsum(lengths)])
    gather = np.arange(token_offsets[-1]) + np.repeat(starts - token_offsets[:-1], lengths)
    words = pa.StringArray.from_buffers(
        len(starts),
        pa.py_buffer(token_offsets.astype(np.int32)),
        pa.py_buffer(data[gather].tobytes()),
    )
    return np.searchsorted(offsets, starts, side="right") - 1, words


def _words(texts: pa.Array) -> tuple[NDArray[np.int64], pa.Array]:
    """Runs of word characters with their document's position, sorted by document."""
    ascii_docs = pc.fill_null(pc.string_is_ascii(texts), True).to_numpy(zero_copy_only=False)
    fast, slow = np.flatnonzero(ascii_docs), np.flatnonzero(~ascii_docs)
    doc_fast, words_fast = _ascii_words(texts.take(pa.array(fast)))
    split = pc.split_pattern_regex(texts.take(pa.array(slow)), NON_WORD)
    doc_slow = pc.list_parent_indices(split).to_numpy()
    doc = np.concatenate([fast[doc_fast], slow[doc_slow]])
    order = np.argsort(doc, kind="stable")
    words = pa.concat_arrays([words_fast, pc.list_flatten(split)])
    return doc[order], words.take(pa.array(order))


def _tokens(texts: pa.Array, config: PreprocessConfig) -> tuple[NDArray[np.int64], pa.Array]:
    """Every token (words, then word n-grams) with the position of its document.

    Returns:
        (doc, tokens): int64 array and string array of the same length; per document, the
        words come in text order, then its bigrams, trigrams (scikit-learn's order).
    """
    doc, words = _words(normalize_texts(texts, config))
    keep = pc.greater_equal(pc.utf8_length(words), 2)
    if config.stop_words == "english":
        keep = pc.and_(keep, pc.invert(pc.is_in(words, value_set=STOP_WORDS)))
    doc, words = doc[keep.to_numpy(zero_copy_only=False)], words.filter(keep)
    docs, grams = [doc], [words]
    m = len(words)
    for n in range(2, min(config.ngram_max, m) + 1):
        same = doc[: m - n + 1] == doc[n - 1 :]  # doc is sorted: ends in one doc = all in it
        joined = pc.binary_join_element_wise(*(words.slice(j, m - n + 1) for j in range(n)), " ")
        docs.append(doc[: m - n + 1][same])
        grams.append(joined.filter(pa.array(same)))
    doc = np.concatenate(docs)
    if len(docs) == 1:
        return doc, words
    order = np.argsort(doc, kind="stable")
    return doc[order], pa.concat_arrays(grams).take(pa.array(order))


def tokenize(texts: Sequence[str] | pa.Array, config: PreprocessConfig) -> list[list[str]]:
    """Tokens of each document: the analyzer of the features step, for tests and callers.

    Example:
        >>> tokenize(["The Café's menu, the café's wine"], PreprocessConfig(ngram_max=2))
        [['café', 'menu', 'café', 'wine', 'café menu', 'menu café', 'café wine']]
    """
    array = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())
    doc, tokens = _tokens(array, config)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(doc, minlength=len(array)))])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), tokens).to_pylist()


def hash_tokens(tokens: Sequence[str], n_features: int) -> NDArray[np.int64]:
    """Feature id of each token, identical to the id `HashingVectorizer` gives it.

    Signed MurmurHash3 (seed 0) of the UTF-8 bytes, absolute value modulo `n_features`, with
    scikit-learn's special case for -2**31 (whose absolute value does not fit an int32).
    """
    h = np.fromiter((murmurhash3_32(t, 0) for t in tokens), np.int64, count=len(tokens))
    return np.where(
        h == -(2**31), (2**31 - 1 - (n_features - 1)) % n_features, np.abs(h) % n_features
    )


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
    doc, tokens = _tokens(table.column(S.TEXT).combine_chunks(), config)
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
    write_part(_csr_table(table.column(S.DOC_ID).combine_chunks(), counts), counts_dir, index)
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


def read_idf(models_dir: Path, n_features: int) -> NDArray[np.float32]:
    """Dense IDF vector (n_features,); pruned features have weight 0."""
    table = pq.read_table(models_dir / TFIDF_FILE)
    idf = np.zeros(n_features, np.float32)
    idf[table.column("feature").to_numpy()] = table.column("idf").to_numpy()
    return idf


def _tfidf_part(
    index: int, counts_part: Path, out_dir: Path, models_dir: Path, config: PreprocessConfig
) -> int:
    """Pass 2 on one part: prune, weight and L2-normalise; returns docs left empty."""
    idf = read_idf(models_dir, config.n_features)
    table = pq.read_table(counts_part, use_threads=False)
    matrix = read_csr(table, config.n_features)
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
    write_part(_csr_table(table.column(S.DOC_ID).combine_chunks(), matrix), out_dir, index)
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
    kept = np.flatnonzero(idf > 0)
    write_table_atomic(
        pa.table({"feature": kept.astype(np.int32), "df": df[kept], "idf": idf[kept]}),
        models_dir / TFIDF_FILE,
    )
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
        count_parts = dataset_parts(counts_dir)
        empty = compute(
            db.from_sequence(list(enumerate(count_parts)), partition_size=1)
            .map(lambda item: _tfidf_part(item[0], item[1], out_dir, models_dir, config))
            .sum()
        )
        for part in count_parts:
            part.unlink()
        counts_dir.rmdir()
    result = FeaturesResult(n_docs, int(np.count_nonzero(idf)), int(empty), len(parts))
    log.info("features: %s", result)
    return result


def read_vocabulary(models_dir: Path) -> dict[int, str]:
    """Hashed feature id → its most frequent token, for naming keywords."""
    table = pq.read_table(models_dir / VOCABULARY_FILE)
    return dict(
        zip(table.column("feature").to_pylist(), table.column("token").to_pylist(), strict=True)
    )
