"""The whole run's configuration: the report, the runtime and `PipelineConfig`, which composes
every step's model; loading from YAML and the config hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from udl.config._base import Frozen, StrOrNone
from udl.config.cluster import ClusterConfig
from udl.config.encoder import EncoderConfig
from udl.config.inputs import InputConfig, PreprocessConfig
from udl.config.neighbours import NeighboursConfig
from udl.config.update import UpdateConfig
from udl.errors import ConfigError

__all__ = [
    "LATEST_RUN",
    "PipelineConfig",
    "ReportConfig",
    "RuntimeConfig",
    "config_hash",
    "load_config",
    "parse_config",
]


class ReportConfig(Frozen):
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


class RuntimeConfig(Frozen):
    """Where outputs go, seeding, and the Dask cluster."""

    output_dir: str = Field("udl-output", description="Root folder of all runs.")
    run_id: StrOrNone = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Run folder name; empty makes a new one. Reuse an id to resume a run.",
    )
    seed: int = Field(0, ge=0, description="Seed of every random step.")
    dask_address: StrOrNone = Field(
        None, description="Scheduler address of an existing Dask cluster; empty starts a local one."
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Workers of the local Dask cluster.")
    dask_memory_limit: str = Field("4GiB", description="Memory limit per local Dask worker.")
    dask_inference: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Embedding inference, k-means assignment (also of udl assign) and the report's "
            "pass over every document as one Dask task per part (training and fitting stay "
            "in the flow process): auto on the workers of dask_address when it is set, on "
            "also on the local cluster, off in the flow process."
        ),
    )
    task_timeout_seconds: int = Field(
        6 * 3600, ge=1, description="A step running longer than this fails (and may retry)."
    )

    def inference_on_dask(self) -> bool:
        """Whether the per-part work of the embed, cluster and report steps (see
        `dask_inference`) runs on the Dask workers."""
        return self.dask_inference == "on" or (
            self.dask_inference == "auto" and self.dask_address is not None
        )

    @field_validator("run_id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        # Commands that take a run id read "latest" as the newest completed run.
        if value == LATEST_RUN:
            raise ValueError(f"{LATEST_RUN!r} is reserved for the newest completed run")
        return value


class PipelineConfig(Frozen):
    """Everything one clustering run needs; the defaults run the bundled sample corpus."""

    input: InputConfig = Field(default_factory=InputConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    neighbours: NeighboursConfig = Field(default_factory=NeighboursConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
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
