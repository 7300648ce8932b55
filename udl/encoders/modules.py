"""Small, serialisable torch modules the encoders are built from.

Every module has typed constructor arguments, `config_keys`, `get_config_dict()` and a
`__repr__` that prints its config, so a checkpoint's `config.json` rebuilds it with
`cls(**config)`. Masks are boolean tensors with True on real tokens; modules never modify
the caller's mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionAutoencoder",
    "AttentionPooling",
    "DistilledStudent",
    "SelfAttentionBlock",
    "SparseAutoencoder",
    "cosine_error",
]

# Token id 0 pads; 1 is the document token prepended to every sequence, so even a document
# with no known token has one position to attend to and pool (no all-masked softmax).
PAD_ID = 0
DOC_ID = 1
N_SPECIAL = 2


class _Configurable(nn.Module):
    config_keys: tuple[str, ...] = ()

    def get_config_dict(self) -> dict[str, Any]:
        """The constructor arguments, as `config.json` stores them."""
        return {key: getattr(self, key) for key in self.config_keys}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config_dict()})"


def cosine_error(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cosine distance (n,) between reconstructions and targets, in float32.

    A zero target (a document with no reconstructed feature) has error 1.
    """
    return 1.0 - F.cosine_similarity(reconstruction.float(), target.float(), dim=1, eps=1e-8)


def _decoder(dim: int, hidden_dim: int, n_targets: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_targets))


class SparseAutoencoder(_Configurable):
    """EmbeddingBag encoder → `dim` code → MLP decoder over `n_targets` features.

    The EmbeddingBag weighted by TF-IDF values is a sparse-dense product that never
    materialises the (n_docs, n_features) input.
    """

    config_keys = ("n_features", "hidden_dim", "dim", "n_targets")

    def __init__(self, n_features: int, hidden_dim: int, dim: int, n_targets: int) -> None:
        super().__init__()
        self.n_features, self.hidden_dim, self.dim, self.n_targets = (
            n_features,
            hidden_dim,
            dim,
            n_targets,
        )
        self.bag = nn.EmbeddingBag(n_features, hidden_dim, mode="sum")
        self.bag_bias = nn.Parameter(torch.zeros(hidden_dim))
        self.encoder = nn.Sequential(nn.ReLU(), nn.Linear(hidden_dim, dim))
        self.decoder = _decoder(dim, hidden_dim, n_targets)
        # Rows are L2-normalised TF-IDF, so this keeps the first activations at unit scale.
        nn.init.normal_(self.bag.weight, std=hidden_dim**-0.5)

    def encode(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Codes (n_docs, dim) of a CSR batch given as flat indices, offsets and weights."""
        hidden = self.bag(indices, offsets, per_sample_weights=weights) + self.bag_bias
        return self.encoder(hidden)


class SelfAttentionBlock(_Configurable):
    """Pre-norm Transformer encoder layer on `scaled_dot_product_attention` with a key mask."""

    config_keys = ("model_dim", "n_heads", "feedforward_dim", "dropout")

    def __init__(self, model_dim: int, n_heads: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        self.model_dim, self.n_heads, self.feedforward_dim, self.dropout = (
            model_dim,
            n_heads,
            feedforward_dim,
            dropout,
        )
        self.attention_norm = nn.LayerNorm(model_dim)
        self.qkv = nn.Linear(model_dim, 3 * model_dim)
        self.out = nn.Linear(model_dim, model_dim)
        self.feedforward_norm = nn.LayerNorm(model_dim)
        self.feedforward = nn.Sequential(
            nn.Linear(model_dim, feedforward_dim), nn.GELU(), nn.Linear(feedforward_dim, model_dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Transform tokens x (b, L, model_dim); mask (b, L) bool, True on real tokens.

        Real tokens attend only to real tokens, so padding never changes their outputs.
        """
        b, length, _ = x.shape
        head_dim = self.model_dim // self.n_heads
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(b, length, 3, self.n_heads, head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask[:, None, None, :],  # broadcast over heads and query positions
            dropout_p=self.dropout if self.training else 0.0,
        )
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(b, length, self.model_dim)))
        return x + self.drop(self.feedforward(self.feedforward_norm(x)))


