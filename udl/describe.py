"""What each cluster is about: size, keywords, representative documents, anomaly, outliers.

`ClusterDescriber` takes the run one part at a time (aligned assignments, corpus texts,
TF-IDF rows and anomaly scores) and keeps only per-cluster sums of TF-IDF (sparse), the best
few candidates per cluster and the top outliers, never the corpus.

Keywords use class-based TF-IDF, in the spirit of BERTopic's c-TF-IDF (Grootendorst, 2022)
with the inverse frequency taken over clusters: a cluster's summed TF-IDF of a word, times
``log(k / e_t)``, where ``e_t`` is the word's *effective number of clusters*, the perplexity
``exp(H)`` of its distribution over the k clusters (its weight in each cluster divided by that
cluster's total weight, so a big cluster does not look like a word's home just by size). A word
spread evenly over every cluster ("having", "used", "usually") has ``e_t = k`` and scores 0
however frequent it is; a word found in one cluster only gets ``log k``. Unlike a count of the
clusters containing a word, this needs no presence threshold, and one stray use of a word
elsewhere barely moves it. With a single cluster there is nothing to contrast and the summed
TF-IDF ranks alone. Words of scikit-learn's English stop list are never keywords (they can get
through with ``preprocess.stop_words: none``). Hashed feature ids are named through the run's
vocabulary (most frequent token per feature); features without a name are skipped, so
keywords are always words.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

__all__ = ["ClusterDescriber", "ClusterSummary", "Description", "Example", "class_tfidf"]


@dataclass(frozen=True, order=True)
class Example:
    """A document shown in the report; ordered by `score` (distance or anomaly)."""

    score: float
    doc_id: str = field(compare=False)
    text: str = field(compare=False)


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster: its size, keywords, documents nearest its centroid and mean anomaly."""

    cluster_id: int
    size: int
    share: float
    keywords: list[str]
    examples: list[Example]
    mean_anomaly: float


@dataclass(frozen=True)
class Description:
    """Every cluster (largest first), the noise pseudo-cluster and the most anomalous documents.

    `n_outliers_flagged` counts the documents whose anomaly score is at least
    `anomaly_threshold` (exact count; the threshold itself comes from a sample). Documents
    without features (every token pruned) are in no cluster, not noise, no representative and
    no outlier: only counted, with the first few as examples.
    """

    clusters: list[ClusterSummary]
    noise: ClusterSummary | None
    outliers: list[Example]
    n_outliers_flagged: int
    anomaly_threshold: float
    n_no_features: int = 0
    no_features_examples: list[Example] = field(default_factory=list)

    @property
    def n_docs(self) -> int:
        """Every document described: clustered, noise and without features."""
        noise = self.noise.size if self.noise else 0
        return sum(c.size for c in self.clusters) + noise + self.n_no_features


EVEN_TOLERANCE = 1e-6


def class_tfidf(sums: sp.csr_matrix) -> sp.csr_matrix:
    """c-TF-IDF of per-cluster summed TF-IDF rows, idf over clusters (module docstring).

    Args:
        sums: float array (n_clusters, n_features), summed TF-IDF of each cluster's documents.

    Returns:
        The same shape: each entry times ``log(k / e_t)`` of its feature (1 when k = 1).
    """
    sums = sp.csr_matrix(sums, dtype=np.float64)
    k = sums.shape[0]
    if k < 2:
        return sums
    row_totals = np.asarray(sums.sum(axis=1)).ravel()
    shares = (sp.diags(1.0 / np.maximum(row_totals, np.finfo(np.float64).tiny)) @ sums).tocoo()
    word_totals = np.bincount(shares.col, weights=shares.data, minlength=sums.shape[1])
    p = shares.data / word_totals[shares.col]
    entropy = np.bincount(shares.col, weights=-p * np.log(p), minlength=sums.shape[1])
    idf = np.log(k) - entropy
    # A perfectly even word's idf is 0 up to rounding (the rows are float32 sums).
    idf[idf < EVEN_TOLERANCE] = 0.0
    return sp.csr_matrix(sums.multiply(idf[np.newaxis, :]))


def _top_keywords(row: sp.csr_matrix, vocabulary: dict[int, str], n: int) -> list[str]:
    keep = row.data > 0
    indices, data = row.indices[keep], row.data[keep]
    keywords: list[str] = []
    if n <= 0:
        return keywords
    # Words in order of score until n are found: a large cluster has 10^5 scored features.
    for i in np.argsort(-data, kind="stable"):
        name = vocabulary.get(int(indices[i]))
        if name and not _stop_words_only(name):
            keywords.append(name)
            if len(keywords) == n:
                break
    return keywords


