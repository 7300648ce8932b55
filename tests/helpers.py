"""Test helpers shared by the flow tests."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from udl.manifest import STEPS


def task_states(
    flow_state: Any, steps: Collection[str] = STEPS, timeout: float = 60.0
) -> dict[str, str]:
    """Step name -> final state name ("Completed", "Cached", ...) of a finished flow run.

    Prefect 3 records task runs and their states from events, asynchronously: right after a
    flow returns, a task run can be missing or still Running. Poll until every one of `steps`
    (the steps the flow ran) has a final state, or the timeout passes.
    """
    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            states = {
                run.task_key.split("-")[0].removesuffix("_task"): run.state
                for run in runs
                if run.state is not None
            }
            done = all(step in states and states[step].is_final() for step in steps)
            if done or time.monotonic() > deadline:
                return {step: state.name for step, state in states.items()}
            time.sleep(0.2)
