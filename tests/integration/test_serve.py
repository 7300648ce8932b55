"""`udl serve` against a real `prefect server start`, as the README's single-machine setup:
a run triggered through the API and a run fired by the schedule both complete, and stopping
serve leaves the schedule active unless `--pause-on-shutdown` asks otherwise.

Both served runs failed before in 0 s with "PipelineModel is not fully defined" (the flow
reached the run's subprocess pickled by value, without the names of its string annotations),
and stopping serve paused the schedule. One server (~15 s to start) serves the module; each
test starts its own `udl serve`. The schedule is cron `* * * * *` (the next minute boundary,
up to 60 s away), polled every 2 s; runs of the deployment never overlap.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
UDL = Path(sys.executable).with_name("udl")
PREFECT = Path(sys.executable).with_name("prefect")
START_DEADLINE_S = 180
RUN_DEADLINE_S = 300


class Api(httpx.Client):
    """A client of the test server that retries what the Prefect client retries: a 503 is the
    server's answer to a busy SQLite database (seen in CI while a run was writing its logs)."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:
        for attempt in range(10):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))
        return response


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not ready after {START_DEADLINE_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a client of a running `prefect server start` (own home, port)."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # serve polls for due runs every 10 s by default; 2 s keeps the pickup delay short.
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_healthy(env["PREFECT_API_URL"], process, log)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture
def nightly_config(small_corpus: Path, tmp_path: Path) -> Path:
    config = {
        "input": {"path": str(small_corpus), "id_column": "doc_id", "label_column": "label"},
        "encoder": {"epochs": 1},
        "cluster": {"k": 4},
        "runtime": {"output_dir": str(tmp_path / "out")},
    }
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _deployment(api: Api, name: str) -> dict[str, Any] | None:
    response = api.get(f"/deployments/name/udl-pipeline/{name}")
    return response.json() if response.status_code == 200 else None


@contextmanager
def serving(env: dict[str, str], config: Path, name: str, *options: str) -> Iterator[str]:
    """`udl serve` running until the block ends (then stopped with SIGTERM, as systemd or
    `docker stop` would); yields the deployment id."""
    log = config.with_name(f"serve-{name}.log")
    with log.open("wb") as out:
        command = [UDL, "serve", "--config", str(config), "--name", name, *options]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        with Api(base_url=env["PREFECT_API_URL"], timeout=10) as api:
            while (deployment := _deployment(api, name)) is None:
                assert process.poll() is None, f"udl serve exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "udl serve registered no deployment"
                time.sleep(1)
        yield deployment["id"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"udl serve ignored SIGTERM:\n{log.read_text()[-3000:]}")


def _wait_for_final_state(api: Api, flow_run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_DEADLINE_S
    while (run := api.get(f"/flow_runs/{flow_run_id}").json())["state_type"] not in FINAL_STATES:
        assert time.monotonic() < deadline, f"flow run still {run['state_type']}"
        time.sleep(1)
    if run["state_type"] != "COMPLETED":
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
        text = "\n".join(entry["message"] for entry in logs.json())
        pytest.fail(f"flow run ended {run['state_name']}: {run['state']['message']}\n{text}")
    return run


def _assert_clustered(config: Path, corpus: Path) -> None:
    output = Path(yaml.safe_load(config.read_text())["runtime"]["output_dir"])
    assignments = pd.read_parquet(output / "latest" / "assignments")
    assert sorted(assignments["doc_id"]) == sorted(pd.read_parquet(corpus)["doc_id"])
    assert (output / "latest" / "report" / "index.html").is_file()


def _started_scheduled_run(api: Api, deployment: str) -> dict[str, Any]:
    deadline = time.monotonic() + 150  # the next minute boundary, behind a triggered run
    body = {"deployments": {"id": {"any_": [deployment]}}}
    while True:
        runs = api.post("/flow_runs/filter", json=body).json()
        started = [r for r in runs if r["auto_scheduled"] and r["state_type"] != "SCHEDULED"]
        if started:
            return started[0]
        assert time.monotonic() < deadline, "no scheduled run started within 150 s"
        time.sleep(1)


def test_triggered_and_scheduled_runs_complete(
    server_env: dict[str, str], nightly_config: Path, small_corpus: Path
) -> None:
    with (
        Api(base_url=server_env["PREFECT_API_URL"], timeout=30) as api,
        serving(
            server_env, nightly_config, "every-minute", "--cron", "* * * * *", "--pause-on-shutdown"
        ) as deployment,
    ):
        response = api.post(f"/deployments/{deployment}/create_flow_run", json={})
        response.raise_for_status()
        _wait_for_final_state(api, response.json()["id"])
        _assert_clustered(nightly_config, small_corpus)
        _wait_for_final_state(api, _started_scheduled_run(api, deployment)["id"])
    with Api(base_url=server_env["PREFECT_API_URL"], timeout=30) as api:
        assert api.get(f"/deployments/{deployment}").json()["paused"] is True


def test_stopping_serve_leaves_the_schedule_active(
    server_env: dict[str, str], nightly_config: Path
) -> None:
    with serving(server_env, nightly_config, "nightly-clustering") as deployment:
        pass
    with Api(base_url=server_env["PREFECT_API_URL"], timeout=30) as api:
        stopped = api.get(f"/deployments/{deployment}").json()
    assert stopped["paused"] is False
    assert [s["active"] for s in stopped["schedules"]] == [True]
