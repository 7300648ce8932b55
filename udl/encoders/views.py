"""The two-view encoder's lexical view (LSA of the TF-IDF) and how both views are mixed: numpy
and scipy only, on one BLAS thread where results must not depend on the thread count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from udl.encoders.base import row_norms
from udl.encoders.estimator import feature_positions

__all__ = ["LexicalView", "mix_views", "single_threaded_blas", "unit_rows"]


def single_threaded_blas() -> threadpool_limits:
    """BLAS on one thread: multithreaded BLAS/LAPACK results depend on the thread count, and
    a rerun in another process (a resumed run, a Dask worker) must write the same bytes."""
    return threadpool_limits(limits=1, user_api="blas")


def unit_rows(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """`x` (n, d) as float32 rows of unit length; a zero row stays zero."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(row_norms(x), 1e-12)[:, None]


def mix_views(
    semantic: NDArray[np.float32],
    lexical: NDArray[np.float32],
    n_terms: NDArray[np.int64],
    c: float,
) -> NDArray[np.float32]:
    """Concatenate unit semantic (n, a) and lexical (n, b) vectors with per-document weights
    sqrt(c / (n_terms + c)) and sqrt(n_terms / (n_terms + c)); rows keep unit length.

    Example:
        >>> v = mix_views(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([24]), 24.0)
        >>> np.round(v, 3).tolist()
        [[0.707, 0.0, 0.0, 0.707]]
    """
    n = n_terms.astype(np.float64)[:, None]
    semantic_weight = np.sqrt(c / (n + c)).astype(np.float32)
    lexical_weight = np.sqrt(n / (n + c)).astype(np.float32)
    # Written in place in float32: the weights broadcast to float64 (n, a + b) arrays and a
    # stack of them cost more than the student's forward pass.
    out = np.empty((len(n), semantic.shape[1] + lexical.shape[1]), np.float32)
    np.multiply(semantic, semantic_weight, out=out[:, : semantic.shape[1]])
    np.multiply(lexical, lexical_weight, out=out[:, semantic.shape[1] :])
    return out


@dataclass(frozen=True)
class LexicalView:
    """LSA of TF-IDF rows.

    Attributes:
        features: sorted int64 (m,) hashed feature ids the view reads.
        components: float32 (m, dim), the right singular vectors of the training TF-IDF.
    """

    features: NDArray[np.int64]
    components: NDArray[np.float32]

    @classmethod
    def fit(
        cls, tfidf: sp.csr_matrix, features: NDArray[np.int64], dim: int, seed: int
    ) -> LexicalView:
        """Randomised truncated SVD (Halko et al. 2011) of `tfidf` restricted to `features`;
        columns beyond the rank the sample supports stay 0."""
        x = _restrict(tfidf, features)
        components = np.zeros((len(features), dim), np.float32)
        rank = min(dim, min(x.shape) - 1)
        if rank >= 1 and x.nnz:
            with single_threaded_blas():
                _, _, vt = randomized_svd(x, rank, random_state=seed)
            components[:, :rank] = vt.T
        return cls(np.asarray(features, np.int64), components)

    def transform(self, tfidf: sp.csr_matrix) -> NDArray[np.float32]:
        """Unit LSA vectors (n, dim); zero for a document without any of the features."""
        return unit_rows(np.asarray(_restrict(tfidf, self.features) @ self.components, np.float32))


def _restrict(tfidf: sp.csr_matrix, features: NDArray[np.int64]) -> sp.csr_matrix:
    """`tfidf` (n, n_hashed) as (n, len(features)) over the sorted feature ids `features`."""
    pos, present = feature_positions(features, tfidf.indices.astype(np.int64))
    rows = np.repeat(np.arange(tfidf.shape[0]), np.diff(tfidf.indptr))
    return sp.csr_matrix(
        (tfidf.data[present], (rows[present], pos[present])),
        shape=(tfidf.shape[0], len(features)),
        dtype=np.float32,
    )
