"""Tokenisation and feature hashing: the analyzer of the features step.

Documents are normalised with Arrow compute kernels and tokenised vectorised over an Arrow
array (a byte table over the buffer for ASCII documents, Arrow's regex split for the rest);
tokens hash to feature ids with the MurmurHash3 scheme of scikit-learn's `HashingVectorizer`,
so ids agree with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.utils import murmurhash3_32

from udl.config import PreprocessConfig

__all__ = ["hash_tokens", "normalize_texts", "split_tokens", "tokenize"]

STOP_WORDS = pa.array(sorted(ENGLISH_STOP_WORDS), pa.string())
# Runs of characters that are not letters, digits or "_": the complement of Python's `\w`,
# so splitting on them and keeping pieces of 2+ characters gives scikit-learn's default
# token pattern `\b\w\w+\b`.
NON_WORD = r"[^\p{L}\p{N}_]+"
# Bytes that are ASCII word characters: letters, digits and "_" (Python's `\w` on ASCII).
WORD_BYTES = np.array([b < 128 and (chr(b).isalnum() or b == ord("_")) for b in range(256)])


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


def split_tokens(texts: pa.Array, config: PreprocessConfig) -> tuple[NDArray[np.int64], pa.Array]:
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
    doc, tokens = split_tokens(array, config)
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
