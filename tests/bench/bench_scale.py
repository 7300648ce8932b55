"""Full-pipeline scale benchmark (issue 8): time and peak memory of each step and process.

For each size N, the whole product runs as a user runs it: `udl run` (the Prefect flow on the
ephemeral API, a Dask LocalCluster of 2 workers with one thread each) in a child process, on
N documents built from the shared corpora (`bench_preprocess.build_input`: Parquet files of
250,000 rows, each document distinct). The defaults are kept (the encoder `--encoders` names, two_view by default, fitted on a
capped sample, streamed inference, spherical k-means on a sample with streamed assignment, report),
except k, fixed at 100 so the cluster step does the same work at every N.

A sampler polls the child's process tree every 0.2 s (psutil): each process's RSS is charged
to the step then running, read from the run's `steps/<step>.json` records (a step runs from
the previous record's appearance to its own). Processes are grouped as `flow` (the `udl run`
process: Prefect, the Dask scheduler and nannies, the steps' client code), `worker` (Dask
worker processes; the largest single worker is reported) and `other`. Each process's
lifetime peak is also read exactly from the kernel (`VmHWM`), so a spike between samples is
not missed there. Step times come from the run's manifest.

    .venv/bin/python tests/bench/bench_scale.py                        # 100k and 1M
    .venv/bin/python tests/bench/bench_scale.py --sizes 100000 1000000 5000000
    .venv/bin/python tests/bench/bench_scale.py --quick                # 20k: a smoke run
    .venv/bin/python tests/bench/bench_scale.py --sizes 1000000 --encoders two_view autoencoder
    .venv/bin/python tests/bench/bench_scale.py --sizes 1000000 --workers 1 2 --pin  # issue 21

Prints a table and writes `.bench/scale.json`. What to look for: seconds per step grow about
linearly in N (the `s/100k` column stays level), and the flow process's peak stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import build_input

REPO = Path(__file__).resolve().parents[2]
WORKDIR = REPO / ".bench" / "scale"
RESULT = REPO / ".bench" / "scale.json"
STEPS = ["ingest", "preprocess", "embed", "cluster", "report"]
SAMPLE_SECONDS = 0.2
K = 100


def _config(folder: Path, encoder: str, workers: int | None = None) -> dict:
    runtime: dict = {"seed": 0, "dask_workers": workers or 2}
    if workers is not None:
        runtime["dask_inference"] = "on"
    return {
        "encoder": {"kind": encoder},
        "input": {
            "path": str(folder),
            "format": "parquet",
            "text_column": "text",
            "id_column": "doc_id",
            "label_column": "label",
        },
        "cluster": {"algorithm": "kmeans", "k": K},
        "runtime": runtime,
    }


def _role(process: psutil.Process, root: int) -> str:
    if process.pid == root:
        return "flow"
    try:
        cmdline = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    # LocalCluster's nannies start each worker as a multiprocessing spawn child; Prefect's
    # ephemeral API runs as a server subprocess.
    if "spawn_main" in cmdline:
        return "worker"
    return "prefect-api" if "prefect" in cmdline and "server" in cmdline else "other"


def _hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pin(pid: int, core: int) -> None:
    """Every thread of process `pid` on `core` (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.sched_setaffinity(int(task.name), {core})
        except OSError:
            continue


class Sampler(threading.Thread):
    """Peak RSS per (step, role) of a process tree, and each process's lifetime peak; with
    `pin`, each Dask worker process on a core of its own."""

    def __init__(
        self, root: int, output: Path, earlier: frozenset[str] = frozenset(), pin: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.root, self.output, self.earlier = psutil.Process(root), output, earlier
        self.pin, self.cores = pin, {}
        self.stop = threading.Event()
        self.step_peaks: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.lifetime: dict[int, tuple[str, float]] = {}

    def _current_step(self) -> str:
        runs = [p for p in (self.output / "runs").glob("*") if p.name not in self.earlier]
        if not runs:
            return "startup"
        done = {p.stem for p in (runs[0] / "steps").glob("*.json")}
        return next((s for s in STEPS if s not in done), "finish")

    def run(self) -> None:
        while not self.stop.is_set():
            step = self._current_step()
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            totals: dict[str, float] = defaultdict(float)
            for process in tree:
                try:
                    rss = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                role = _role(process, self.root.pid)
                if self.pin and role == "worker":
                    core = self.cores.setdefault(process.pid, len(self.cores) % os.cpu_count())
                    _pin(process.pid, core)
                peaks = self.step_peaks[step]
                peaks[role] = max(peaks[role], rss)
                totals[role] += rss
                hwm = _hwm_mib(process.pid)
                if hwm is not None:
                    self.lifetime[process.pid] = (role, hwm)
            peaks = self.step_peaks[step]
            peaks["all"] = max(peaks["all"], sum(totals.values()))
            self.stop.wait(SAMPLE_SECONDS)


def run_pipeline(folder: Path, output: Path, config: dict, label: str, pin: bool = False) -> dict:
    """`udl run` on `folder` into `output` (a child process, sampled); its figures."""
    config_path = output.parent / f"config-{label}.json"  # JSON is YAML
    config_path.write_text(json.dumps(config))
    command = [
        str(Path(sys.executable).parent / "udl"),
        "run",
        str(folder),
        "--output",
        str(output),
        "--config",
        str(config_path),
    ]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    log = output.parent / f"run-{label}.log"
    before = frozenset(p.name for p in (output / "runs").glob("*"))
    started = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        sampler = Sampler(child.pid, output, before, pin)
        sampler.start()
        code = child.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"udl run ({label}) failed ({code}); see {log}")
    (run_dir,) = [p for p in (output / "runs").glob("*") if p.name not in before]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    embedded = json.loads((run_dir / "steps" / "embed.json").read_text())
    clustered = json.loads((run_dir / "steps" / "cluster.json").read_text())
    lifetime: dict[str, float] = defaultdict(float)
    for role, hwm in sampler.lifetime.values():
        lifetime[role] = max(lifetime[role], hwm)
    return {
        "run_id": run_dir.name,
        "wall_seconds": wall,
        "rows": manifest["rows"],
        "step_seconds": {s: manifest["steps"][s]["seconds"] for s in STEPS},
        # The parts that run on the Dask workers with runtime.dask_inference: inference and
        # assignment; training and fitting stay in the flow process.
        "phase_seconds": {
            "embed_train": embedded.get("train_seconds"),
            "embed_inference": embedded.get("embed_seconds"),
            "cluster_fit": clustered.get("fit_seconds"),
            "cluster_assign": clustered.get("assign_seconds"),
        },
        "step_peak_mib": {s: dict(p) for s, p in sampler.step_peaks.items()},
        "lifetime_peak_mib": dict(lifetime),
        "n_processes": len(sampler.lifetime),
        "update": manifest.get("update"),
    }


def run_size(n_docs: int, encoder: str, workers: int | None = None, pin: bool = False) -> dict:
    folder = build_input(n_docs)
    label = f"{n_docs}-{encoder}" + (f"-w{workers}" if workers else "")
    output = WORKDIR / "out" / label
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    figures = run_pipeline(folder, output, _config(folder, encoder, workers), label, pin)
    return {"docs": n_docs, "encoder": encoder, "workers": workers, "pinned": pin, **figures}


def _speedups(rows: list[dict]) -> list[str]:
    """For each size and encoder run with several worker counts: how much faster the most
    workers made each step and each worker phase than one worker."""
    lines = []
    for one in (r for r in rows if r["workers"] == 1):
        runs = [r for r in rows if (r["docs"], r["encoder"]) == (one["docs"], one["encoder"])]
        most = max(runs, key=lambda r: r["workers"])
        if most is one:
            continue
        ratios = [
            f"{name} {one[table][name] / most[table][name]:.2f}x"
            for table, names in (
                ("step_seconds", ("embed", "cluster")),
                ("phase_seconds", ("embed_inference", "cluster_assign")),
            )
            for name in names
        ]
        lines.append(
            f"{one['docs']:,} docs, {one['encoder']}: {most['workers']} workers vs 1: "
            + ", ".join(ratios)
            + f"; whole run {one['wall_seconds'] / most['wall_seconds']:.2f}x"
        )
    return lines


def _table(rows: list[dict]) -> str:
    lines = [
        (
            f"{'docs':>9} {'encoder':<11} {'step':<11} {'seconds':>8} {'s/100k':>7} "
            f"{'flow MiB':>9} {'worker MiB':>10} {'all MiB':>8}"
        )
    ]
    for row in rows:
        scale = row["docs"] / 100_000
        name = row["encoder"] + (f"/w{row['workers']}" if row.get("workers") else "")
        for step in ["startup", *STEPS]:
            peaks = row["step_peak_mib"].get(step, {})
            seconds = row["step_seconds"].get(step)
            shown = f"{seconds:8.1f} {seconds / scale:7.1f}" if seconds is not None else " " * 16
            lines.append(
                f"{row['docs']:>9,} {name:<11} {step:<11} {shown} "
                f"{peaks.get('flow', 0):9.0f} "
                f"{peaks.get('worker', 0):10.0f} {peaks.get('all', 0):8.0f}"
            )
        life = row["lifetime_peak_mib"]
        lines.append(
            f"{row['docs']:>9,} {name:<11} {'whole run':<11} {row['wall_seconds']:8.1f} "
            f"{row['wall_seconds'] / scale:7.1f} {life.get('flow', 0):9.0f} "
            f"{life.get('worker', 0):10.0f} {'(VmHWM)':>8}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="one run of 20,000 documents")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["two_view"],
        choices=["two_view", "autoencoder", "attention", "pretrained"],
        help="encoder.kind of each run (every size runs each)",
    )
    parser.add_argument(
        "--workers",
        nargs="+",
        type=int,
        help="run each size with these many local Dask workers, inference and assignment on "
        "them (runtime.dask_inference on); default: the flow process, 2 workers",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each Dask worker process on a core of its own, as its one thread says: "
        "unpinned, one worker also runs its second threads (the two-view encoder tokenizes "
        "a chunk ahead) on the cores other workers would use",
    )
    args = parser.parse_args()
    sizes = [20_000] if args.quick else args.sizes
    rows = []
    for n_docs in sizes:
        for encoder in args.encoders:
            for workers in args.workers or [None]:
                rows.append(run_size(n_docs, encoder, workers, args.pin))
                print(_table(rows[-1:]), flush=True)
        embed = {r["encoder"]: r["step_seconds"]["embed"] for r in rows if r["docs"] == n_docs}
        if "two_view" in embed and "autoencoder" in embed:
            print(
                f"{n_docs:,} docs: two_view embed step {embed['two_view']:.0f} s = "
                f"{embed['two_view'] / embed['autoencoder']:.2f} of the autoencoder's "
                f"{embed['autoencoder']:.0f} s",
                flush=True,
            )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": rows},
            indent=1,
        )
    )
    if len(rows) > 1:
        print(_table(rows))
    print("\n".join(_speedups(rows)))
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
