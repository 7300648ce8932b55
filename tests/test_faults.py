"""Reliability under faults (issue 8): a killed flow process, a killed Dask worker, flaky object
storage, an unwritable output folder and a full disk.

Every test compares with one undisturbed run of the same corpus, config and run id (`baseline`),
so "the outcome equals a clean run" means byte-identical Parquet files. Runs are small (500
documents, 3 epochs) and each test has its own output folder, so no run follows another.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from fsspec.implementations.memory import MemoryFileSystem

import tasks.steps
import udl.storage
from flows import pipeline
from tests.helpers import task_states
from udl.config import PipelineConfig, RuntimeConfig, load_config
from udl.errors import ConfigError
from udl.features import compute_features
from udl.parallel import dask_client
from udl.storage import dataset_parts

pytestmark = pytest.mark.usefixtures("prefect_harness")

RUN_ID = "r"
DATASETS = ("corpus", "rejects", "features", "embeddings", "assignments")
CONFIG_YAML = """\
input:
  id_column: doc_id
  label_column: label
  partition_rows: 100        # 500 documents -> 5 parts per dataset
preprocess:
  n_features: 4096
encoder:
  kind: autoencoder
  dim: 16
  hidden_dim: 64
  reconstruct_features: 512
  epochs: 3
  batch_size: 64
cluster:
  k: 4
report:
  metrics_sample: 500
  map_sample: 200
runtime:
  seed: 0
  dask_workers: 1
"""


@dataclass(frozen=True)
class Baseline:
    """An undisturbed run, and how to configure an identical one in another output folder."""

    corpus: Path
    config_file: Path
    run_dir: Path

    def config(self, output: Path) -> PipelineConfig:
        """What `udl run CORPUS --output OUTPUT --config FILE --run-id r` runs."""
        return load_config(self.config_file).with_overrides(
            {
                "input.path": str(self.corpus),
                "runtime.output_dir": str(output),
                "runtime.run_id": RUN_ID,
            }
        )

    def cli_args(self, output: Path) -> list[str]:
        return [
            "run",
            str(self.corpus),
            "--output",
            str(output),
            "--config",
            str(self.config_file),
            "--run-id",
            RUN_ID,
        ]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, sample_frame: pd.DataFrame) -> Baseline:
    folder = tmp_path_factory.mktemp("faults-baseline")
    classes = sorted(sample_frame["label"].unique())[:4]
    frame = (
        sample_frame[sample_frame["label"].isin(classes)]
        .groupby("label", group_keys=False)
        .head(125)
        .reset_index(drop=True)
    )
    corpus = folder / "corpus.parquet"
    frame.to_parquet(corpus, index=False)
    config_file = folder / "config.yaml"
    config_file.write_text(CONFIG_YAML, encoding="utf-8")
    base = Baseline(corpus, config_file, folder / "out" / "runs" / RUN_ID)
    run_dir = Path(pipeline.clustering_pipeline(base.config(folder / "out")))
    assert run_dir == base.run_dir
    return base


def _parts(run_dir: Path, name: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dataset_parts(run_dir / name)}


def _assert_same_outputs(run_dir: Path, baseline: Baseline) -> None:
    """Every dataset of `run_dir` is byte-identical to the baseline's (same run id, seed)."""
    for name in DATASETS:
        parts = _parts(run_dir, name)
        assert parts, f"{run_dir / name} has no parts"
        assert parts == _parts(baseline.run_dir, name), f"{name} differs from the clean run"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    assert (run_dir.parent.parent / "latest").resolve() == run_dir.resolve()


def _leftovers(run_dir: Path) -> list[str]:
    """Temporary folders and files of interrupted writes (``.<name>.tmp-*``, ``*.old-*``)."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob(".*")
        if ".tmp" in p.name or ".old-" in p.name
    )


# --- 1. kill -9 of the flow process during each step -------------------------------------------

# The subprocess runs the real CLI under a PEP 578 audit hook that freezes the process (SIGSTOP)
# the instant it makes the chosen file-system call; the test then SIGKILLs the frozen process
# group (flow process, Dask nanny and workers). No udl code is replaced, and the kill lands at
# the same point of the step every time instead of racing a poll against a fast step.
FREEZE_AT = """
import os, signal, sys
event, needle, marker = sys.argv[1:4]
fired = []

