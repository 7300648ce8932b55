"""What every step task shares: the retry policy, the cache, and the step record.

Caching: each step's key comes from `udl.lineage` (the upstream step's key, the step's
config and the code version, hashed by `udl.fingerprint.step_key`); the task's cache key *is*
that key, and its result (the small step record) is persisted as JSON inside the run folder.
Rerunning a completed run therefore does no work (every task is a cache hit) and rerunning a
failed run resumes at the step that failed. Outputs are Parquet under the run folder; Prefect
only ever sees paths and row counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect import Task, get_run_logger
from prefect.tasks import exponential_backoff

from udl.config import RuntimeConfig
from udl.datasets import RunLayout
from udl.errors import UdlError
from udl.manifest import save_step

__all__ = ["STEP_OPTIONS", "for_run", "inference_workers", "retry_on_transient", "run_step"]


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O and worker failures; never a `UdlError` (bad config or data fails fast)."""
    try:
        state.result()
    except UdlError:
        return False
    except Exception:  # noqa: BLE001 (anything else may be transient)
        return True
    return False


def _key_parameter(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["key"]


STEP_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
    "cache_key_fn": _key_parameter,
    "persist_result": True,
    "result_serializer": "json",
}


def for_run(task: Task, layout: RunLayout, runtime: RuntimeConfig) -> Task:
    """The task with its cache kept in this run's folder and the configured time limit."""
    return task.with_options(
        result_storage=layout.cache, timeout_seconds=runtime.task_timeout_seconds
    )


def run_step(
    layout: RunLayout, step: str, key: str, compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `compute`, then record the step (rows, timing, key) in ``steps/<step>.json``."""
    started = time.perf_counter()
    result = compute()
    record = save_step(layout, step, key, {**result, "seconds": time.perf_counter() - started})
    # The embed step names the device it ran on (None for supplied vectors).
    device = f" on {record['device']}" if record.get("device") else ""
    get_run_logger().info(
        "%s: %s rows in %.1f s%s", step, record.get("rows"), record["seconds"], device
    )
    return record


def inference_workers(runtime: RuntimeConfig) -> RuntimeConfig | None:
    """The Dask cluster on which the embed and cluster steps apply their fitted models (see
    `RuntimeConfig.dask_inference`), or None for the flow process."""
    return runtime if runtime.inference_on_dask() else None
