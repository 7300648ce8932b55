"""Run bookkeeping: run ids, one JSON record per completed step, and the run manifest.

A step record stores the key of the inputs it was computed from, its row count and timing;
the manifest gathers them with the run's status (`recording` keeps that status true while a
flow runs).
"""

from __future__ import annotations

import platform
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from udl.config import PipelineConfig
from udl.datasets import RunLayout
from udl.redact import redact
from udl.storage import read_json, write_json_atomic

__all__ = [
    "OPTIONAL_STEPS",
    "STEPS",
    "new_run_id",
    "recording",
    "save_step",
    "versions",
    "write_manifest",
]

STEPS = ("ingest", "preprocess", "embed", "cluster", "report")
OPTIONAL_STEPS = ("neighbours",)  # after cluster, before report, when configured
PACKAGES = ("udl", "torch", "faiss-cpu", "pyarrow", "dask", "scikit-learn", "prefect", "numpy")


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
    """Write ``manifest.json``: config, status, the run it follows, the update policy it
    applied (``update.json``), per-step row counts and timings, versions."""
    steps = {}
    for step in (*STEPS, *OPTIONAL_STEPS):
        path = layout.step_record(step)
        if path.exists():
            steps[step] = read_json(path)
    manifest = {
        "run_id": layout.run_id,
        "status": status,
        "previous_run_id": previous.run_id if previous else None,
        "update": read_json(layout.update) if layout.update.exists() else None,
        "config": config.model_dump(mode="json"),
        "steps": steps,
        "rows": {step: rec.get("rows") for step, rec in steps.items()},
        "versions": versions(),
        "written_at": datetime.now(UTC).isoformat(),
    }
    manifest = redact(manifest)
    write_json_atomic(layout.manifest, manifest)
    return manifest


@contextmanager
def recording(
    layout: RunLayout,
    config: PipelineConfig,
    previous: RunLayout | None,
    done: str = "completed",
) -> Iterator[None]:
    """The manifest says ``running`` while the block runs, then `done`, or ``failed`` when the
    block raises (also on a cancellation or a kill that Python sees)."""
    write_manifest(layout, config, "running", previous)
    try:
        yield
    except BaseException:
        write_manifest(layout, config, "failed", previous)
        raise
    write_manifest(layout, config, done, previous)
