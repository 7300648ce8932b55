"""`udl run` stops promptly and cleanly on SIGTERM/SIGINT (issue 22).

Before, a SIGTERM to the process group (`docker stop`, systemd, Ctrl-C's SIGINT in a terminal)
also killed Prefect's temporary server, and the run then hung on API retries for minutes; a
SIGTERM to udl alone exited at once but left the server and Dask's processes running.

The run uses its own temporary Prefect server (no PREFECT_API_URL), as a user's does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

UDL = Path(sys.executable).with_name("udl")
# A liveness bound, not a speed target: a clean stop takes a few seconds, a hang minutes.
EXIT_DEADLINE_S = 30


def _descendants(pid: int) -> list[int]:
    listed = subprocess.run(["pgrep", "-P", str(pid)], check=False, capture_output=True, text=True)
    found = listed.stdout
    children = [int(child) for child in found.split()]
    return [each for child in children for each in (child, *_descendants(child))]


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for an init that does not reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"udl run exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} missing after {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize(("signum", "to_group"), [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_run_stops_cleanly_on_a_signal_22(
    small_corpus: Path, tmp_path: Path, signum: signal.Signals, to_group: bool
) -> None:
    output = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    command = [UDL, "run", str(small_corpus), "--output", str(output), "--run-id", "stopped"]
    log = tmp_path / "udl.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    run_dir = output / "runs" / "stopped"
    try:
        # Ingest done: the preprocess step has its Dask cluster up.
        _wait_for(run_dir / "steps" / "ingest.json", process)
        children = _descendants(process.pid)
        assert children, "udl run has no child processes to clean up"
        (os.killpg if to_group else os.kill)(process.pid, signum)
        code = process.wait(timeout=EXIT_DEADLINE_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert code == 128 + signum, text[-3000:]
    lines = text.splitlines()
    assert f"udl: stopped by {signum.name}" in lines, text[-3000:]
    # After it, at most multiprocessing's resource tracker (its own process) may still warn
    # about semaphores of the interrupted workers; nothing of udl's, no traceback.
    after = lines[lines.index(f"udl: stopped by {signum.name}") + 1 :]
    assert not [line for line in after if "Traceback" in line or "Error" in line], after
    deadline = time.monotonic() + 10  # a child may still be closing its sockets
    while left := [pid for pid in children if _alive(pid)]:
        assert time.monotonic() < deadline, f"left running: {left}\n{text[-3000:]}"
        time.sleep(0.2)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
