"""The deployed stack end to end: auth, the nightly cron, and on-demand runs started through
the REST API and from the Prefect UI, each executed by the process worker on the Dask cluster.

The stack is what infra/local/start-services.sh starts (Postgres, Prefect server and process
worker, Dask scheduler and 2 workers), on free loopback ports with every file in a temporary
folder, once per session (~30 s). Waits have generous deadlines so a busy machine does not
fail them; none asserts a duration.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.integration

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_DEADLINE_S = 300

REPO = Path(__file__).resolve().parents[2]
START = REPO / "infra" / "local" / "start-services.sh"
STOP = REPO / "infra" / "local" / "stop-services.sh"


@dataclass(frozen=True)
class Stack:
    """Where the running services are."""

    state_dir: Path
    ui_url: str
    api_url: str
    auth_string: str
    dask_address: str

    def api(self) -> httpx.Client:
        """A client of the Prefect REST API, authenticated like the UI and the workers."""
        user, _, password = self.auth_string.partition(":")
        return httpx.Client(base_url=self.api_url, auth=(user, password), timeout=30)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _read_env_file(path: Path) -> dict[str, str]:
    """Parse the `export NAME=value` lines start-services.sh writes (shell-quoted values)."""
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Not pytest's tmp_path: its folders are private to the current user, and as root
    # Postgres runs as another user who must reach its data folder.
    state_dir = Path(tempfile.mkdtemp(prefix="udl-services-"))
    prefect_port, dask_port, pg_port = _free_ports(3)
    env = {
        **os.environ,
        "UDL_PROJECT_DIR": str(REPO),
        "UDL_PREFECT_PORT": str(prefect_port),
        "UDL_DASK_PORT": str(dask_port),
        "UDL_PG_PORT": str(pg_port),
        # Workers poll every 10 s by default; 2 s keeps each run's pickup delay short.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    try:
        started = subprocess.run(
            [str(START), str(state_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if started.returncode != 0:
            logs = "\n".join(
                f"--- {log.name}\n{log.read_text()[-3000:]}"
                for log in sorted((state_dir / "logs").glob("*.log"))
            )
            pytest.fail(f"start-services.sh failed:\n{started.stderr}\n{logs}")
        values = _read_env_file(state_dir / "env")
        yield Stack(
            state_dir=state_dir,
            ui_url=f"http://127.0.0.1:{prefect_port}",
            api_url=values["PREFECT_API_URL"],
            auth_string=values["PREFECT_API_AUTH_STRING"],
            dask_address=values["UDL_DASK_ADDRESS"],
        )
    finally:
        subprocess.run(
            [str(STOP), str(state_dir)], env=env, capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(state_dir, ignore_errors=True)


def _deployment(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"/deployments/name/udl-pipeline/{name}")
    response.raise_for_status()
    return response.json()


def _flow_runs(
    api: httpx.Client, deployment_id: str, state_types: list[str] | None = None
) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"deployments": {"id": {"any_": [deployment_id]}}}
    if state_types:
        body["flow_runs"] = {"state": {"type": {"any_": state_types}}}
    response = api.post("/flow_runs/filter", json=body)
    response.raise_for_status()
    return response.json()


def _wait_for_final_state(api: httpx.Client, flow_run_id: str) -> dict[str, Any]:
    """Poll the run until it ends; on anything but COMPLETED, fail with the run's own log."""
    deadline = time.monotonic() + RUN_DEADLINE_S
    while time.monotonic() < deadline:
        run = api.get(f"/flow_runs/{flow_run_id}").json()
        if run["state_type"] in FINAL_STATES:
            break
        time.sleep(2)
    else:
        pytest.fail(f"flow run {flow_run_id} still {run['state_type']} after {RUN_DEADLINE_S}s")
    if run["state_type"] != "COMPLETED":
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
        text = "\n".join(entry["message"] for entry in logs.json())
        pytest.fail(f"flow run ended {run['state_name']}: {run['state']['message']}\n{text}")
    return run


def _assert_one_row_per_document(run_dir: Path, corpus: Path) -> None:
    documents = pd.read_parquet(corpus)
    assignments = pd.read_parquet(run_dir / "assignments")
    assert len(assignments) == len(documents)
    assert set(assignments["doc_id"]) == set(documents["doc_id"])


