"""Denoising autoencoder on hashed TF-IDF features.

The first layer is an `nn.EmbeddingBag` weighted by the TF-IDF values, i.e. a sparse-dense
product that never materialises the (n_docs, n_features) input. It has one row per feature
kept by the TF-IDF pruning (not per hashed bucket), which keeps the model small. The decoder reconstructs the
document's L2-normalised TF-IDF over the most frequent features; the loss is the cosine
distance between reconstruction and target, which suits TF-IDF (direction, not magnitude).
The per-document reconstruction error is the anomaly score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from udl.config import EncoderConfig
from udl.encoders.base import DocumentBatch, reconstruction_target, resolve_device, seed_everything
from udl.encoders.training import TrainingResult, autocast, train

__all__ = ["AutoencoderEncoder", "SparseAutoencoder"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


class SparseAutoencoder(nn.Module):
    """EmbeddingBag encoder → `dim` code → MLP decoder over `n_targets` features."""

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
        self.decoder = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_targets)
        )
        nn.init.normal_(self.bag.weight, std=hidden_dim**-0.5)

    def get_config_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in self.config_keys}

    def encode(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Codes (n_docs, dim) of a CSR batch given as flat indices, offsets and weights."""
        hidden = self.bag(indices, offsets, per_sample_weights=weights) + self.bag_bias
        return self.encoder(hidden)

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(indices, offsets, weights)
        return code, self.decoder(code)

    def __repr__(self) -> str:
        return f"SparseAutoencoder({self.get_config_dict()})"


def _csr_tensors(
    batch: DocumentBatch, input_features: NDArray[np.int64], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs of a batch; pruned features are absent from TF-IDF rows already."""
    csr = batch.tfidf
    indices = torch.from_numpy(np.searchsorted(input_features, csr.indices).astype(np.int64))
    offsets = torch.from_numpy(csr.indptr[:-1].astype(np.int64))
    weights = torch.from_numpy(csr.data.astype(np.float32))
    if device.type == "cuda":
        return tuple(
            t.pin_memory().to(device, non_blocking=True) for t in (indices, offsets, weights)
        )
    return indices, offsets, weights


def _cosine_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(reconstruction.float(), target, dim=1, eps=1e-8)


class AutoencoderEncoder:
    """Estimator around `SparseAutoencoder`: fit on a sample, transform in batches, save/load."""

    kind = "autoencoder"

    def __init__(
        self,
        config: EncoderConfig,
        input_features: NDArray[np.int64],
        target_features: NDArray[np.int64],
        seed: int = 0,
    ) -> None:
        """Create an untrained encoder.

        Args:
            config: sizes and training settings.
            input_features: sorted int64 ids of the features kept by TF-IDF pruning.
            target_features: sorted int64 ids of the features the decoder reconstructs.
            seed: seeds initialisation, masking and batch order.
        """
        self.config = config
        self.seed = seed
        self.dim = config.dim
        self.input_features = np.asarray(input_features, dtype=np.int64)
        self.target_features = np.asarray(target_features, dtype=np.int64)
        self.device = resolve_device(config.device)
        seed_everything(seed)
        self.model = SparseAutoencoder(
            len(self.input_features), config.hidden_dim, config.dim, len(self.target_features)
        ).to(self.device)
        self.training_: TrainingResult | None = None

    def _loss_fn(self, docs: DocumentBatch, noise: float, generator: torch.Generator | None):
        def loss(rows: np.ndarray) -> torch.Tensor:
            batch = docs.take(rows)
            indices, offsets, weights = _csr_tensors(batch, self.input_features, self.device)
            if noise > 0 and generator is not None:
                keep = torch.rand(weights.shape, generator=generator) >= noise
                weights = weights * keep.to(self.device)
            target = reconstruction_target(batch.tfidf, self.target_features).to(self.device)
            _, reconstruction = self.model(indices, offsets, weights)
            return _cosine_loss(reconstruction, target)

        return loss

    def fit(self, train_docs: DocumentBatch, valid_docs: DocumentBatch) -> Self:
        """Train on `train_docs` with input masking; early-stop on `valid_docs`."""
        generator = seed_everything(self.seed)
        cfg = self.config
        self.training_ = train(
            self.model,
            self._loss_fn(train_docs, cfg.noise, generator),
            self._loss_fn(valid_docs, 0.0, None),
            len(train_docs),
            len(valid_docs),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            patience=cfg.patience,
            generator=generator,
            device=self.device,
            desc="autoencoder",
        )
        return self

    @torch.no_grad()
    def transform(self, docs: DocumentBatch) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings (n_docs, dim) and anomaly scores (n_docs,) = reconstruction error."""
        self.model.eval()
        codes, errors = [], []
        for start in range(0, len(docs), self.config.batch_size):
            batch = docs.take(np.arange(start, min(start + self.config.batch_size, len(docs))))
            with autocast(self.device):
                code, reconstruction = self.model(
                    *_csr_tensors(batch, self.input_features, self.device)
                )
            target = reconstruction_target(batch.tfidf, self.target_features).to(self.device)
            codes.append(code.float().cpu())
            errors.append(_cosine_loss(reconstruction, target).cpu())
        embeddings = torch.cat(codes) if codes else torch.zeros(0, self.dim)
        if self.config.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        scores = torch.cat(errors) if errors else torch.zeros(0)
        return embeddings.numpy().astype(np.float32), scores.numpy().astype(np.float32)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "kind": self.kind,
            "encoder": self.config.model_dump(),
            "model": self.model.get_config_dict(),
            "seed": self.seed,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        state = {
            **self.model.state_dict(),
            "target_features": torch.from_numpy(self.target_features),
        }
        torch.save(state, folder / WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> Self:
        """Rebuild from `save`'s files; weights load with `weights_only=True` (no pickle)."""
        payload = json.loads((folder / CONFIG_FILE).read_text())
        config = EncoderConfig.model_validate(payload["encoder"])
        if device:
            config = config.model_copy(update={"device": device})
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        inputs = state.pop("input_features").numpy()
        target = state.pop("target_features").numpy()
        encoder = cls(config, inputs, target, payload["seed"])
        encoder.model.load_state_dict(state)
        return encoder
