"""Test helpers shared by the flow tests."""

from __future__ import annotations

import time
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def task_states(flow_state: Any, timeout: float = 30.0) -> dict[str, str]:
    """Step name -> final state name ("Completed", "Cached", ...) of a finished flow run.

    Prefect 3 records task-run states from events, asynchronously: right after a flow returns,
    the last task can still read as Running, so poll until every task run is final.
    """
    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if all(run.state.is_final() for run in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return {run.task_key.split("-")[0].removesuffix("_task"): run.state.name for run in runs}
