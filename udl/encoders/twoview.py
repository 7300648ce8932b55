"""The two-view encoder (the default): the teacher's semantics and the corpus's own words.

A sentence-transformers teacher is the best view of short, everyday text and a poor one of long
technical text, where identifiers carry the meaning and its window cuts most of the document;
TF-IDF is the reverse. Every document gets both views, weighted by how much lexical evidence it
has:

- **Semantic view** (`udl.encoders.semantic`): a student (`DistilledStudent`: the teacher's
  token vocabulary distilled by Model2Vec, attention pooling by token salience, a linear head)
  fitted (early-stopped) to the teacher's embeddings of `two_view.teacher_sample` documents.
  It reads the whole text at bag-of-tokens cost, so inference is a small fraction of the
  teacher's and long documents are read past the teacher's window.
- **Lexical view**: LSA of the document's TF-IDF (randomised truncated SVD of the training
  sample over the `lexical_features` most frequent features).
- **Mix**: both views L2-normalised and concatenated with per-document weights
  sqrt(c / (n + c)) and sqrt(n / (n + c)), n the document's number of distinct TF-IDF features
  and c = `two_view.semantic_terms`: the semantic vector counts as much as c distinct words.
  A five-word title leans on the teacher, a docstring of a hundred identifiers on its words;
  the vector stays unit-length. One constant for every corpus (measured in the README).

Without a teacher (the extra not installed, or `teacher_sample` 0) one warning says so and the
encoder is the lexical view alone. A document with neither a known token nor a TF-IDF feature
gets the student's vector of an empty document (a constant) and `has_features` False, so
clustering leaves it out instead of merging such documents into one cluster.

The anomaly score is the distance of a document's vector from the principal subspace of the
training sample's vectors, as for the pretrained encoder.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from udl.config import EncoderConfig, PreprocessConfig
from udl.datasets import (
    ENCODER_CONFIG_FILE,
    ENCODER_TOKENIZER_FILE,
    ENCODER_WEIGHTS_FILE,
    KeptFeatures,
)
from udl.encoders.base import (
    DocumentBatch,
    principal_subspace,
    resolve_device,
    seed_everything,
    subspace_distance,
)
from udl.encoders.dec import DECResult, InitialClusters, refine
from udl.encoders.estimator import read_checkpoint
from udl.encoders.modules import DistilledStudent
from udl.encoders.semantic import SemanticView, TokenBatch, WholeTextTokenizer, single_threaded
from udl.encoders.teacher import Teacher, missing_teacher
from udl.encoders.training import TrainingResult
from udl.encoders.views import LexicalView, mix_views, unit_rows
from udl.errors import ConfigError, NotFittedError

__all__ = ["TwoViewEncoder"]

log = logging.getLogger(__name__)

ANOMALY_COMPONENTS = 16
# A few thousand documents pin down 16 principal directions.
ANOMALY_SAMPLE = 5000
# Documents encoded at a time during inference; chunks start at a part's first row, so a
# document's vector does not depend on how many parts there are before its own.
INFERENCE_CHUNK = 4096


class TwoViewEncoder:
    """Encoder protocol (fit, transform, save/load) of the two-view encoder.

    Attributes:
        dim: output width (teacher width + lexical_dim; lexical_dim alone without teacher).
        semantic: the fitted `SemanticView` (the student), None without a teacher.
        lexical: the fitted `LexicalView` (None before fit).
        teacher_: name of the teacher model; None without one.
        teacher_seconds_: seconds the teacher spent (loading, vocabulary, sample).
        training_: the student's per-epoch losses.
    """

    kind = "two_view"

    def __init__(
        self,
        config: EncoderConfig,
        preprocess: PreprocessConfig,
        lexical_features: NDArray[np.int64],
        seed: int = 0,
    ) -> None:
        """An unfitted encoder whose lexical view reads the sorted hashed feature ids
        `lexical_features` (the `two_view.lexical_features` most frequent kept features).

        Raises:
            ConfigError: the TF-IDF kept no feature.
        """
        if len(lexical_features) == 0:
            raise ConfigError(
                "the TF-IDF kept no feature, so there is nothing to encode; lower "
                "preprocess.min_df or raise preprocess.max_df"
            )
        self.config, self.preprocess, self.seed = config, preprocess, seed
        self.lexical_features = np.asarray(lexical_features, np.int64)
        self.device = resolve_device(config.device)
        self.dim = config.two_view.lexical_dim
        self.semantic: SemanticView | None = None
        self.lexical: LexicalView | None = None
        self.mean_: NDArray[np.float32] | None = None
        self.components_: NDArray[np.float32] | None = None
        self.teacher_: str | None = None
        self.teacher_sample_ = 0
        self.teacher_seconds_ = 0.0
        self.training_: TrainingResult | None = None
        self._fitted = False

    @classmethod
    def create(
        cls, config: EncoderConfig, preprocess: PreprocessConfig, kept: KeptFeatures, seed: int
    ) -> Self:
        """An unfitted encoder whose lexical view reads the `two_view.lexical_features` most
        frequent kept features."""
        return cls(config, preprocess, kept.top(config.two_view.lexical_features), seed)

    @property
    def n_parameters(self) -> int:
        """Student parameters plus the lexical components."""
        lexical = 0 if self.lexical is None else self.lexical.components.size
        student = (
            0
            if self.semantic is None
            else sum(p.numel() for p in self.semantic.student.parameters())
        )
        return lexical + student

    def continue_with(self, config: EncoderConfig, preprocess: PreprocessConfig, seed: int) -> Self:
        """Warm start: keep this fitted encoder as it is, so the embedding space does not move
        (the nightly setting); only the device and batch settings come from `config`.

        Raises:
            ConfigError: `config` changes the views' shape or the hashing.
        """
        keep = {"kind", "two_view", "normalize"}
        old, new = self.config.model_dump(include=keep), config.model_dump(include=keep)
        if old != new or self.preprocess != preprocess:
            raise ConfigError(
                "encoder.warm_start: the checkpoint was fitted with other encoder.two_view, "
                "normalize or preprocess settings; use the checkpoint's values or set "
                "encoder.warm_start to empty to fit from scratch"
            )
        self.device = resolve_device(config.device)
        if self.semantic is not None:
            self.semantic.student.to(self.device)
        return self

    # --- fitting -------------------------------------------------------------------------

    def fit(self, train_docs: DocumentBatch, valid_docs: DocumentBatch) -> Self:
        """Fit the lexical view on `train_docs`, then the student on the teacher's embeddings
        of the first `teacher_sample` of them (`valid_docs` stops its training early).

        A warm-started encoder is already fitted and is left unchanged.
        """
        if self._fitted:
            return self
        cfg = self.config.two_view
        seed_everything(self.seed)
        # `train_docs` come in random order, so their head is a uniform sample.
        self.lexical = LexicalView.fit(
            train_docs.tfidf[: cfg.lexical_sample],
            self.lexical_features,
            cfg.lexical_dim,
            self.seed,
        )
        reason = "encoder.two_view.teacher_sample is 0" if cfg.teacher_sample == 0 else None
        reason = reason or missing_teacher(self.config.pretrained.model_path)
        if reason:
            log.warning("two_view: no teacher (%s); using the lexical view only", reason)
        else:
            self._fit_student(train_docs, valid_docs)
        self.dim = self.lexical.components.shape[1] + (
            self.semantic.dim if self.semantic is not None else 0
        )
        self._fitted = True
        self._fit_anomaly(train_docs.take(np.arange(min(len(train_docs), ANOMALY_SAMPLE))))
        return self

    def _fit_anomaly(self, docs: DocumentBatch) -> None:
        """Principal subspace of the vectors of `docs`, for the anomaly score."""
        with single_threaded():
            self.mean_, self.components_ = principal_subspace(
                self._vectors(docs, self._tokens(docs.texts))[0], ANOMALY_COMPONENTS
            )

    def refine_clusters(self, docs: DocumentBatch, initial: InitialClusters) -> DECResult | None:
        """DEC/IDEC (`config.dec`) on `docs`, after `fit`: the student moves, the lexical view
        stays; IDEC's reconstruction term is the student's drift from its distilled output
        (1 - cosine), which keeps the semantics the teacher gave it.

        Returns None, with a warning, without a student: the lexical view has nothing to train.
        """
        if self.semantic is None or self.lexical is None:
            log.warning("two_view: no student (no teacher), so DEC has nothing to refine; skipped")
            return None
        semantic_view, device = self.semantic, self.device
        student = semantic_view.student
        tokens = semantic_view.tokenize(docs.texts)
        lexical = torch.from_numpy(self.lexical.transform(docs.tfidf)).to(device)
        n = np.diff(docs.tfidf.indptr).astype(np.float64)[:, None]
        c = self.config.two_view.semantic_terms
        semantic_weight = torch.from_numpy(np.sqrt(c / (n + c))).float().to(device)
        lexical_weight = torch.from_numpy(np.sqrt(n / (n + c))).float().to(device)
        with single_threaded():
            distilled = torch.from_numpy(semantic_view.embed(tokens)).to(device)

        def codes(rows: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
            ids, offsets = tokens.take(rows)
            semantic = F.normalize(student(ids.to(device), offsets.to(device)).float(), dim=1)
            code = torch.cat(
                [semantic_weight[rows] * semantic, lexical_weight[rows] * lexical[rows]], dim=1
            )
            return code, 1.0 - (semantic * distilled[rows]).sum(dim=1)

        with single_threaded():
            result = refine(
                student,
                codes,
                len(docs),
                self.config.dec,
                batch_size=self.config.batch_size,
                seed=self.seed,
                initial=initial,
            )
        self._fit_anomaly(docs.take(np.arange(min(len(docs), ANOMALY_SAMPLE))))
        return result

    def _fit_student(self, train_docs: DocumentBatch, valid_docs: DocumentBatch) -> None:
        cfg = self.config.two_view
        started = time.perf_counter()
        teacher = Teacher(self.config.pretrained.model_path, self.device, self.config.batch_size)
        vocabulary = teacher.distill_vocabulary()
        n_train = min(cfg.teacher_sample, len(train_docs))
        n_valid = min(max(1, cfg.teacher_sample // 10), len(valid_docs))
        train_texts, valid_texts = train_docs.texts[:n_train], valid_docs.texts[:n_valid]
        sampled = time.perf_counter()
        targets = torch.from_numpy(teacher.embed(train_texts))
        valid_targets = torch.from_numpy(teacher.embed(valid_texts))
        self.teacher_, self.teacher_sample_ = teacher.name, n_train + n_valid
        log.info(
            "teacher %s embedded %d sample documents in %.1f s",
            teacher.name,
            self.teacher_sample_,
            time.perf_counter() - sampled,
        )
        del teacher
        self.teacher_seconds_ = time.perf_counter() - started
        self.semantic, self.training_ = SemanticView.fit(
            vocabulary,
            (train_texts, valid_texts),
            (targets, valid_targets),
            self.config,
            self.seed,
            self.device,
        )

    # --- inference -----------------------------------------------------------------------

    def _tokens(self, texts: list[str]) -> TokenBatch | None:
        return self.semantic.tokenize(texts) if self.semantic is not None else None

    def _vectors(
        self, docs: DocumentBatch, tokens: TokenBatch | None
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Mixed vectors (n, dim), unscaled by `normalize`, and `has_features` (n,), from the
        documents and their student tokens (`_tokens`)."""
        if not self._fitted or self.lexical is None:
            raise NotFittedError("TwoViewEncoder used before fit")
        lexical = self.lexical.transform(docs.tfidf)
        n_terms = np.diff(docs.tfidf.indptr)
        if self.semantic is None or tokens is None:
            return lexical, n_terms > 0
        vectors = mix_views(
            self.semantic.embed(tokens), lexical, n_terms, self.config.two_view.semantic_terms
        )
        return vectors, (n_terms > 0) | (np.diff(tokens.offsets) > 0)

    def encode(
        self, docs: DocumentBatch
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
        """Embeddings (n, dim) float32, anomaly scores (n,) float32, and whether each document
        has a TF-IDF feature or a token the student knows (n,) bool."""
        if not self._fitted:
            raise NotFittedError("TwoViewEncoder used before fit")
        assert self.mean_ is not None and self.components_ is not None
        n = len(docs)
        vectors = np.empty((n, self.dim), np.float32)
        scores = np.empty(n, np.float32)
        featured = np.empty(n, np.bool_)
        mean, components = self.mean_, self.components_

        chunks = [
            slice(start, min(start + INFERENCE_CHUNK, n)) for start in range(0, n, INFERENCE_CHUNK)
        ]
        # Chunk by chunk on one thread (bytes independent of the thread count; a chunk's
        # temporaries are reused, a whole part's are fresh pages that can stall on huge-page
        # compaction). The tokenizer, most of the time, runs a chunk ahead on its own thread
        # (Rust, outside the GIL): 1.46x faster on wordnet_glosses, same bytes.
        with single_threaded(), ThreadPoolExecutor(1, "udl-tokenize") as ahead:
            pending = ahead.submit(self._tokens, docs.texts[chunks[0]]) if chunks else None
            for index, rows in enumerate(chunks):
                assert pending is not None
                tokens = pending.result()
                if index + 1 < len(chunks):
                    pending = ahead.submit(self._tokens, docs.texts[chunks[index + 1]])
                chunk, featured[rows] = self._vectors(docs.take(rows), tokens)
                scores[rows] = subspace_distance(chunk, mean, components)
                vectors[rows] = unit_rows(chunk) if self.config.normalize else chunk
        return vectors, scores, featured

    def transform(self, docs: DocumentBatch) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings (n_docs, dim) float32 and anomaly scores (n_docs,) float32."""
        vectors, scores, _ = self.encode(docs)
        return vectors, scores

    # --- checkpoints ---------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write `config.json`, `tokenizer.json` (with a student) and `weights.pt` (tensors)."""
        if not self._fitted or self.lexical is None:
            raise NotFittedError("TwoViewEncoder.save called before fit")
        assert self.mean_ is not None and self.components_ is not None
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": self.kind,
            "encoder": self.config.model_dump(),
            "preprocess": self.preprocess.model_dump(),
            "student": None if self.semantic is None else self.semantic.student.get_config_dict(),
            "teacher": self.teacher_,
            "teacher_sample": self.teacher_sample_,
            "seed": self.seed,
        }
        (folder / ENCODER_CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        if self.semantic is not None:
            (folder / ENCODER_TOKENIZER_FILE).write_text(self.semantic.tokenize.tokenizer_json)
        state = {
            "lexical_features": torch.from_numpy(self.lexical_features),
            "lexical_view_features": torch.from_numpy(self.lexical.features),
            "lexical_components": torch.from_numpy(self.lexical.components),
            "mean": torch.from_numpy(self.mean_),
            "components": torch.from_numpy(self.components_),
        }
        if self.semantic is not None:
            weights = self.semantic.student.state_dict()
            state |= {f"student.{k}": v.cpu() for k, v in weights.items()}
        torch.save(state, folder / ENCODER_WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> Self:
        """Rebuild from `save`'s files; weights load with `weights_only=True` (no pickle)."""
        try:
            payload, config, preprocess, state = read_checkpoint(folder, device)
            encoder = cls(config, preprocess, state["lexical_features"].numpy(), payload["seed"])
            encoder.lexical = LexicalView(
                state["lexical_view_features"].numpy(), state["lexical_components"].numpy()
            )
            encoder.mean_ = state["mean"].numpy()
            encoder.components_ = state["components"].numpy()
            if payload["student"] is not None:
                student = DistilledStudent(**payload["student"])
                student.load_state_dict(
                    {
                        k.removeprefix("student."): v
                        for k, v in state.items()
                        if k.startswith("student.")
                    }
                )
                tokenizer = WholeTextTokenizer((folder / ENCODER_TOKENIZER_FILE).read_text())
                encoder.semantic = SemanticView(student.to(encoder.device), tokenizer)
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            TypeError,
            pickle.UnpicklingError,
        ) as exc:
            raise ConfigError(
                f"encoder checkpoint {folder} cannot be loaded ({type(exc).__name__}: {exc}); "
                "give a folder written by udl (runs/<id>/models/encoder) or train from scratch"
            ) from None
        encoder.teacher_ = payload["teacher"]
        encoder.teacher_sample_ = payload["teacher_sample"]
        encoder.dim = encoder.lexical.components.shape[1] + (
            encoder.semantic.dim if encoder.semantic is not None else 0
        )
        encoder._fitted = True
        return encoder