def freeze(name, args):
    if name == event and not fired and args and needle in str(args[0]):
        fired.append(True)
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))
        os.kill(os.getpid(), signal.SIGSTOP)

sys.addaudithook(freeze)
from flows.cli import main
sys.exit(main(sys.argv[4:]))
"""

# Where each step is frozen: datasets are frozen while the finished temporary folder is being
# fsynced, i.e. with every part written but before the rename that commits it; the report is
# frozen when it opens the temporary HTML file (metrics.json already written, index.html not).
KILL_POINTS = {
    "ingest": ("open", "/.corpus.tmp-"),
    "preprocess": ("open", "/.features.tmp-"),
    "embed": ("open", "/.embeddings.tmp-"),
    "cluster": ("open", "/.assignments.tmp-"),
    "report": ("open", "/report/index.tmp"),
}
STEP_OUTPUT = {
    "ingest": "corpus",
    "preprocess": "features",
    "embed": "embeddings",
    "cluster": "assignments",
    "report": "report/index.html",
}


def _frozen(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _run_until_frozen(
    argv: list[str], event: str, needle: str, workdir: Path, timeout: float = 300.0
) -> None:
    """Run ``udl`` with `argv` until it makes the call (`event`, path containing `needle`), then
    kill -9 its whole process group."""
    from prefect.settings import PREFECT_API_URL

    marker = workdir / "frozen"
    log = workdir / "udl.log"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", FREEZE_AT, event, needle, str(marker), *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not (marker.exists() and _frozen(process.pid)):
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"udl exited with {process.returncode} before {needle}:\n{tail}")
            assert time.monotonic() < deadline, f"no {event} {needle} after {timeout} s"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # Dask's nanny and worker share the group: none may outlive the flow process.
    deadline = time.monotonic() + 10
    while survivors := _alive_in_group(process.pid):
        assert time.monotonic() < deadline, f"processes of the killed run still alive: {survivors}"
        time.sleep(0.1)


def _alive_in_group(pgid: int) -> list[str]:
    """Pids of the processes in group `pgid` that are not dead (zombies awaiting reaping are)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            alive.append(stat.parent.name)
    return alive


@pytest.mark.parametrize("step", list(KILL_POINTS))
def test_kill_9_during_each_step_then_rerun_gives_identical_outputs(
    baseline: Baseline, tmp_path: Path, step: str
) -> None:
    output = tmp_path / "out"
    run_dir = output / "runs" / RUN_ID
    steps = list(KILL_POINTS)
    done, redo = steps[: steps.index(step)], steps[steps.index(step) :]

    _run_until_frozen(baseline.cli_args(output), *KILL_POINTS[step], tmp_path)

    # Killed inside the step: earlier steps are recorded, this one is not, its output is absent.
    cache = run_dir / "cache"
    assert all(list(cache.glob(f"{s}-*")) for s in done), "an earlier step was not cached"
    assert not list(cache.glob(f"{step}-*")), "killed too late: the step had completed"
    assert not (run_dir / STEP_OUTPUT[step]).exists()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    if step != "report":
        assert _leftovers(run_dir), "the kill should have interrupted a write in progress"

    state = pipeline.clustering_pipeline(baseline.config(output), return_state=True)
    assert state.is_completed()
    states = task_states(state)
    assert {s: states[s] for s in done} == dict.fromkeys(done, "Cached")
    assert {s: states[s] for s in redo} == dict.fromkeys(redo, "Completed")
    _assert_same_outputs(run_dir, baseline)
    assert _leftovers(run_dir) == [], "the rerun kept the killed run's temporary files"


# --- 2. a Dask worker killed during preprocessing -----------------------------------------------


# When the victim dies: as a task starts executing on it, or just after its first task
# finished (the result lost with it must be recomputed, and its part file written again).
KILL_WHEN = {
    "starting a task": lambda start, finish: finish == "executing",
    "holding a result": lambda start, finish: start == "executing" and finish == "memory",
}


