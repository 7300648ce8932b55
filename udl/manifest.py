"""Run bookkeeping: run ids, one JSON record per completed step, and the run manifest.

A step record stores the key of the inputs it was computed from, its row count and timing;
the manifest gathers them. `reuse_steps` starts a run from another run's completed steps
(re-clustering existing embeddings with other settings).
"""

from __future__ import annotations

import os
import platform
import re
import secrets
import shutil
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from udl.config import PipelineConfig
from udl.datasets import RunLayout
from udl.errors import UdlError
from udl.storage import read_json, write_json_atomic

__all__ = [
    "STEPS",
    "new_run_id",
    "redact",
    "reuse_steps",
    "save_step",
    "versions",
    "write_manifest",
]

STEPS = ("ingest", "preprocess", "embed", "cluster", "report")
PACKAGES = ("udl", "torch", "faiss-cpu", "pyarrow", "dask", "scikit-learn", "prefect", "numpy")


# The password of a URL's user info (``scheme://user:password@host``): a credential that a
# config value (an fsspec URL, a scheduler address) may carry, never written to run records.
_URL_PASSWORD = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:)[^/?#@\s]+@")


def redact(value: Any) -> Any:
    """`value` (JSON-like) with every URL password replaced by ``***``.

    Example:
        >>> redact({"dask_address": "tcp://udl:s3cret@scheduler:8786"})
        {'dask_address': 'tcp://udl:***@scheduler:8786'}
    """
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<keep>***@", value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261122T020000Z-3fa9c1``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def save_step(layout: RunLayout, step: str, key: str, record: dict[str, Any]) -> dict[str, Any]:
    """Mark `step` complete: written last, after the step's outputs are in place."""
    record = redact({"step": step, "key": key, **record})
    write_json_atomic(layout.step_record(step), record)
    return record


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_manifest(
    layout: RunLayout, config: PipelineConfig, status: str, previous: RunLayout | None = None
) -> dict[str, Any]:
    """Write ``manifest.json``: config, status, the run it follows, per-step row counts and
    timings, versions."""
    steps = {}
    for step in STEPS:
        path = layout.step_record(step)
        if path.exists():
            steps[step] = read_json(path)
    manifest = {
        "run_id": layout.run_id,
        "status": status,
        "previous_run_id": previous.run_id if previous else None,
        "config": config.model_dump(mode="json"),
        "steps": steps,
        "rows": {step: rec.get("rows") for step, rec in steps.items()},
        "versions": versions(),
        "written_at": datetime.now(UTC).isoformat(),
    }
    manifest = redact(manifest)
    write_json_atomic(layout.manifest, manifest)
    return manifest


# What each reusable step produced: datasets are linked, fitted models copied (the new run
# writes its own models next to them, and must never write into the source run).
_STEP_DATASETS = {
    "ingest": ("corpus", "rejects"),
    "preprocess": ("features",),
    "embed": ("embeddings",),
}
_STEP_MODELS = {
    "ingest": (),
    "preprocess": ("tfidf.parquet", "vocabulary.parquet"),
    "embed": ("encoder",),
}


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
        write_json_atomic(target.step_record(step), {**record, "reused_from": source.run_id})
    return record
