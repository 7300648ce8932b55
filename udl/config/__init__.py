"""Pipeline configuration: one frozen pydantic model per step, composed into `PipelineConfig`.

`PipelineConfig` is the Prefect flow's parameter (the UI renders it as a form), loads from
YAML with `load_config`, and its JSON dump goes into every run's manifest. One module per
part of the run: `inputs` (corpus and TF-IDF), `encoder`, `cluster`, `neighbours` (similar documents), `update` (what a run reuses from the one before), `pipeline` (report,
runtime, the whole and its loading).
"""

from udl.config.cluster import ClusterConfig
from udl.config.encoder import (
    AttentionConfig,
    DECConfig,
    EncoderConfig,
    PretrainedConfig,
    TwoViewConfig,
)
from udl.config.inputs import SAMPLE_CORPUS, InputConfig, PreprocessConfig
from udl.config.neighbours import NeighboursConfig
from udl.config.pipeline import (
    LATEST_RUN,
    PipelineConfig,
    ReportConfig,
    RuntimeConfig,
    config_hash,
    load_config,
    parse_config,
)
from udl.config.update import UPDATE_POLICIES, UpdateConfig

__all__ = [
    "LATEST_RUN",
    "SAMPLE_CORPUS",
    "UPDATE_POLICIES",
    "AttentionConfig",
    "ClusterConfig",
    "DECConfig",
    "EncoderConfig",
    "InputConfig",
    "NeighboursConfig",
    "PipelineConfig",
    "PreprocessConfig",
    "PretrainedConfig",
    "ReportConfig",
    "RuntimeConfig",
    "TwoViewConfig",
    "UpdateConfig",
    "config_hash",
    "load_config",
    "parse_config",
]
