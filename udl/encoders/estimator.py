"""The estimator shared by the trainable encoders: fit, transform, save/load, warm start.

A subclass says how to build its module and how to turn documents into the module's inputs;
everything else — the reconstruction target, training, batched inference, the anomaly score
(cosine reconstruction error) and checkpoints — lives here, so every trainable encoder
behaves the same way towards `udl.embed` and DEC.
"""

from __future__ import annotations

import json
import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from udl.config import EncoderConfig, PreprocessConfig
from udl.datasets import ENCODER_CONFIG_FILE, ENCODER_WEIGHTS_FILE, KeptFeatures
from udl.encoders.base import DocumentBatch, resolve_device, seed_everything
from udl.encoders.dec import DECResult, InitialClusters, refine
from udl.encoders.modules import cosine_error
from udl.encoders.training import TrainingResult, autocast, epoch_budget, train
from udl.errors import ConfigError

__all__ = [
    "Prepared",
    "TorchEncoder",
    "feature_positions",
    "read_checkpoint",
]


# Tokenisation settings that decide which hashed feature a word lands in; a checkpoint is
# only meaningful for features hashed the same way.
HASHING_KEYS = ("n_features", "lowercase", "strip_accents", "stop_words", "ngram_max")


def feature_positions(
    features: NDArray[np.int64], ids: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Position of each hashed feature id in the sorted array `features`, and whether present.

    Example:
        >>> pos, ok = feature_positions(np.array([3, 7]), np.array([7, 5, 3]))
        >>> pos[ok].tolist(), ok.tolist()
        ([1, 0], [True, False, True])
    """
    pos = np.searchsorted(features, ids).astype(np.int64)
    if len(features) == 0:
        return pos, np.zeros(len(ids), dtype=bool)
    return pos, features[np.minimum(pos, len(features) - 1)] == ids


@dataclass(frozen=True)
class Prepared:
    """Documents turned into model inputs once, so epochs do not redo the work.

    Attributes:
        inputs: encoder-specific per-document inputs (a CSR matrix or token ids).
        target: float32 CSR (n_docs, n_targets), the L2-normalised TF-IDF to reconstruct.
    """

    inputs: Any
    target: sp.csr_matrix

    def __len__(self) -> int:
        return self.target.shape[0]


def read_checkpoint(
    folder: Path, device: str | None
) -> tuple[dict[str, Any], EncoderConfig, PreprocessConfig, dict[str, torch.Tensor]]:
    """The `config.json` payload, its encoder config (device overridden when given), its
    preprocess config, and the tensors of `weights.pt` loaded with `weights_only=True`."""
    payload = json.loads((folder / ENCODER_CONFIG_FILE).read_text())
    config = EncoderConfig.model_validate(payload["encoder"])
    if device:
        config = config.model_copy(update={"device": device})
    preprocess = PreprocessConfig.model_validate(payload["preprocess"])
    state = torch.load(folder / ENCODER_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    return payload, config, preprocess, state


class TorchEncoder(ABC):
    """Reconstructing encoder: a module with `encode(*inputs) -> code` and a `decoder`.

    Attributes:
        model: the torch module, on `device`.
        training_: per-epoch losses of the last `fit` (None before).
    """

    kind: ClassVar[str]
    # EncoderConfig fields that change the module's shape; a warm start must keep them.
    architecture_keys: ClassVar[tuple[str, ...]] = ("dim", "hidden_dim")
    # No teacher: the model learns from the documents alone.
    teacher_: ClassVar[str | None] = None
    teacher_sample_: ClassVar[int] = 0
    teacher_seconds_: ClassVar[float] = 0.0

    def __init__(
        self,
        config: EncoderConfig,
        preprocess: PreprocessConfig,
        input_features: NDArray[np.int64],
        target_features: NDArray[np.int64],
        seed: int = 0,
    ) -> None:
        """Create an untrained encoder.

        Args:
            config: sizes and training settings.
            preprocess: the tokenisation and hashing that produced the features.
            input_features: sorted int64 ids of the features the model reads (kept by pruning).
            target_features: sorted int64 ids of the features the decoder reconstructs.
            seed: seeds initialisation, noise and batch order.

        Raises:
            ConfigError: no input or target feature (the corpus left nothing after pruning).
        """
        if len(input_features) == 0 or len(target_features) == 0:
            raise ConfigError(
                "the TF-IDF kept no feature, so there is nothing to encode; lower "
                "preprocess.min_df or raise preprocess.max_df"
            )
        self.config, self.preprocess, self.seed = config, preprocess, seed
        self.dim = config.dim
        self.input_features = np.asarray(input_features, dtype=np.int64)
        self.target_features = np.asarray(target_features, dtype=np.int64)
        self.device = resolve_device(config.device)
        seed_everything(seed)
        self.model = self._build_model().to(self.device)
        # True until the weights have been trained or loaded: only then does `fit` start
        # from the data-dependent initialisation (a warm start keeps its weights).
        self._fresh = True
        self.training_: TrainingResult | None = None

    @classmethod
    def create(
        cls, config: EncoderConfig, preprocess: PreprocessConfig, kept: KeptFeatures, seed: int
    ) -> Self:
        """An untrained encoder reading every kept feature and reconstructing the
        `config.reconstruct_features` most frequent."""
        return cls(config, preprocess, kept.ids, kept.top(config.reconstruct_features), seed)

    @abstractmethod
    def _build_model(self) -> nn.Module:
        """A fresh module for the current config and features."""

    @abstractmethod
    def _prepare_inputs(self, docs: DocumentBatch) -> Any:
        """Per-document model inputs of `docs`, indexable by `_batch_inputs`."""

    @abstractmethod
    def _batch_inputs(
        self, inputs: Any, rows: NDArray[np.int64], noise: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, ...]:
        """Module inputs for `rows`, on the device; drops a `noise` share of the input."""

    def _initialise(self, train_set: Prepared) -> None:
        """Data-dependent initialisation before the first `fit` (default: none)."""
        del train_set

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters (decoder included)."""
        return sum(p.numel() for p in self.model.parameters())

    def prepare(self, docs: DocumentBatch) -> Prepared:
        """Model inputs and reconstruction targets of `docs`."""
        pos, present = feature_positions(self.target_features, docs.tfidf.indices)
        rows = np.repeat(np.arange(len(docs)), np.diff(docs.tfidf.indptr))
        target = sp.csr_matrix(
            (docs.tfidf.data[present], (rows[present], pos[present])),
            shape=(len(docs), len(self.target_features)),
            dtype=np.float32,
        )
        norms = np.sqrt(np.asarray(target.multiply(target).sum(axis=1)).ravel())
        target = sp.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ target
        return Prepared(self._prepare_inputs(docs), target.tocsr())

    def encode_rows(
        self,
        prepared: Prepared,
        rows: NDArray[np.int64],
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw codes (len(rows), dim) and per-document reconstruction errors (len(rows),)."""
        code = self.model.encode(*self._batch_inputs(prepared.inputs, rows, noise, generator))
        target = torch.from_numpy(prepared.target[rows].toarray()).to(self.device)
        return code, cosine_error(self.model.decoder(code), target)

    def fit(self, train_docs: DocumentBatch, valid_docs: DocumentBatch) -> Self:
        """Train on `train_docs` with input noise; keep the best epoch on `valid_docs`."""
        generator = seed_everything(self.seed)
        cfg = self.config
        train_set, valid_set = self.prepare(train_docs), self.prepare(valid_docs)
        if self._fresh:
            self._initialise(train_set)
            self._fresh = False
        self.training_ = train(
            self.model,
            lambda rows: self.encode_rows(train_set, rows, cfg.noise, generator)[1],
            lambda rows: self.encode_rows(valid_set, rows)[1],
            len(train_set),
            len(valid_set),
            epochs=epoch_budget(cfg.epochs, len(train_set), cfg.max_doc_epochs),
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            patience=cfg.patience,
            generator=generator,
            device=self.device,
            desc=self.kind,
            train_lengths=self._lengths(train_set),
            valid_lengths=self._lengths(valid_set),
        )
        return self

    def refine_clusters(self, docs: DocumentBatch, initial: InitialClusters) -> DECResult:
        """DEC/IDEC refinement (`config.dec`) on `docs`, after `fit`; keeps the centroids."""
        prepared = self.prepare(docs)
        result = refine(
            self.model,
            lambda rows: self.encode_rows(prepared, rows),
            len(prepared),
            self.config.dec,
            batch_size=self.config.batch_size,
            seed=self.seed,
            initial=initial,
        )
        return result

    def _lengths(self, prepared: Prepared) -> NDArray[np.int64] | None:
        """Sequence length of each document for encoders that pad, else None."""
        return None

    @torch.no_grad()
    def transform(self, docs: DocumentBatch) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings (n_docs, dim) float32, L2-normalised if configured, and anomaly scores
        (n_docs,) float32 = cosine reconstruction error in [0, 2]."""
        self.model.eval()
        prepared = self.prepare(docs)
        lengths = self._lengths(prepared)
        # Padded encoders batch documents of similar length together, which wastes little
        # compute on padding; masking makes the output independent of the batch.
        order = np.arange(len(docs)) if lengths is None else np.argsort(lengths, kind="stable")
        codes = torch.zeros(len(docs), self.dim)
        errors = torch.zeros(len(docs))
        size = self.config.batch_size
        for start in range(0, len(docs), size):
            rows = order[start : start + size]
            batch = rows
            if lengths is None and len(rows) < size:
                # Every batch as many rows as the others (the last one padded with copies of
                # its first row): kernels are chosen by shape, and a document's vector must
                # not depend on how many documents were embedded with it (incremental runs).
                batch = np.concatenate([rows, np.full(size - len(rows), rows[0])])
            with autocast(self.device):
                code, error = self.encode_rows(prepared, batch)
            codes[rows] = code[: len(rows)].float().cpu()
            errors[rows] = error[: len(rows)].cpu()
        if self.config.normalize:
            codes = F.normalize(codes, dim=1)
        return codes.numpy(), errors.numpy()

    def encode(
        self, docs: DocumentBatch
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        """`transform`, and whether each document's TF-IDF row holds any feature."""
        vectors, scores = self.transform(docs)
        return vectors, scores, np.diff(docs.tfidf.indptr) > 0

    def continue_with(self, config: EncoderConfig, preprocess: PreprocessConfig, seed: int) -> Self:
        """Warm start: keep the weights and features, train next with `config`'s settings.

        Raises:
            ConfigError: `config` or `preprocess` changes the architecture or the hashing.
        """
        old = self.config.model_dump(include={"kind", *self.architecture_keys})
        new = config.model_dump(include={"kind", *self.architecture_keys})
        old_hash = self.preprocess.model_dump(include=set(HASHING_KEYS))
        new_hash = preprocess.model_dump(include=set(HASHING_KEYS))
        for name, before, after in (("encoder", old, new), ("preprocess", old_hash, new_hash)):
            changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            if changed:
                raise ConfigError(
                    f"encoder.warm_start: the checkpoint was trained with different {name} "
                    f"settings {{name: (checkpoint, now)}} = {changed}; use the checkpoint's "
                    "values or set encoder.warm_start to empty to train from scratch"
                )
        self.config, self.preprocess, self.seed = config, preprocess, seed
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        return self

    def save(self, folder: Path) -> None:
        """Write `config.json` (configs, module config) and `weights.pt` (tensors only)."""
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": self.kind,
            "encoder": self.config.model_dump(),
            "preprocess": self.preprocess.model_dump(),
            "model": self.model.get_config_dict(),
            "seed": self.seed,
        }
        (folder / ENCODER_CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        state = {
            **self.model.state_dict(),
            "input_features": torch.from_numpy(self.input_features),
            "target_features": torch.from_numpy(self.target_features),
        }
        torch.save(state, folder / ENCODER_WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> Self:
        """Rebuild from `save`'s files; weights load with `weights_only=True` (no pickle).

        Args:
            folder: checkpoint folder.
            device: overrides the saved device setting ('auto', 'cpu' or 'cuda').
        """
        # A missing, corrupt or foreign checkpoint is a configuration problem: never retried.
        try:
            payload, config, preprocess, state = read_checkpoint(folder, device)
            inputs = state.pop("input_features").numpy()
            target = state.pop("target_features").numpy()
            state.pop("cluster_centers", None)  # DEC centroids that older checkpoints kept, unread
            encoder = cls(config, preprocess, inputs, target, payload["seed"])
            encoder.model.load_state_dict(state)
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            AttributeError,
            pickle.UnpicklingError,
        ) as exc:
            raise ConfigError(
                f"encoder checkpoint {folder} cannot be loaded ({type(exc).__name__}: {exc}); "
                "give a folder written by udl (runs/<id>/models/encoder) or train from scratch"
            ) from None
        encoder._fresh = False
        return encoder
