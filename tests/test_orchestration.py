"""Orchestration behaviour: retries, resuming failed or killed runs, the per-step flows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import tasks.steps
from flows import pipeline
from tests.helpers import task_states
from udl import schema as S
from udl.config import PipelineConfig
from udl.errors import UdlError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _config(run_dir: Path, **overrides: Any) -> PipelineConfig:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return PipelineConfig.model_validate(manifest["config"]).with_overrides(overrides)


def _assignments(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "assignments").drop(columns="run_id")


def test_transient_cluster_failures_are_retried(
    cli_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = tasks.steps.cluster_embeddings

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise OSError("object store unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.steps, "cluster_embeddings", flaky)
    # Same retries and condition as production, without the backoff wait.
    fast = pipeline.cluster_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
    monkeypatch.setattr(pipeline, "cluster_task", fast)
    state = pipeline.clustering_pipeline(
        _config(cli_run, **{"runtime.run_id": "retried"}), return_state=True
    )
    assert state.is_completed()
    assert len(calls) == 3
    assert task_states(state)["cluster"] == "Completed"
    pd.testing.assert_frame_equal(_assignments(cli_run), _assignments(Path(state.result())))


def test_bad_data_errors_are_not_retried(cli_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise UdlError("embeddings contain NaN")

    monkeypatch.setattr(tasks.steps, "cluster_embeddings", broken)
    state = pipeline.clustering_pipeline(
        _config(cli_run, **{"runtime.run_id": "no-retry"}), return_state=True
    )
    assert state.is_failed()
    assert len(calls) == 1
    run_dir = cli_run.parent / "no-retry"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    assert not (run_dir / "assignments").exists()


def test_failed_run_resumes_at_the_failed_step(
    cli_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(cli_run, **{"runtime.run_id": "resumed"})
    with monkeypatch.context() as patch:
        patch.setattr(tasks.steps, "embed_corpus", _raise_udl_error)
        assert pipeline.clustering_pipeline(config, return_state=True).is_failed()
    state = pipeline.clustering_pipeline(config, return_state=True)
    assert task_states(state) == {
        "ingest": "Cached",
        "preprocess": "Cached",
        "embed": "Completed",
        "cluster": "Completed",
        "report": "Completed",
    }
    pd.testing.assert_frame_equal(_assignments(cli_run), _assignments(Path(state.result())))


def _raise_udl_error(*args: Any, **kwargs: Any) -> Any:
    raise UdlError("injected failure")


def test_run_killed_during_embedding_resumes_there(cli_run: Path, small_corpus: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    output = cli_run.parent.parent
    run_dir = output / "runs" / "killed"
    command = [
        str(Path(sys.executable).with_name("udl")),
        "run",
        str(small_corpus),
        "--output",
        str(output),
        "--id-column",
        "doc_id",
        "--label-column",
        "label",
        "--k",
        "4",
        "--run-id",
        "killed",
    ]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The cache record is what a rerun trusts; it is written just after the step returns,
        # and not atomically (Prefect opens the final path), so wait until it is whole.
        _wait_for_record(run_dir / "cache", "preprocess-*", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not list((run_dir / "cache").glob("embed-*")), "killed too late to test resuming"

    state = pipeline.clustering_pipeline(_config(run_dir), return_state=True)
    states = task_states(state)
    assert states["ingest"] == states["preprocess"] == "Cached"
    assert states["embed"] == "Completed"
    pd.testing.assert_frame_equal(_assignments(cli_run), _assignments(run_dir))


def _wait_for_record(
    folder: Path, pattern: str, process: subprocess.Popen, timeout: float = 240.0
) -> None:
    deadline = time.monotonic() + timeout
    while not (folder.is_dir() and any(_is_whole(p) for p in folder.glob(pattern))):
        assert process.poll() is None, f"udl run exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"{folder}/{pattern} missing after {timeout} s"
        time.sleep(0.02)


def _is_whole(record: Path) -> bool:
    try:
        json.loads(record.read_bytes())
    except ValueError:
        return False
    return True


def test_recluster_reuses_embeddings_without_touching_the_source(cli_run: Path) -> None:
    before = sorted(p.name for p in (cli_run / "models").iterdir())
    config = _config(cli_run, **{"runtime.run_id": "reclustered", "cluster.k": 3})
    run_dir = Path(pipeline.recluster(config, source_run="first"))
    assert (run_dir / "embeddings").resolve() == (cli_run / "embeddings").resolve()
    frame = pd.read_parquet(run_dir / "assignments")
    assert len(frame) == 1000
    # Documents without features are not clustered (cluster_id -1, status "no_features").
    clustered = frame[S.STATUS] == S.CLUSTERED
    assert set(frame.loc[clustered, "cluster_id"]) == {0, 1, 2}
    assert set(frame.loc[~clustered, S.STATUS]) <= {S.NO_FEATURES}
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["n_clusters"] == 3
    assert sorted(p.name for p in (cli_run / "models").iterdir()) == before


def test_rereport_with_other_settings(cli_run: Path) -> None:
    config = _config(cli_run)
    html = cli_run / "report" / "index.html"
    first = html.read_bytes()
    pipeline.rereport(
        config.runtime.output_dir, "first", config.report.model_copy(update={"n_keywords": 3})
    )
    assert html.read_bytes() != first


def test_ingest_runs_on_the_runs_dask_cluster_22(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = []
    real = tasks.steps.ingest

    def on_dask(*args: Any, **kwargs: Any) -> Any:
        from distributed import default_client

        workers.append(len(default_client().scheduler_info()["workers"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.steps, "ingest", on_dask)
    config = PipelineConfig().with_overrides(
        {
            "input.path": str(small_corpus),
            "input.id_column": "doc_id",
            "runtime.output_dir": str(tmp_path),
            "runtime.run_id": "ingested",
            "runtime.dask_workers": 1,
        }
    )
    assert pipeline.ingest_only(config, return_state=True).is_completed()
    assert workers == [1]
    assert len(pd.read_parquet(tmp_path / "runs" / "ingested" / "corpus")) == 1000


def test_a_refused_dask_address_leaves_no_default_client_22() -> None:
    # Ingest now opens the configured scheduler too. A client that failed to start stayed the
    # process's default, and the next computation (another run in a served process) hung.
    import dask
    from distributed import default_client

    from udl.config import RuntimeConfig
    from udl.errors import ConfigError
    from udl.parallel import dask_client

    runtime = RuntimeConfig(dask_address="tcp://udl:secret@127.0.0.1:8786")
    with pytest.raises(ConfigError, match="not a Dask scheduler address"), dask_client(runtime):
        pass
    assert dask.config.get("scheduler", None) is None
    with pytest.raises(ValueError, match="No clients found"):
        default_client()