def _config(corpus: Path, output_dir: Path, run_id: str, dask_address: str) -> dict[str, Any]:
    return {
        "input": {"path": str(corpus), "id_column": "doc_id", "label_column": "label"},
        "cluster": {"k": 4},
        "runtime": {"output_dir": str(output_dir), "run_id": run_id, "dask_address": dask_address},
    }


def test_api_requires_the_auth_string(stack: Stack) -> None:
    assert httpx.post(f"{stack.api_url}/flow_runs/filter", json={}).status_code == 401
    wrong = httpx.post(f"{stack.api_url}/flow_runs/filter", json={}, auth=("admin", "wrong"))
    assert wrong.status_code == 401
    with stack.api() as api:
        assert api.post("/flow_runs/filter", json={}).status_code == 200
    # Exempt from auth, so container and Kubernetes health probes need no credentials.
    assert httpx.get(f"{stack.api_url}/health").status_code == 200


def test_nightly_deployment_gets_upcoming_scheduled_runs(stack: Stack) -> None:
    with stack.api() as api:
        nightly = _deployment(api, "nightly-clustering")
        assert nightly["global_concurrency_limit"]["limit"] == 1
        assert nightly["parameters"]["config"]["runtime"]["dask_address"] == stack.dask_address
        [schedule] = nightly["schedules"]
        assert schedule["active"]
        assert schedule["schedule"]["cron"] == "0 2 * * *"
        assert schedule["schedule"]["timezone"] == "UTC"
        # The server's scheduler service creates the runs (SQLAlchemy 2.1 silently broke it).
        deadline = time.monotonic() + 60
        while not (scheduled := _flow_runs(api, nightly["id"], ["SCHEDULED"])):
            assert time.monotonic() < deadline, "the scheduler created no runs within 60 s"
            time.sleep(2)
    starts = sorted(datetime.fromisoformat(run["expected_start_time"]) for run in scheduled)
    now = datetime.now(UTC)
    assert all(
        start > now and start.astimezone(UTC).time().isoformat() == "02:00:00" for start in starts
    )
    assert all(later - earlier == timedelta(days=1) for earlier, later in pairwise(starts))


def test_on_demand_run_through_the_rest_api(
    stack: Stack, small_corpus: Path, tmp_path: Path
) -> None:
    config = _config(small_corpus, tmp_path / "out", "api-run", stack.dask_address)
    with stack.api() as api:
        deployment = _deployment(api, "on-demand-clustering")
        response = api.post(
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"config": config}},
        )
        response.raise_for_status()
        _wait_for_final_state(api, response.json()["id"])
    _assert_one_row_per_document(tmp_path / "out" / "runs" / "api-run", small_corpus)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("needs Debian's chromium and chromium-driver; run .ci/system-deps")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: Chromium's sandbox refuses to run as root, which CI machines are.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_quick_run_from_the_ui(
    stack: Stack, browser: WebDriver, small_corpus: Path, tmp_path: Path
) -> None:
    with stack.api() as api:
        deployment = _deployment(api, "on-demand-clustering")
        # "Quick run" uses the deployment's parameters: point them at the small corpus, as an
        # operator would on the deployment's page, so the run is small and writes under tmp.
        config = _config(small_corpus, tmp_path / "out", "ui-run", stack.dask_address)
        api.patch(
            f"/deployments/{deployment['id']}", json={"parameters": {"config": config}}
        ).raise_for_status()
        before = {run["id"] for run in _flow_runs(api, deployment["id"])}

        wait = WebDriverWait(browser, 60)
        browser.get(f"{stack.ui_url}/deployments/deployment/{deployment['id']}")
        # With basic auth on, the UI first asks for the auth string, then returns to the page.
        wait.until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]"))
        ).send_keys(stack.auth_string)
        browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, ".run-menu__run-button"))
        ).click()
        quick_run = (
            By.XPATH,
            "//button[contains(@class, 'p-overflow-menu-item')][normalize-space()='Quick run']",
        )
        wait.until(expected_conditions.element_to_be_clickable(quick_run)).click()

        deadline = time.monotonic() + 30
        while not (new := [r for r in _flow_runs(api, deployment["id"]) if r["id"] not in before]):
            assert time.monotonic() < deadline, "clicking Quick run created no flow run"
            time.sleep(1)
        [run] = new
        assert run["parameters"] == {"config": config}
        _wait_for_final_state(api, run["id"])
    _assert_one_row_per_document(tmp_path / "out" / "runs" / "ui-run", small_corpus)
