"""Test helpers shared by the flow tests."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def task_states(flow_state: Any) -> dict[str, str]:
    """Step name -> final state name ("Completed", "Cached", ...) of a finished flow run."""
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.task_key.split("-")[0].removesuffix("_task"): run.state.name for run in runs}
