"""Run bookkeeping: run ids, one JSON record per completed step, and the run manifest.

A step record stores the key of the inputs it was computed from (config hash + what it read);
a rerun with the same run id finds the record and skips the step, so a failed run resumes at
the step that failed.
"""

from __future__ import annotations

import platform
import secrets
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from udl.config import PipelineConfig
from udl.storage import RunLayout, read_json, write_json_atomic

__all__ = ["load_step", "new_run_id", "save_step", "versions", "write_manifest"]

STEPS = ("ingest", "preprocess", "embed", "cluster", "report")
PACKAGES = ("udl", "torch", "faiss-cpu", "pyarrow", "dask", "scikit-learn", "prefect", "numpy")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261122T020000Z-3fa9c1``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def load_step(layout: RunLayout, step: str, key: str) -> dict[str, Any] | None:
    """The record of `step` if it completed with the same `key`, else None."""
    path = layout.steps / f"{step}.json"
    if not path.exists():
        return None
    record = read_json(path)
    return record if record.get("key") == key else None


def save_step(layout: RunLayout, step: str, key: str, record: dict[str, Any]) -> dict[str, Any]:
    """Mark `step` complete: written last, after the step's outputs are in place."""
    record = {"step": step, "key": key, **record}
    write_json_atomic(layout.steps / f"{step}.json", record)
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


def write_manifest(layout: RunLayout, config: PipelineConfig, status: str) -> dict[str, Any]:
    """Write ``manifest.json``: config, status, per-step row counts and timings, versions."""
    steps = {}
    for step in STEPS:
        path = layout.steps / f"{step}.json"
        if path.exists():
            steps[step] = read_json(path)
    manifest = {
        "run_id": layout.run_id,
        "status": status,
        "config": config.model_dump(mode="json"),
        "steps": steps,
        "rows": {step: rec.get("rows") for step, rec in steps.items()},
        "versions": versions(),
        "written_at": datetime.now(UTC).isoformat(),
    }
    write_json_atomic(layout.manifest, manifest)
    return manifest
