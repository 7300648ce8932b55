"""What every encoder shares: the document batch it reads, the protocol it implements, and
device/seed handling."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Self, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import NDArray

from udl.errors import ConfigError

if TYPE_CHECKING:
    from udl.config import EncoderConfig, PreprocessConfig
    from udl.datasets import KeptFeatures
    from udl.encoders.dec import DECResult, InitialClusters
    from udl.encoders.training import TrainingResult

__all__ = [
    "ROW_BLOCK",
    "DocumentBatch",
    "Encoder",
    "in_row_blocks",
    "principal_subspace",
    "resolve_device",
    "row_norms",
    "seed_everything",
    "subspace_distance",
    "to_device",
]


@dataclass(frozen=True)
class DocumentBatch:
    """Documents as an encoder sees them.

    Attributes:
        tfidf: float32 CSR matrix (n_docs, n_features), rows L2-normalised.
        texts: the documents' texts (for encoders that read tokens), same order.
    """

    tfidf: sp.csr_matrix
    texts: list[str]

    def __len__(self) -> int:
        return self.tfidf.shape[0]

    def take(self, rows: NDArray[np.int64] | slice) -> DocumentBatch:
        texts = self.texts[rows] if isinstance(rows, slice) else [self.texts[i] for i in rows]
        return DocumentBatch(self.tfidf[rows], texts)


class Encoder(Protocol):
    """A document encoder (`TwoViewEncoder`, the `TorchEncoder` subclasses,
    `PretrainedEncoder`); the embed step knows encoders only through this protocol and the
    registry `udl.encoders.registry.ENCODERS`, keyed by `kind`.

    Attributes:
        dim: output width.
        device: the torch device it runs on.
        training_: per-epoch losses of `fit` (None when nothing is trained).
        teacher_, teacher_sample_, teacher_seconds_: the teacher model's name, the documents
            it embedded and its seconds (None, 0, 0.0 without a teacher).
    """

    kind: ClassVar[str]
    dim: int
    device: torch.device
    training_: TrainingResult | None
    teacher_: str | None
    teacher_sample_: int
    teacher_seconds_: float

    @classmethod
    def create(
        cls, config: EncoderConfig, preprocess: PreprocessConfig, kept: KeptFeatures, seed: int
    ) -> Self:
        """An unfitted encoder reading the features `kept` by the TF-IDF pruning."""
        ...

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> Self:
        """Rebuild a saved encoder; weights load with `weights_only=True`."""
        ...

    @property
    def n_parameters(self) -> int:
        """Number of model parameters."""
        ...

    def continue_with(self, config: EncoderConfig, preprocess: PreprocessConfig, seed: int) -> Self:
        """Warm start from this (loaded) encoder with `config`'s training settings.

        Raises:
            ConfigError: `config` or `preprocess` is incompatible with the checkpoint.
        """
        ...

    def fit(self, train: DocumentBatch, valid: DocumentBatch) -> Self:
        """Train without labels on a sample; `valid` drives early stopping."""
        ...

    def refine_clusters(self, docs: DocumentBatch, initial: InitialClusters) -> DECResult | None:
        """DEC/IDEC refinement after `fit` (None, with a warning, when there is nothing to
        refine)."""
        ...

    def transform(self, docs: DocumentBatch) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Return embeddings (n_docs, dim) and anomaly scores (n_docs,), both float32."""
        ...

    def encode(
        self, docs: DocumentBatch
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        """`transform`, and whether each document has anything the encoder reads (n_docs,)
        bool: documents without are left out of clustering."""
        ...

    def save(self, folder: Path) -> None:
        """Write `config.json` and `weights.pt` into `folder`."""
        ...


def principal_subspace(
    x: NDArray[np.float32], n_components: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Mean (dim,) and the first `n_components` orthonormal principal directions
    (n, dim) of the rows of `x` (fewer when `x` has fewer rows), float32: the subspace the
    anomaly scores measure distances from."""
    mean = x.mean(axis=0)
    n = min(n_components, x.shape[1], max(len(x) - 1, 1))
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:n].astype(np.float32)


def row_norms(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """L2 norm of each row of `x` (n, d), without the (n, d) temporary of `np.linalg.norm`."""
    return np.sqrt(np.einsum("ij,ij->i", x, x))


# Rows per matrix product at inference. BLAS and torch pick their kernels by the number of
# rows, and kernels sum in different orders: without fixed blocks a document's vector would
# depend on how many documents were embedded with it (an incremental run embeds a few, a full
# run all), and reused vectors would not equal a full recompute bit for bit.
ROW_BLOCK = 256


Rows = TypeVar("Rows", NDArray[np.float32], torch.Tensor)


def in_row_blocks(product: Callable[[Rows], NDArray[np.float32]], x: Rows) -> NDArray[np.float32]:
    """`product(x)` (a NumPy array) computed on blocks of exactly `ROW_BLOCK` rows of `x`, a
    NumPy array or a tensor (the last block padded with zero rows), for a `product` that
    treats rows independently."""
    n = len(x)
    shape = (-(-n // ROW_BLOCK) * ROW_BLOCK, *x.shape[1:])
    padded = x.new_zeros(shape) if isinstance(x, torch.Tensor) else np.zeros(shape, x.dtype)
    padded[:n] = x
    blocks = [product(padded[i : i + ROW_BLOCK]) for i in range(0, len(padded), ROW_BLOCK)]
    return np.concatenate(blocks)[:n] if blocks else product(x)


def subspace_distance(
    x: NDArray[np.float32], mean: NDArray[np.float32], components: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Distance (n,) float32 of each row of `x` from the affine subspace `mean` + span of the
    orthonormal rows of `components`: the anomaly score."""
    centred = x - mean
    centred -= in_row_blocks(lambda block: (block @ components.T) @ components, centred)
    return row_norms(centred).astype(np.float32, copy=False)


def resolve_device(device: str) -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda' to a torch device, failing clearly when CUDA is missing."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            'device="cuda" requested but torch.cuda.is_available() is False. '
            'Use device="auto" to fall back to CPU.'
        )
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries that use the global state)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_device(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Move CPU tensors to `device`; on CUDA through pinned memory so the copy is asynchronous."""
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tensors
