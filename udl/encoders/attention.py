"""Attention encoder: word tokens → Transformer layers → additive attention pooling.

Tokens are the words of the TF-IDF analyzer (same normalisation and stop words, unigrams),
hashed exactly as the features are, and kept only if the TF-IDF pruning kept their feature;
so the vocabulary is the corpus's kept features and needs no separate tokenizer training.
A document is its first `max_tokens - 1` known tokens after a document token (see
`udl.encoders.modules.AttentionAutoencoder`).

Training needs no labels: the pooled code must reconstruct the document's TF-IDF over the most
frequent features (cosine loss), from a sequence where a `noise` share of the tokens is
masked out — a bag-of-words denoising objective, so the code keeps what distinguishes the
document while the attention layers learn which words matter in context. The reconstruction
error is the anomaly score, as for the autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import NDArray
from sklearn.utils.extmath import randomized_svd

from udl.config import EncoderConfig, PreprocessConfig
from udl.encoders.base import DocumentBatch, to_device
from udl.encoders.estimator import Prepared, TorchEncoder, feature_positions
from udl.encoders.modules import N_SPECIAL, PAD_ID, AttentionAutoencoder
from udl.tokens import hash_tokens, tokenize

__all__ = ["AttentionEncoder", "TokenIds", "token_statistics"]


@dataclass(frozen=True)
class TokenIds:
    """Model token ids of many documents, CSR-style: document i is `ids[offsets[i]:offsets[i+1]]`.

    Attributes:
        ids: int64 (n_tokens,), values >= N_SPECIAL.
        offsets: int64 (n_docs + 1,).
    """

    ids: NDArray[np.int64]
    offsets: NDArray[np.int64]

    @property
    def lengths(self) -> NDArray[np.int64]:
        return np.diff(self.offsets)


def token_statistics(
    tokens: TokenIds, vocab_size: int, dim: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """LSA word vectors and idf of the vocabulary, from tokenised documents.

    The documents' sublinear TF-IDF (1 + log tf) x idf, idf = 1 + log((1 + n) / (1 + df)),
    rows L2-normalised, is factorised by randomised truncated SVD, X ~ U S V^T (Deerwester et
    al., "Indexing by Latent Semantic Analysis", 1990; Halko et al. 2011); word j's vector is
    row j of V S, rescaled so the mean squared norm is 1 (the scale of the random init).

    Args:
        tokens: token ids of n documents (values N_SPECIAL + word index).
        vocab_size: number of words.
        dim: vector width; columns beyond the rank the sample supports stay 0.
        seed: seeds the randomised SVD.

    Returns:
        vectors: float32 (vocab_size, dim), zero for words absent from the documents.
        idf: float32 (vocab_size,), 0 for absent words.
    """
    n = len(tokens.lengths)
    doc = np.repeat(np.arange(n), tokens.lengths)
    counts = sp.csr_matrix(
        (np.ones(len(doc), np.float32), (doc, tokens.ids - N_SPECIAL)), shape=(n, vocab_size)
    )
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=vocab_size)
    idf = np.where(df > 0, 1.0 + np.log((1.0 + n) / (1.0 + df)), 0.0).astype(np.float32)
    counts.data = (1.0 + np.log(counts.data)) * idf[counts.indices]
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    x = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ counts
    vectors = np.zeros((vocab_size, dim), dtype=np.float32)
    rank = min(dim, min(x.shape) - 1)
    if rank >= 1:
        _, s, vt = randomized_svd(x, rank, random_state=seed)
        vectors[:, :rank] = vt.T * s
        vectors /= np.sqrt(max(float((vectors**2).sum(axis=1)[df > 0].mean()), 1e-12))
    return vectors, idf


class AttentionEncoder(TorchEncoder):
    """Estimator around `AttentionAutoencoder` (fit, transform, save/load as `TorchEncoder`)."""

    kind = "attention"
    architecture_keys = ("dim", "hidden_dim", "attention")

    def __init__(
        self,
        config: EncoderConfig,
        preprocess: PreprocessConfig,
        input_features: NDArray[np.int64],
        target_features: NDArray[np.int64],
        seed: int = 0,
    ) -> None:
        """Create an untrained encoder; arguments as `TorchEncoder`, `input_features` being the
        token vocabulary."""
        super().__init__(config, preprocess, input_features, target_features, seed)
        # Word tokens only: n-grams would repeat the words they are made of in the sequence.
        self._words = preprocess.model_copy(update={"ngram_max": 1})

    def _build_model(self) -> AttentionAutoencoder:
        cfg, att = self.config, self.config.attention
        return AttentionAutoencoder(
            vocab_size=len(self.input_features),
            max_tokens=att.max_tokens,
            model_dim=att.model_dim,
            n_layers=att.n_layers,
            n_heads=att.n_heads,
            feedforward_dim=att.feedforward_dim,
            dropout=att.dropout,
            hidden_dim=cfg.hidden_dim,
            dim=cfg.dim,
            n_targets=len(self.target_features),
        )

    def tokenize(self, texts: list[str]) -> TokenIds:
        """Known tokens of each text, in order, truncated to `max_tokens - 1`."""
        token_lists = tokenize(texts, self._words)
        flat = [token for tokens in token_lists for token in tokens]
        # Hash each distinct token once: corpora repeat a small vocabulary many times.
        distinct = list(dict.fromkeys(flat))
        hashed = hash_tokens(distinct, self.preprocess.n_features) if distinct else np.zeros(0)
        pos, present = feature_positions(self.input_features, hashed.astype(np.int64))
        lookup = dict(zip(distinct, np.where(present, pos + N_SPECIAL, -1).tolist(), strict=True))
        ids = np.fromiter((lookup[t] for t in flat), dtype=np.int64, count=len(flat))
        doc = np.repeat(np.arange(len(texts)), [len(tokens) for tokens in token_lists])
        known = ids >= 0
        ids, doc = ids[known], doc[known]
        counts = np.bincount(doc, minlength=len(texts))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        keep = np.arange(len(ids)) - starts[doc] < self.config.attention.max_tokens - 1
        kept_counts = np.bincount(doc[keep], minlength=len(texts))
        offsets = np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int64)
        return TokenIds(ids[keep], offsets)

    def _initialise(self, train_set: Prepared) -> None:
        """LSA token embeddings and idf salience from the training documents' tokens."""
        vectors, idf = token_statistics(
            train_set.inputs, len(self.input_features), self.config.attention.model_dim, self.seed
        )
        seen = idf > 0
        rows = torch.from_numpy(np.flatnonzero(seen) + N_SPECIAL).to(self.device)
        with torch.no_grad():
            self.model.token_embedding.weight[rows] = torch.from_numpy(vectors[seen]).to(
                self.device
            )
            # Softmax of log(idf) weighs words by idf: pooling starts as an idf-weighted mean.
            self.model.token_salience.weight[rows, 0] = torch.from_numpy(np.log(idf[seen])).to(
                self.device
            )

    def _prepare_inputs(self, docs: DocumentBatch) -> TokenIds:
        return self.tokenize(docs.texts)

    def _batch_inputs(
        self,
        inputs: TokenIds,
        rows: NDArray[np.int64],
        noise: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, ...]:
        """Right-padded token ids (b, L) and mask (b, L), L = longest document in the batch."""
        lengths = inputs.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        mask = np.arange(width)[None, :] < lengths[:, None]
        token_ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        token_ids[mask] = np.concatenate(
            [inputs.ids[inputs.offsets[r] : inputs.offsets[r + 1]] for r in rows]
        )
        ids_t, mask_t = torch.from_numpy(token_ids), torch.from_numpy(mask)
        if noise > 0:
            mask_t = mask_t & (torch.rand(mask_t.shape, generator=generator) >= noise)
            ids_t = ids_t.masked_fill(~mask_t, PAD_ID)
        return to_device((ids_t, mask_t), self.device)

    def _lengths(self, prepared: Prepared) -> NDArray[np.int64]:
        return prepared.inputs.lengths
