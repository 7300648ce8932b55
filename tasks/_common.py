"""What every step task shares: retry policy, step keys, and skip-if-done bookkeeping."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from udl import __version__
from udl.errors import UdlError
from udl.manifest import load_step, save_step
from udl.storage import RunLayout

__all__ = ["STEP_OPTIONS", "retry_on_transient", "run_step", "step_key"]


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O and worker failures; never a `UdlError` (bad config or data fails fast)."""
    try:
        state.result()
    except UdlError:
        return False
    except Exception:  # noqa: BLE001 (anything else may be transient)
        return True
    return False


# Steps exchange paths under the run folder, so Prefect's result store and input hashing are
# off; completed steps are recognised by their step records instead (see `run_step`).
STEP_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


def step_key(*parts: Any) -> str:
    """Key of a step's inputs: upstream key, the step's config and the code version."""
    payload = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def run_step(
    layout: RunLayout, step: str, key: str, compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `compute` unless this run already completed `step` with the same key."""
    logger = get_run_logger()
    done = load_step(layout, step, key)
    if done is not None:
        logger.info("%s: already complete in run %s, reusing its outputs", step, layout.run_id)
        return done
    started = time.perf_counter()
    result = compute()
    record = save_step(layout, step, key, {**result, "seconds": time.perf_counter() - started})
    logger.info("%s: %s rows in %.1f s", step, record.get("rows"), record["seconds"])
    return record
