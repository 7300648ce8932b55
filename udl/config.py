"""Pipeline configuration: one frozen pydantic model per step, composed into `PipelineConfig`.

`PipelineConfig` is the Prefect flow's parameter (the UI renders it as a form), loads from
YAML with `load_config`, and its JSON dump goes into every run's manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from udl.errors import ConfigError

__all__ = [
    "AttentionConfig",
    "ClusterConfig",
    "EncoderConfig",
    "InputConfig",
    "PipelineConfig",
    "PreprocessConfig",
    "ReportConfig",
    "RuntimeConfig",
    "config_hash",
    "load_config",
]

SAMPLE_CORPUS = "data/sample/wordnet_sample.parquet"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Frozen):
    """Where the corpus is and which columns mean what."""

    path: str = Field(
        SAMPLE_CORPUS,
        description="File, folder, glob or fsspec URL of the corpus (CSV/TSV, JSON Lines, "
        "Parquet, or a folder of .txt files).",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "text"] = Field(
        "auto", description="Input format; 'auto' picks it from the file extension."
    )
    text_column: str = Field("text", description="Column holding the document text.")
    id_column: str | None = Field(
        None,
        description="Column holding a unique document id; empty derives a stable id "
        "from the source file, row and text.",
    )
    label_column: str | None = Field(
        None, description="Optional column with known classes, used only for evaluation."
    )
    metadata_columns: list[str] = Field(
        default_factory=list, description="Extra columns carried through to the assignments."
    )
    max_chars: int = Field(
        100_000, ge=100, description="Longer documents are truncated to this many characters."
    )
    partition_rows: int = Field(
        50_000, ge=100, description="Rows per Parquet partition of the ingested corpus."
    )

    @field_validator("id_column", "label_column", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class PreprocessConfig(_Frozen):
    """Normalisation, tokenisation and hashed TF-IDF."""

    n_features: int = Field(
        2**16, ge=2**8, le=2**24, description="Number of hashed TF-IDF features."
    )
    lowercase: bool = Field(True, description="Lower-case text before tokenising.")
    strip_accents: bool = Field(False, description="Fold accented letters to ASCII.")
    stop_words: Literal["english", "none"] = Field("english", description="Stop-word list.")
    ngram_max: int = Field(1, ge=1, le=3, description="Longest word n-gram (1 = unigrams).")
    sublinear_tf: bool = Field(True, description="Use 1 + log(tf) instead of raw counts.")
    min_df: int = Field(2, ge=1, description="Drop features seen in fewer documents.")
    max_df: float = Field(
        0.5, gt=0.0, le=1.0, description="Drop features seen in more than this share of documents."
    )
    keyword_vocabulary: int = Field(
        50_000, ge=1000, description="Token strings kept per partition to name hashed features."
    )


class AttentionConfig(_Frozen):
    """Attention encoder: token embeddings, Transformer layers, attention pooling."""

    max_tokens: int = Field(128, ge=8, le=4096, description="Tokens per document (truncated).")
    n_layers: int = Field(2, ge=1, le=12, description="Transformer encoder layers.")
    n_heads: int = Field(4, ge=1, le=32, description="Attention heads per layer.")
    model_dim: int = Field(128, ge=16, le=2048, description="Token embedding width.")


class EncoderConfig(_Frozen):
    """Which encoder turns documents into vectors, and how it is trained."""

    kind: Literal["autoencoder", "attention"] = Field(
        "autoencoder", description="Encoder: denoising autoencoder on TF-IDF, or attention encoder."
    )
    dim: int = Field(64, ge=2, le=4096, description="Embedding dimension.")
    hidden_dim: int = Field(256, ge=8, le=8192, description="Hidden layer width.")
    reconstruct_features: int = Field(
        4096, ge=64, description="Most frequent features the decoder reconstructs."
    )
    noise: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of input features masked while training."
    )
    epochs: int = Field(15, ge=1, le=1000, description="Maximum training epochs.")
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
    attention: AttentionConfig = Field(default_factory=AttentionConfig)


class ClusterConfig(_Frozen):
    """FAISS clustering of the embeddings."""

    algorithm: Literal["kmeans", "dbscan"] = Field("kmeans", description="Clustering algorithm.")
    k: int | Literal["auto"] = Field(
        10, description="Number of k-means clusters, or 'auto' to choose it by internal scores."
    )
    k_candidates: list[int] = Field(
        default_factory=lambda: [5, 10, 15, 20, 30, 40, 50],
        description="Values of k tried when k is 'auto'.",
    )
    eps: float | Literal["auto"] = Field(
        "auto", description="DBSCAN neighbourhood radius, or 'auto' (knee of the k-distance curve)."
    )
    min_samples: int = Field(
        5, ge=1, description="DBSCAN: neighbours (self included) of a core point."
    )
    metric: Literal["cosine", "l2"] = Field("cosine", description="Distance between embeddings.")
    niter: int = Field(25, ge=1, le=1000, description="k-means iterations.")
    nredo: int = Field(1, ge=1, le=100, description="k-means restarts; the best is kept.")
    max_points_per_centroid: int = Field(
        256, ge=10, description="k-means trains on at most this many points per centroid."
    )
    selection_sample: int = Field(
        10_000, ge=100, description="Documents sampled to choose k or eps automatically."
    )

    @field_validator("k")
    @classmethod
    def _k_at_least_two(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError("must be an int >= 2 or 'auto'")
        return value

    @field_validator("eps")
    @classmethod
    def _eps_positive(cls, value: float | str) -> float | str:
        if isinstance(value, float) and value <= 0:
            raise ValueError("must be > 0 or 'auto'")
        return value

    @field_validator("k_candidates")
    @classmethod
    def _candidates_valid(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 2:
            raise ValueError("needs at least one candidate, each >= 2")
        return sorted(set(value))


class ReportConfig(_Frozen):
    """What the evaluation and the HTML report contain."""

    metrics_sample: int = Field(
        20_000,
        ge=100,
        description="Documents sampled for silhouette and the other internal scores.",
    )
    n_keywords: int = Field(10, ge=1, le=100, description="Keywords listed per cluster.")
    n_examples: int = Field(5, ge=1, le=50, description="Representative documents per cluster.")
    map_sample: int = Field(
        5_000,
        ge=100,
        le=50_000,
        description="Documents (from the metrics sample) drawn on the 2-D embedding map.",
    )
    n_outlier_examples: int = Field(
        10, ge=0, le=100, description="Most anomalous documents listed in the report."
    )
    outlier_fraction: float = Field(
        0.01,
        ge=0.0,
        le=0.5,
        description="Share of documents with the highest anomaly score flagged.",
    )


class RuntimeConfig(_Frozen):
    """Where outputs go, seeding, and the Dask cluster."""

    output_dir: str = Field("udl-output", description="Root folder of all runs.")
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Run folder name; empty makes a new one. Reuse an id to resume a run.",
    )
    seed: int = Field(0, ge=0, description="Seed of every random step.")
    dask_address: str | None = Field(
        None, description="Scheduler address of an existing Dask cluster; empty starts a local one."
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Workers of the local Dask cluster.")
    dask_memory_limit: str = Field("4GiB", description="Memory limit per local Dask worker.")
    task_timeout_seconds: int = Field(
        6 * 3600, ge=1, description="A step running longer than this fails (and may retry)."
    )

    @field_validator("run_id", "dask_address", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class PipelineConfig(_Frozen):
    """Everything one clustering run needs; the defaults run the bundled sample corpus."""

    input: InputConfig = Field(default_factory=InputConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _output_outside_input(self) -> PipelineConfig:
        if "://" in self.input.path or "://" in self.runtime.output_dir:
            return self
        source = Path(self.input.path).resolve()
        output = Path(self.runtime.output_dir).resolve()
        if output == source or source in output.parents:
            raise ValueError(
                f"runtime.output_dir {output} lies inside input.path {source}; "
                "choose an output folder outside the corpus"
            )
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """Return a copy with dotted-path overrides applied, validated again.

        Args:
            overrides: e.g. ``{"cluster.k": 12, "input.path": "corpus.csv"}``.

        Returns:
            The new config.

        Raises:
            ConfigError: an override names an unknown field or breaks a constraint.
        """
        data = self.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return parse_config(data)


def parse_config(data: dict[str, Any]) -> PipelineConfig:
    """Validate a plain dict into a `PipelineConfig`, raising `ConfigError` on any problem."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_validation_error(exc, "PipelineConfig") from None


def load_config(path: str | Path) -> PipelineConfig:
    """Load a `PipelineConfig` from a YAML file (missing keys take their defaults).

    Raises:
        ConfigError: the file is missing, not YAML, or not a valid config.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return parse_config(data)


def config_hash(model: BaseModel) -> str:
    """Short, stable hash of a config model (used in cache keys and manifests)."""
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()[:16]