class AttentionPooling(_Configurable):
    """Additive attention pooling: score_i = w·tanh(W h_i + b), softmax over real tokens.

    Bahdanau et al., "Neural Machine Translation by Jointly Learning to Align and Translate"
    (2015); as a document pooling, Yang et al., "Hierarchical Attention Networks" (2016).
    """

    config_keys = ("model_dim", "hidden_dim")

    def __init__(self, model_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.model_dim, self.hidden_dim = model_dim, hidden_dim
        self.project = nn.Linear(model_dim, hidden_dim)
        self.score = nn.Linear(hidden_dim, 1, bias=False)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool tokens (b, L, model_dim) under mask (b, L) bool.

        Args:
            tokens: (b, L, model_dim) token states.
            mask: (b, L) bool, True on real tokens.
            bias: optional (b, L) prior added to the scores (log-weights), e.g. a learned
                per-word salience.

        Returns:
            pooled (b, model_dim) and weights (b, L): exactly 0 on padding, summing to 1 over
            real tokens; a row without real tokens pools to zeros.
        """
        scores = self.score(torch.tanh(self.project(tokens))).squeeze(-1).float()
        if bias is not None:
            scores = scores + bias.float()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * mask
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        pooled = torch.einsum("bl,bld->bd", weights.to(tokens.dtype), tokens)
        return pooled, weights


class AttentionAutoencoder(_Configurable):
    """Token + position embeddings → Transformer blocks → attention pooling → `dim` code,
    and an MLP decoder from the code to the document's TF-IDF over `n_targets` features.

    Token ids: 0 pads, 1 is the document token (added here, at position 0), and
    `N_SPECIAL + i` is the i-th kept feature.
    """

    config_keys = (
        "vocab_size",
        "max_tokens",
        "model_dim",
        "n_layers",
        "n_heads",
        "feedforward_dim",
        "dropout",
        "hidden_dim",
        "dim",
        "n_targets",
    )

    def __init__(
        self,
        vocab_size: int,
        max_tokens: int,
        model_dim: int,
        n_layers: int,
        n_heads: int,
        feedforward_dim: int,
        dropout: float,
        hidden_dim: int,
        dim: int,
        n_targets: int,
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_tokens, self.model_dim, self.n_layers = (
            vocab_size,
            max_tokens,
            model_dim,
            n_layers,
        )
        self.n_heads, self.feedforward_dim, self.dropout = n_heads, feedforward_dim, dropout
        self.hidden_dim, self.dim, self.n_targets = hidden_dim, dim, n_targets
        self.token_embedding = nn.Embedding(vocab_size + N_SPECIAL, model_dim, padding_idx=PAD_ID)
        # Per-word prior on the pooling scores (a log-weight), so word importance need not be
        # relearned from context; zero (uniform) until the encoder initialises it from idf.
        self.token_salience = nn.Embedding(vocab_size + N_SPECIAL, 1)
        self.position_embedding = nn.Embedding(max_tokens, model_dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(model_dim, n_heads, feedforward_dim, dropout)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(model_dim)
        self.pooling = AttentionPooling(model_dim, model_dim)
        self.project = nn.Linear(model_dim, dim)
        self.decoder = _decoder(dim, hidden_dim, n_targets)
        nn.init.normal_(self.token_embedding.weight, std=model_dim**-0.5)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        nn.init.zeros_(self.token_salience.weight)
        with torch.no_grad():
            self.token_embedding.weight[PAD_ID].zero_()

    def token_states(
        self, token_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextual states (b, L+1, model_dim) and their mask (b, L+1), document token first.

        Args:
            token_ids: int64 (b, L) with L <= max_tokens - 1, padding anywhere masked out.
            attention_mask: bool (b, L), True on real tokens.
        """
        b = token_ids.shape[0]
        doc = torch.full((b, 1), DOC_ID, dtype=token_ids.dtype, device=token_ids.device)
        ids = torch.cat([doc, token_ids], dim=1)
        mask = torch.cat([torch.ones_like(doc, dtype=torch.bool), attention_mask], dim=1)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)[None]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x), mask

    def encode(self, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Codes (b, dim): attention-pooled token states, projected."""
        states, mask = self.token_states(token_ids, attention_mask)
        doc = torch.full_like(token_ids[:, :1], DOC_ID)
        salience = self.token_salience(torch.cat([doc, token_ids], dim=1)).squeeze(-1)
        pooled, _ = self.pooling(states, mask, salience)
        return self.project(pooled)


class DistilledStudent(_Configurable):
    """Bag of tokens with attention pooling by token salience, then a linear map to the
    teacher's space.

    A document's vector is sum_i a_i e(t_i) over its tokens, with a_i = softmax_i(s(t_i)) over
    the document's own tokens: additive attention whose score depends on the token alone, so
    pooling reads a document of any length in one pass over its tokens (no padding, no window).
    Token vectors start from the teacher's distilled vocabulary, salience from 0 (a plain
    mean); training fits both and the head to the teacher's embeddings of a sample.
    """

    config_keys = ("vocab_size", "token_dim", "dim")

    def __init__(self, vocab_size: int, token_dim: int, dim: int) -> None:
        super().__init__()
        self.vocab_size, self.token_dim, self.dim = vocab_size, token_dim, dim
        self.tokens = nn.EmbeddingBag(vocab_size, token_dim, mode="sum")
        self.salience = nn.Embedding(vocab_size, 1)
        nn.init.zeros_(self.salience.weight)
        self.head = nn.Linear(token_dim, dim)

    def pool(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Pooled token vectors (n_docs, token_dim) of a flat CSR batch.

        Args:
            ids: int64 (n_tokens,) token ids of all documents, one after the other.
            offsets: int64 (n_docs + 1,) start of each document in `ids`, then len(ids).

        A document without tokens pools to zeros.
        """
        n_docs = len(offsets) - 1
        doc = torch.repeat_interleave(torch.arange(n_docs, device=ids.device), offsets.diff())
        score = self.salience(ids).squeeze(-1).float().clamp(-20.0, 20.0)
        # Softmax within each document; the largest score of a document is subtracted first.
        top = torch.full((n_docs,), -20.0, device=ids.device).scatter_reduce(
            0, doc, score, reduce="amax"
        )
        weight = torch.exp(score - top[doc])
        total = torch.zeros(n_docs, device=ids.device).index_add(0, doc, weight)
        weight = weight / total[doc].clamp_min(1e-12)
        return self.tokens(
            ids, offsets[:-1], per_sample_weights=weight.to(self.tokens.weight.dtype)
        )

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Student embeddings (n_docs, dim) in the teacher's space."""
        return self.head(self.pool(ids, offsets))
