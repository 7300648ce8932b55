"""What a `udl` command needs around its flows: a Prefect API, and a prompt, clean exit on
SIGTERM/SIGINT.

Without `PREFECT_API_URL`, a command starts a temporary Prefect server of its own instead of
Prefect's implicit one, for three reasons:

* it runs in a session of its own, so a signal to the whole process group (Ctrl-C in a
  terminal, `docker stop`, systemd) does not kill it while the flow still reports its final
  state through it (with Prefect's own server the run then hung on API retries for minutes);
* it is stopped when the command ends, however it ends (Prefect's is stopped only `atexit`,
  which a signal skips, so it outlived the command);
* `udl serve` gets a full server (scheduler service, UI), because Prefect's temporary server
  runs no scheduler and the served schedule would never fire.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import httpx

from udl.errors import UdlError

__all__ = [
    "STARTUP_TIMEOUT_SETTING",
    "Interrupted",
    "close_interrupted_dask",
    "interruptible",
    "prefect_api",
    "short_udl_errors",
]

STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STOP_GRACE_S = 5.0
PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwind (context managers close Dask, the flow marks the run
    failed), then exit with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Interrupted` in the main thread for the block.

    Prefect's flow engine swaps its own SIGTERM handler in while a flow runs; it records the
    run as crashed and then hands the signal back to this handler. A second signal while
    unwinding takes the default action (immediate exit), for a user who will not wait.
    """
    handled = (signal.SIGTERM, signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        for each in handled:
            signal.signal(each, signal.SIG_DFL)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; a caller elsewhere keeps its own policy
        return
    previous = {each: signal.signal(each, handler) for each in handled}
    try:
        yield
    finally:
        for each, action in previous.items():
            signal.signal(each, action)


class _WithoutUdlTraceback(logging.Filter):
    """Drops the traceback from a run log line about a `UdlError`: its message already names
    the file, row or setting to fix, and the stack is udl's, not the user's, concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UdlError):
            record.exc_info = record.exc_text = None
        return True


@contextmanager
def short_udl_errors() -> Iterator[None]:
    """Log a flow or task run failing on a `UdlError` in one line, not a 100-line traceback;
    the command then ends with the error itself (`udl: error: ...`)."""
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    only = _WithoutUdlTraceback()
    for logger in loggers:
        logger.addFilter(only)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(only)


def close_interrupted_dask() -> None:
    """Close, without tracebacks, Dask clusters an interrupt caught while they started.

    A cluster interrupted inside its constructor never reached the `with` that closes it;
    Dask closes it at exit and prints the errors of its half-started workers ("Nanny failed
    to start") after udl's last line. Close it now, and keep those errors out of the output.
    """
    if "distributed" not in sys.modules:
        return
    import atexit

    from distributed.deploy.spec import close_clusters

    atexit.unregister(close_clusters)
    for name in ("distributed", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with contextlib.suppress(Exception):
        close_clusters()


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the server child before exec: get SIGTERM if the udl process dies, even by SIGKILL
    (Linux only; elsewhere a killed udl leaves the server running, as Prefect's own does)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _server_process(port: int, full: bool) -> subprocess.Popen[bytes]:
    """`prefect server start` (API, UI, scheduler) or the API alone, as Prefect's temporary
    server runs it; in a session of its own, on 127.0.0.1:`port`."""
    env = {
        **os.environ,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    if full:
        command = [sys.executable, "-m", "prefect", "server", "start"]
        env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    else:
        import prefect

        command = [
            *(sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"),
            *("--app-dir", str(prefect.__module_path__.parent)),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "error"),
            *("--lifespan", "on"),
        ]
        env.update(
            {
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            }
        )
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL if full else None,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 (udl has no other threads yet)
    )


def _wait_healthy(process: subprocess.Popen[bytes], api_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise UdlError(
                    f"the temporary Prefect server exited with code {process.returncode} before "
                    "it was ready (its error is above); start one with `prefect server start` "
                    "and set PREFECT_API_URL"
                )
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise UdlError(
        f"the temporary Prefect server was not ready within {timeout:g} s (a busy or slow "
        f"machine, or a first start creating its database); raise {STARTUP_TIMEOUT_SETTING} "
        "(e.g. to 300), or start a server once with `prefect server start` and set "
        "PREFECT_API_URL to its API (http://127.0.0.1:4200/api)"
    )


def _drain_to_api() -> None:
    """Send the log lines and events still queued to the server before it stops (else each
    ends the command with "Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=STOP_GRACE_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def prefect_api(
    full: bool = False, while_starting: Callable[[], object] | None = None
) -> Iterator[str | None]:
    """The Prefect API for the block: `PREFECT_API_URL` if set, else a temporary server.

    Args:
        full: start a full server (UI and scheduler, for `udl serve`) rather than the API alone.
        while_starting: called once before the block, while a temporary server starts: the
            server and this process each spend seconds importing (Prefect, torch), in
            parallel rather than one after the other.

    Yields:
        The temporary server's UI address, or None when `PREFECT_API_URL` is used.

    Raises:
        UdlError: the temporary server did not become ready within
            ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        if while_starting is not None:
            while_starting()
        yield None
        return
    port = _free_port()
    address = f"http://127.0.0.1:{port}"
    process = _server_process(port, full)
    try:
        if while_starting is not None:
            while_starting()
        _wait_healthy(
            process, f"{address}/api", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        )
        with temporary_settings(updates={PREFECT_API_URL: f"{address}/api"}):
            try:
                yield address
            finally:
                _drain_to_api()
    finally:
        _stop(process)