def _stop_words_only(token: str) -> bool:
    """True for a word, or n-gram of words, from scikit-learn's English stop list."""
    return all(word in ENGLISH_STOP_WORDS for word in token.split())


def _by_score(example: Example) -> tuple[float, str]:
    # Ties (duplicate texts) by doc id: the order must not depend on the order seen.
    return example.score, example.doc_id


def _push(heap: list, item: Example, limit: int) -> None:
    """Keep the `limit` smallest items (max-heap of negated scores; ties by doc id)."""
    entry = (-item.score, item.doc_id, item)
    if len(heap) < limit:
        heapq.heappush(heap, entry)
    elif entry > heap[0]:
        heapq.heapreplace(heap, entry)


def _grow(a: NDArray, size: int) -> NDArray:
    return a if len(a) >= size else np.concatenate([a, np.zeros(size - len(a), a.dtype)])


class ClusterDescriber:
    """Streams a run's parts into a `Description` (see the module docstring).

    Args:
        n_features: width of the hashed TF-IDF rows.
        anomaly_threshold: documents scoring at least this are counted as outliers.
        n_examples: representative documents kept per cluster (nearest its centroid).
        n_outlier_examples: most anomalous documents kept.
    """

    def __init__(
        self,
        n_features: int,
        anomaly_threshold: float,
        n_examples: int = 5,
        n_outlier_examples: int = 10,
    ) -> None:
        self.n_features, self.anomaly_threshold = n_features, anomaly_threshold
        self.n_examples, self.n_outlier_examples = n_examples, n_outlier_examples
        # Row c + 1 holds cluster c, so noise (-1) is row 0.
        self._sizes = np.zeros(1, np.int64)
        self._anomaly = np.zeros(1, np.float64)
        self._sums = sp.csr_matrix((1, n_features), dtype=np.float64)
        self._nearest: dict[int, list] = {}
        self._outliers: list = []
        self._n_flagged = 0
        self._n_no_features = 0
        self._no_features: list[Example] = []

    def fresh(self) -> ClusterDescriber:
        """An empty describer with the same settings (one part's, to `merge` later)."""
        return ClusterDescriber(
            self.n_features, self.anomaly_threshold, self.n_examples, self.n_outlier_examples
        )

    def merge(self, other: ClusterDescriber) -> None:
        """Add what `other` saw, as if its parts had been added here after this one's.

        Merged in part order, the result is the one `update` gives part by part, bit for bit:
        the same sums in the same order, and representatives and outliers chosen by a total
        order (score, then doc id).
        """
        size = max(len(self._sizes), len(other._sizes))
        self._sizes = _grow(self._sizes, size)
        self._anomaly = _grow(self._anomaly, size)
        self._sizes[: len(other._sizes)] += other._sizes
        self._anomaly[: len(other._anomaly)] += other._anomaly
        rows = max(self._sums.shape[0], other._sums.shape[0])
        self._sums.resize((rows, self.n_features))
        theirs = other._sums.copy()
        theirs.resize((rows, self.n_features))
        self._sums = (self._sums + theirs).tocsr()
        for cluster, entries in other._nearest.items():
            heap = self._nearest.setdefault(cluster, [])
            for entry in entries:
                _push(heap, entry[2], self.n_examples)
        for entry in other._outliers:
            _push(self._outliers, entry[2], self.n_outlier_examples)
        self._n_flagged += other._n_flagged
        self._n_no_features += other._n_no_features
        room = max(self.n_examples - len(self._no_features), 0)
        self._no_features.extend(other._no_features[:room])

    def update(
        self,
        doc_ids: pa.Array | pa.ChunkedArray,
        texts: pa.Array | pa.ChunkedArray,
        clusters: NDArray[np.integer],
        distance: NDArray[np.float32],
        anomaly: NDArray[np.float32],
        tfidf: sp.csr_matrix,
        no_features: NDArray[np.bool_] | None = None,
    ) -> None:
        """Add one part: n aligned documents.

        Args:
            doc_ids: n string ids (only the shown documents are converted to Python).
            texts: n texts, likewise.
            clusters: int array (n,), cluster id of each document (-1 = noise).
            distance: float32 array (n,), distance to the own cluster's centroid.
            anomaly: float32 array (n,), anomaly score.
            tfidf: float32 CSR (n, n_features).
            no_features: bool array (n,), documents without features (status
                ``no_features``); None when there are none.
        """
        if no_features is not None and no_features.any():
            self._count_no_features(doc_ids, texts, np.flatnonzero(no_features))
            keep = pa.array(np.flatnonzero(~no_features))
            doc_ids, texts = doc_ids.take(keep), texts.take(keep)
            keep_rows = keep.to_numpy()
            clusters, distance = clusters[keep_rows], distance[keep_rows]
            anomaly, tfidf = anomaly[keep_rows], tfidf[keep_rows]
        self._add(doc_ids, texts, np.asarray(clusters, np.int64), distance, anomaly, tfidf)

    def _count_no_features(
        self, doc_ids: pa.Array | pa.ChunkedArray, texts: pa.Array | pa.ChunkedArray, rows: NDArray
    ) -> None:
        self._n_no_features += len(rows)
        for i in rows[: max(self.n_examples - len(self._no_features), 0)]:
            self._no_features.append(Example(0.0, str(doc_ids[i].as_py()), str(texts[i].as_py())))

    def _add(
        self,
        doc_ids: pa.Array | pa.ChunkedArray,
        texts: pa.Array | pa.ChunkedArray,
        clusters: NDArray[np.int64],
        distance: NDArray[np.float32],
        anomaly: NDArray[np.float32],
        tfidf: sp.csr_matrix,
    ) -> None:
        """Sizes, keyword sums, representatives and outliers of documents with features."""
        row = clusters + 1
        size = int(row.max()) + 1 if len(row) else 1
        self._sizes = _grow(self._sizes, size)
        self._anomaly = _grow(self._anomaly, size)
        self._sizes[:size] += np.bincount(row, minlength=size)
        self._anomaly[:size] += np.bincount(row, weights=anomaly, minlength=size)
        indicator = sp.csr_matrix(
            (np.ones(len(row)), (row, np.arange(len(row)))), shape=(size, len(row))
        )
        self._sums.resize((max(size, self._sums.shape[0]), self.n_features))
        part_sums = (indicator @ tfidf.astype(np.float64)).tocsr()
        part_sums.resize(self._sums.shape)
        self._sums = (self._sums + part_sums).tocsr()
        self._n_flagged += int(np.sum(anomaly >= self.anomaly_threshold))

        def example(i: int, score: float) -> Example:
            return Example(score, str(doc_ids[i].as_py()), str(texts[i].as_py()))

        # Sorting by (cluster, distance) once puts each cluster's nearest documents first.
        order = np.lexsort((distance, row))
        starts = np.flatnonzero(np.r_[True, np.diff(row[order]) != 0])
        for start in starts:
            heap = self._nearest.setdefault(int(row[order[start]]) - 1, [])
            for i in order[start : start + self.n_examples]:
                if row[i] != row[order[start]]:
                    break
                _push(heap, example(int(i), float(distance[i])), self.n_examples)
        top = np.argsort(-anomaly, kind="stable")[: self.n_outlier_examples]
        for i in top:
            _push(self._outliers, example(int(i), -float(anomaly[i])), self.n_outlier_examples)

    def _summary(self, cluster: int, keywords: list[str]) -> ClusterSummary:
        size = int(self._sizes[cluster + 1])
        return ClusterSummary(
            cluster_id=cluster,
            size=size,
            share=size / max(int(self._sizes.sum()) + self._n_no_features, 1),
            keywords=keywords,
            examples=sorted((entry[2] for entry in self._nearest[cluster]), key=_by_score),
            mean_anomaly=float(self._anomaly[cluster + 1] / size),
        )

    def result(self, vocabulary: dict[int, str], n_keywords: int = 10) -> Description:
        """The description of everything added so far.

        Args:
            vocabulary: hashed feature id -> token, to name keywords.
            n_keywords: keywords per cluster.
        """
        # Noise is no topic: its row joins neither the keywords nor the c-TF-IDF weights.
        weights = class_tfidf(self._sums[1:])
        clusters = [
            self._summary(c, _top_keywords(weights[c], vocabulary, n_keywords))
            for c in np.flatnonzero(self._sizes[1:]).tolist()
        ]
        clusters.sort(key=lambda s: (-s.size, s.cluster_id))
        return Description(
            clusters=clusters,
            noise=self._summary(-1, []) if self._sizes[0] else None,
            outliers=[
                Example(-e.score, e.doc_id, e.text)
                for e in sorted((entry[2] for entry in self._outliers), key=_by_score)
            ],
            n_outliers_flagged=self._n_flagged,
            anomaly_threshold=self.anomaly_threshold,
            n_no_features=self._n_no_features,
            no_features_examples=list(self._no_features),
        )
