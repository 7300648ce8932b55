"""Cluster keywords (issue 22): generic words spread over every cluster never win, stop words
are never keywords, and a single cluster still gets keywords.

The describer is fed hand-built TF-IDF rows, so the scores are known exactly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from udl.describe import ClusterDescriber, class_tfidf

VOCABULARY = {0: "having", 1: "galaxy", 2: "telescope", 3: "flour", 4: "oven", 5: "goal", 6: "the"}


def _keywords(rows: list[dict[int, float]], clusters: list[int], n: int = 3) -> list[list[str]]:
    """Keywords of each cluster (largest first) for documents given as {feature: weight}."""
    tfidf = sp.csr_matrix(
        (
            [w for row in rows for w in row.values()],
            [f for row in rows for f in row],
            np.cumsum([0] + [len(row) for row in rows]),
        ),
        shape=(len(rows), len(VOCABULARY)),
        dtype=np.float32,
    )
    describer = ClusterDescriber(len(VOCABULARY), anomaly_threshold=1.0, n_examples=1)
    n = len(rows)
    describer.update(
        doc_ids=pa.array([f"d{i}" for i in range(n)]),
        texts=pa.array(["text"] * n),
        clusters=np.array(clusters),
        distance=np.zeros(n, np.float32),
        anomaly=np.zeros(n, np.float32),
        tfidf=tfidf,
    )
    return [c.keywords for c in describer.result(VOCABULARY, n_keywords=n).clusters]


def test_word_spread_over_every_cluster_is_no_keyword_22() -> None:
    """'having' has half the weight of every document of every cluster: BERTopic's
    log(1 + A / f_t) weighting still made it a keyword of each cluster."""
    docs = [{0: 0.8, 1: 0.4, 2: 0.4}] * 10 + [{0: 0.8, 3: 0.8}] * 8 + [{0: 0.8, 4: 0.3, 5: 0.5}] * 8
    clusters = [0] * 10 + [1] * 8 + [2] * 8
    assert _keywords(docs, clusters) == [
        ["galaxy", "telescope"],
        ["flour"],
        ["goal", "oven"],
    ]


def test_idf_over_clusters_by_hand_22() -> None:
    sums = sp.csr_matrix(np.array([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0]]))
    # Feature 0 is even (e = 2, idf 0); features 1 and 2 sit in one cluster each (idf log 2).
    expected = np.array([[0.0, np.log(2), 0.0], [0.0, 0.0, np.log(2)]])
    np.testing.assert_allclose(class_tfidf(sums).toarray(), expected, atol=1e-12)


def test_stop_words_are_never_keywords_22() -> None:
    """With preprocess.stop_words: none, 'the' reaches the features; it is still no keyword."""
    docs = [{6: 0.9, 1: 0.3}] * 5 + [{3: 0.7}] * 5
    assert _keywords(docs, [0] * 5 + [1] * 5) == [["galaxy"], ["flour"]]


def test_single_cluster_ranks_by_tfidf_22() -> None:
    docs = [{0: 0.2, 1: 0.9, 2: 0.5}] * 4
    assert _keywords(docs, [0] * 4) == [["galaxy", "telescope", "having"]]
