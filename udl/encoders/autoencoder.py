"""Denoising autoencoder on hashed TF-IDF features.

The first layer is an `nn.EmbeddingBag` weighted by the TF-IDF values (see
`udl.encoders.modules.SparseAutoencoder`), with one row per feature kept by the TF-IDF
pruning rather than per hashed bucket, which keeps the model small. Training masks a `noise`
share of each document's features (Vincent et al., "Extracting and Composing Robust Features
with Denoising Autoencoders", 2008) and reconstructs the document's L2-normalised TF-IDF over
the most frequent features; the loss is the cosine distance between reconstruction and target,
which suits TF-IDF (direction, not magnitude). The per-document reconstruction error is the
anomaly score.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import NDArray

from udl.encoders.base import DocumentBatch, to_device
from udl.encoders.estimator import TorchEncoder, feature_positions
from udl.encoders.modules import SparseAutoencoder

__all__ = ["AutoencoderEncoder"]


class AutoencoderEncoder(TorchEncoder):
    """Estimator around `SparseAutoencoder`: fit on a sample, transform in batches, save/load."""

    kind = "autoencoder"

    def _build_model(self) -> SparseAutoencoder:
        cfg = self.config
        return SparseAutoencoder(
            len(self.input_features), cfg.hidden_dim, cfg.dim, len(self.target_features)
        )

    def _prepare_inputs(self, docs: DocumentBatch) -> sp.csr_matrix:
        """TF-IDF with columns renumbered to model rows; features the model lacks are dropped
        (only possible after a warm start on a corpus with other kept features)."""
        csr = docs.tfidf
        pos, present = feature_positions(self.input_features, csr.indices)
        doc_of_entry = np.repeat(np.arange(len(docs)), np.diff(csr.indptr))
        counts = np.bincount(doc_of_entry[present], minlength=len(docs))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return sp.csr_matrix(
            (csr.data[present], pos[present], indptr),
            shape=(len(docs), len(self.input_features)),
            dtype=np.float32,
        )

    def _batch_inputs(
        self,
        inputs: sp.csr_matrix,
        rows: NDArray[np.int64],
        noise: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, ...]:
        batch = inputs[rows]
        indices = torch.from_numpy(batch.indices.astype(np.int64))
        offsets = torch.from_numpy(batch.indptr[:-1].astype(np.int64))
        weights = torch.from_numpy(batch.data.astype(np.float32))
        if noise > 0:
            weights = weights * (torch.rand(weights.shape, generator=generator) >= noise)
        return to_device((indices, offsets, weights), self.device)