def _kill_once_plugin(flag: Path, moment: str) -> WorkerPlugin:
    """A worker plugin that SIGKILLs its worker process at `moment` (see KILL_WHEN) of the
    first task to get there on any worker; `flag`, created exclusively, elects the one victim
    and records its pid and task.

    Defined in a function so cloudpickle ships the class by value to the worker processes.
    """
    when = KILL_WHEN[moment]

    class KillOnce(WorkerPlugin):
        name = "udl-test-kill-once"

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if not when(start, finish):
                return
            try:
                fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return
            os.write(fd, f"{os.getpid()} {key}".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    return KillOnce()


@pytest.mark.parametrize("moment", list(KILL_WHEN))
def test_dask_worker_killed_during_preprocess_is_replaced_and_the_output_unchanged(
    baseline: Baseline, tmp_path: Path, moment: str
) -> None:
    config = baseline.config(tmp_path / "out")
    flag = tmp_path / "killed-worker"
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit="2GiB",
        dashboard_address=None,
    ) as cluster:
        runtime = RuntimeConfig(dask_address=cluster.scheduler_address)
        with dask_client(runtime) as client:
            client.register_plugin(_kill_once_plugin(flag, moment))
            result = compute_features(
                baseline.run_dir / "corpus",
                tmp_path / "features",
                tmp_path / "models",
                config.preprocess,
            )
    assert flag.exists(), "no worker was killed"
    pid, key = flag.read_text().split(" ", 1)
    assert not Path(f"/proc/{pid}").exists() or _zombie(int(pid)), f"worker {pid} ({key}) survived"
    assert result.n_docs == 500
    assert _parts(tmp_path, "features") == _parts(baseline.run_dir, "features")
    for name in ("tfidf.parquet", "vocabulary.parquet"):
        assert pq.read_table(tmp_path / "models" / name).equals(
            pq.read_table(baseline.run_dir / "models" / name)
        ), name


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


# --- 3. transient object-storage failures ------------------------------------------------------


class FlakyStore(MemoryFileSystem):
    """An in-memory object store whose opens fail while `failing` holds their (1-based) number,
    as a store does while it drops connections."""

    protocol = "flaky"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    opens = 0
    failing: ClassVar[set[int]] = set()

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, str):
            path = path.removeprefix("flaky://")
        return super()._strip_protocol(path)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:
            FlakyStore.opens += 1
            if FlakyStore.opens in FlakyStore.failing:
                raise ConnectionResetError(
                    errno.ECONNRESET, f"flaky://{path}: connection reset by peer"
                )
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky_store(baseline: Baseline) -> Iterator[str]:
    """The baseline corpus as two Parquet objects in the flaky store; yields the glob URL."""
    fsspec.register_implementation("flaky", FlakyStore, clobber=True)
    table = pq.read_table(baseline.corpus)
    fs = FlakyStore()
    for i, start in enumerate((0, 250)):
        with fs.open(f"/bucket/corpus/part-{i}.parquet", "wb") as handle:
            pq.write_table(table.slice(start, 250), handle)
    FlakyStore.opens, FlakyStore.failing = 0, set()
    yield "flaky://bucket/corpus/*.parquet"
    FlakyStore.store.clear()
    FlakyStore.failing = set()


@pytest.fixture
def in_process_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest in this process instead of on the run's Dask cluster: the flaky store lives in
    this process's memory, and the secrets test's scheduler address reaches no scheduler."""
    monkeypatch.setattr(tasks.steps, "dask_client", lambda runtime: contextlib.nullcontext())


def _ingest(config: PipelineConfig, path: str, output: Path) -> Any:
    config = config.with_overrides({"input.path": path, "runtime.output_dir": str(output)})
    return pipeline.ingest_only(config, return_state=True)


def _fast_ingest_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same retries and condition as production, without the backoff wait.
    fast = pipeline.ingest_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
    monkeypatch.setattr(pipeline, "ingest_task", fast)


@pytest.mark.usefixtures("in_process_ingest")
def test_transient_storage_errors_are_absorbed_by_retries(
    baseline: Baseline, flaky_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _ingest(baseline.config(tmp_path), flaky_store, tmp_path / "clean")
    assert clean.is_completed()
    assert FlakyStore.opens == 2

    _fast_ingest_retries(monkeypatch)
    # Attempt 1 reads part-0 then loses part-1 (mid-dataset), attempt 2 loses part-0,
    # attempt 3 (the last retry) reads both.
    FlakyStore.opens, FlakyStore.failing = 0, {2, 3}
    state = _ingest(baseline.config(tmp_path), flaky_store, tmp_path / "flaky")
    assert state.is_completed()
    assert FlakyStore.opens == 5
    assert task_states(state, steps=("ingest",)) == {"ingest": "Completed"}
    run_dir = tmp_path / "flaky" / "runs" / RUN_ID
    for name in ("corpus", "rejects"):
        assert _parts(run_dir, name) == _parts(tmp_path / "clean" / "runs" / RUN_ID, name)
    assert _leftovers(run_dir) == []
    ingested = json.loads((run_dir / "steps" / "ingest.json").read_text())
    assert (ingested["rows_read"], ingested["rows_ingested"]) == (500, 500)


@pytest.mark.usefixtures("in_process_ingest")
def test_storage_errors_beyond_the_retries_fail_the_run_cleanly(
    baseline: Baseline, flaky_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fast_ingest_retries(monkeypatch)
    FlakyStore.failing = {1, 2, 3}
    state = _ingest(baseline.config(tmp_path), flaky_store, tmp_path)
    assert state.is_failed()
    assert FlakyStore.opens == 3  # one try and two retries, then it gives up
    with pytest.raises(ConnectionResetError, match="connection reset by peer"):
        state.result()
    run_dir = tmp_path / "runs" / RUN_ID
    assert not (run_dir / "corpus").exists() and not (run_dir / "rejects").exists()
    assert _leftovers(run_dir) == []
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"

    FlakyStore.failing = set()
    assert _ingest(baseline.config(tmp_path), flaky_store, tmp_path).is_completed()
    assert _parts(run_dir, "corpus")


# --- 4. an output folder that cannot be written, and a full disk -------------------------------


def _make_unwritable(output: Path) -> Callable[[], None]:
    """Make `output` unwritable for this process; returns the function that fixes it.

    Without root, the folder loses its write permission. As root (CI containers often run as
    root) permissions are not enforced, so a regular file takes the place of ``runs/``: the
    run folder cannot be created either way.
    """
    output.mkdir(parents=True)
    if os.geteuid() != 0:
        output.chmod(0o555)
        return lambda: output.chmod(0o755)
    blocker = output / "runs"
    blocker.write_text("a file where the runs folder belongs\n")
    return blocker.unlink


def test_unwritable_output_fails_clearly_and_a_rerun_after_the_fix_completes(
    baseline: Baseline, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    fix = _make_unwritable(output)
    config = baseline.config(output)
    with pytest.raises(OSError) as failure:
        pipeline.clustering_pipeline(config)
    assert failure.value.errno in (errno.EACCES, errno.ENOTDIR, errno.EEXIST)
    assert str(output) in str(failure.value)
    assert not (output / "runs").is_dir()
    assert not (output / "latest").exists()

    fix()
    run_dir = Path(pipeline.clustering_pipeline(config))
    _assert_same_outputs(run_dir, baseline)


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, folder: str, first_bad_part: int) -> list[str]:
    """From part `first_bad_part` on, Parquet writes into a ``.<folder>.tmp-*`` folder stop half
    way with ENOSPC, as on a full disk: half the file's bytes land, then the write fails.

    Patches `pyarrow.parquet.write_table`, the call `udl.storage.write_part` makes. Returns the
    list of paths that failed.
    """
    real = pq.write_table
    failed: list[str] = []

    def write_table(table: pa.Table, where: Any, **options: Any) -> None:
        path = Path(str(where))
        # write_part writes part-NNNNN.parquet through a hidden temporary name.
        part = path.name.lstrip(".")
        if f"/.{folder}.tmp-" in str(path) and part >= f"part-{first_bad_part:05d}":
            sink = pa.BufferOutputStream()
            real(table, sink, **options)
            data = sink.getvalue().to_pybytes()
            path.write_bytes(data[: len(data) // 2])
            failed.append(str(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(table, where, **options)

    monkeypatch.setattr(udl.storage.pq, "write_table", write_table)
    return failed


def test_full_disk_mid_dataset_leaves_nothing_half_written(
    baseline: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = baseline.config(tmp_path / "out")
    run_dir = tmp_path / "out" / "runs" / RUN_ID
    fast = pipeline.cluster_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
    monkeypatch.setattr(pipeline, "cluster_task", fast)

    # The disk fills while the clustering step writes its third assignments part.
    with monkeypatch.context() as patch:
        failed = _disk_full_at(patch, "assignments", 2)
        with pytest.raises(OSError) as full:
            pipeline.clustering_pipeline(config)
    assert full.value.errno == errno.ENOSPC
    assert "No space left on device" in str(full.value)
    assert len(failed) == 3  # OSError counts as transient: one try and two retries
    assert not (run_dir / "assignments").exists(), "a half-written dataset was committed"
    assert not (run_dir / "steps" / "cluster.json").exists()
    assert _leftovers(run_dir) == []
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"

    # Space freed: the rerun resumes at the clustering step.
    state = pipeline.clustering_pipeline(config, return_state=True)
    assert task_states(state) == {
        "ingest": "Cached",
        "preprocess": "Cached",
        "embed": "Cached",
        "cluster": "Completed",
        "report": "Completed",
    }
    _assert_same_outputs(run_dir, baseline)
    complete = _parts(run_dir, "assignments")

    # The step's cache record is lost (e.g. a crash right after the dataset was committed), so
    # the rerun recomputes it over the complete dataset, and the disk is full again: the
    # complete dataset stays in place, untouched.
    for record in (run_dir / "cache").glob("cluster-*"):
        record.unlink()
    with monkeypatch.context() as patch:
        failed = _disk_full_at(patch, "assignments", 2)
        with pytest.raises(OSError, match="No space left on device"):
            pipeline.clustering_pipeline(config)
    assert len(failed) == 3
    assert _parts(run_dir, "assignments") == complete
    assert _leftovers(run_dir) == []

    assert pipeline.clustering_pipeline(config, return_state=True).is_completed()
    _assert_same_outputs(run_dir, baseline)


# --- k larger than the corpus, found at the clustering step --------------------------------------


def test_k_larger_than_the_corpus_is_a_config_error_not_retried(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = tasks.steps.cluster_embeddings

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.steps, "cluster_embeddings", counted)
    # Re-clustering reuses the baseline's embeddings: only the clustering step runs.
    output = baseline.run_dir.parent.parent
    config = baseline.config(output).with_overrides(
        {"runtime.run_id": "too-many-clusters", "cluster.k": 501}
    )
    # 2 of the 500 documents have no feature and are not clustered (status no_features).
    with pytest.raises(ConfigError, match=r"n_docs=498 should be >= k=501; lower k"):
        pipeline.recluster(config, source_run=RUN_ID)
    assert len(calls) == 1, "a ConfigError must not be retried"
    run_dir = output / "runs" / "too-many-clusters"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    assert not (run_dir / "assignments").exists()
    assert (output / "latest").resolve() == baseline.run_dir.resolve()


# --- 6. security: no secrets in run artifacts, run paths stay inside the output root -----------


@pytest.mark.usefixtures("in_process_ingest")
def test_secrets_in_settings_and_addresses_stay_out_of_run_artifacts(
    baseline: Baseline, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    secrets = ("hunter2-prefect", "hunter2-dask")
    config = baseline.config(tmp_path).with_overrides(
        {"runtime.dask_address": "tcp://udl:hunter2-dask@127.0.0.1:8786"}
    )
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "admin:hunter2-prefect"}):
        assert pipeline.ingest_only(config, return_state=True).is_completed()
    run_dir = tmp_path / "runs" / RUN_ID
    leaks = [
        str(path.relative_to(run_dir))
        for path in run_dir.rglob("*")
        if path.is_file() and any(s.encode() in path.read_bytes() for s in secrets)
    ]
    assert leaks == [], f"secrets written to {leaks}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["runtime"]["dask_address"] == "tcp://udl:***@127.0.0.1:8786"


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_existing_run_ids_cannot_leave_the_output_root(
    baseline: Baseline, tmp_path: Path, spelling: str
) -> None:
    # A complete run outside the output root, named by a path that leads out of ``runs/``.
    outside = tmp_path / "elsewhere"
    shutil.copytree(baseline.run_dir, outside, symlinks=True)
    report = (outside / "report" / "index.html").read_bytes()
    output = baseline.run_dir.parent.parent
    run_id = os.path.relpath(outside, output / "runs") if spelling == "relative" else str(outside)
    assert (output / "runs" / run_id / "manifest.json").is_file()

    with pytest.raises(ConfigError, match="run_id"):
        pipeline.rereport(str(output), run_id)
    config = baseline.config(output).with_overrides({"runtime.run_id": "escape-attempt"})
    with pytest.raises(ConfigError, match="run_id"):
        pipeline.recluster(config, source_run=run_id)
    assert (outside / "report" / "index.html").read_bytes() == report
    assert not (output / "runs" / "escape-attempt").exists()
