"""Benchmark of ingest + preprocess (issue 3): throughput, scaling and peak memory per process.

Builds N documents from the shared corpora (WordNet glosses and fortunes; from the second
pass over the pool on, each text is joined with another so documents are not repeats), as
Parquet files of 250,000 rows under `.bench/preprocess/input/<N>/`, once per size. Then, each in a fresh
Python process so peak memory figures are its own:

* baseline: pandas reads the files, scikit-learn `HashingVectorizer` + `TfidfTransformer`
  (same tokenisation, n_features and sublinear tf) in one process, all in memory;
* udl with 1 and 2 Dask workers (LocalCluster, one thread each): `ingest` then
  `compute_features`, both as tasks on the workers, at N and at N/4 documents.

Peak memory is each process's peak RSS (`getrusage`): the client process (Dask scheduler,
nannies, the cross-file duplicate-id check) and every worker (asked through `Client.run` before shutdown).
Cluster start-up (with module imports in the workers) is timed apart, not in throughput.
Each worker's CPU seconds on the work are recorded too: their balance shows the work split
across processes even when a shared machine's load distorts wall-clock scaling.

    .venv/bin/python tests/bench/bench_preprocess.py              # 1,000,000 documents
    .venv/bin/python tests/bench/bench_preprocess.py --quick      # 40,000: a smoke run

Prints a table and writes `.bench/preprocess.json`. Targets: 2 workers >= 1.6x one worker;
worker peak memory at N within 20% of that at N/4.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
WORKDIR = REPO / ".bench" / "preprocess"
RESULT = REPO / ".bench" / "preprocess.json"
FILE_ROWS = 250_000
N_FEATURES = 2**16


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_input(n_docs: int) -> Path:
    """Write N documents as Parquet files of FILE_ROWS rows (reused when present).

    Document i is the same at every N, so a smaller corpus is a prefix of a larger one.
    """
    folder = WORKDIR / "input" / str(n_docs)
    if (folder / "_done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    glosses = pq.read_table(SHARED / "wordnet_glosses" / "wordnet_glosses.parquet")
    fortunes = pq.read_table(SHARED / "fortunes" / "fortunes.parquet")
    pool = pa.concat_tables([glosses, fortunes])
    texts, labels = pool["text"].to_pylist(), pool["label"].to_pylist()
    size = len(texts)
    for start in range(0, n_docs, FILE_ROWS):
        rows = range(start, min(start + FILE_ROWS, n_docs))
        batch = {
            "doc_id": [f"doc-{i:08d}" for i in rows],
            "text": [
                texts[i % size]
                if i < size
                else f"{texts[i % size]}\n{texts[(i * 7919 + i // size) % size]}"
                for i in rows
            ],
            "label": [labels[i % size] for i in rows],
        }
        pq.write_table(pa.table(batch), folder / f"docs-{start // FILE_ROWS:04d}.parquet")
    (folder / "_done").touch()
    return folder


def run_baseline(folder: Path, n_docs: int) -> dict:
    """Single process: pandas + scikit-learn, the whole corpus in memory."""
    import pandas as pd
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    start = time.perf_counter()
    files = sorted(folder.glob("docs-*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    vectorizer = HashingVectorizer(
        n_features=N_FEATURES, stop_words="english", alternate_sign=False, norm=None
    )
    matrix = TfidfTransformer(sublinear_tf=True).fit_transform(
        vectorizer.transform(frame["text"].tolist())
    )
    seconds = time.perf_counter() - start
    return {"docs": n_docs, "seconds": seconds, "nnz": int(matrix.nnz), "client_mib": _peak_mib()}


def run_udl(folder: Path, n_docs: int, workers: int, memory_limit: str) -> dict:
    """udl on a LocalCluster of `workers`: ingest, then hashed TF-IDF."""
    from udl.config import InputConfig, PreprocessConfig, RuntimeConfig
    from udl.corpus import ingest
    from udl.features import compute_features
    from udl.parallel import dask_client

    out = WORKDIR / f"run-{workers}w-{n_docs}"
    shutil.rmtree(out, ignore_errors=True)
    config = InputConfig(path=str(folder), id_column="doc_id", label_column="label")
    start = time.perf_counter()
    runtime = RuntimeConfig(dask_workers=workers, dask_memory_limit=memory_limit)
    with dask_client(runtime) as client:
        client.wait_for_workers(workers)
        # Importing udl (sklearn, scipy) in a fresh worker takes seconds: start-up, not work.
        client.run(importlib.import_module, "udl.features")
        startup_s = time.perf_counter() - start
        cpu_before = client.run(_cpu_s)
        start = time.perf_counter()
        ingested = ingest(config, out / "corpus", out / "rejects")
        ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        result = compute_features(
            out / "corpus",
            out / "features",
            out / "models",
            PreprocessConfig(n_features=N_FEATURES),
        )
        preprocess_s = time.perf_counter() - start
        cpu_after, peaks = client.run(_cpu_s), client.run(_peak_mib)
        worker_mib = [peaks[w] for w in sorted(peaks)]
        worker_cpu_s = [cpu_after[w] - cpu_before[w] for w in sorted(peaks)]
    shutil.rmtree(out)
    return {
        "docs": ingested.rows_read,
        "ingested": ingested.rows_ingested,
        "parts": result.n_parts,
        "workers": workers,
        "ingest_s": ingest_s,
        "startup_s": startup_s,
        "preprocess_s": preprocess_s,
        "seconds": ingest_s + preprocess_s,
        "client_mib": _peak_mib(),
        "worker_mib": worker_mib,
        "worker_cpu_s": worker_cpu_s,
    }


def _child(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON result."""
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    header = (
        f"{'run':<16}{'docs':>10}{'ingest s':>10}{'prep s':>9}{'total s':>9}{'docs/s':>10}"
        f"{'vs base':>9}{'client MiB':>12}{'worker MiB':>16}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        workers = "/".join(f"{m:.0f}" for m in row.get("worker_mib", [])) or "-"
        lines.append(
            f"{row['name']:<16}{row['docs']:>10,}{row.get('ingest_s', float('nan')):>10.1f}"
            f"{row.get('preprocess_s', float('nan')):>9.1f}{row['seconds']:>9.1f}"
            f"{row['docs_per_s']:>10,.0f}{row['vs_baseline']:>9.2f}"
            f"{row['client_mib']:>12.0f}{workers:>16}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="largest corpus size")
    parser.add_argument("--quick", action="store_true", help="40,000 documents, a smoke run")
    parser.add_argument("--memory-limit", default="2GiB", help="per Dask worker")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, n_docs, *rest = args.child
        if kind == "baseline":
            result = run_baseline(Path(folder), int(n_docs))
        else:
            result = run_udl(Path(folder), int(n_docs), int(rest[0]), args.memory_limit)
        print(json.dumps(result))
        return

    n_docs = 40_000 if args.quick else args.docs
    small = n_docs // 4
    load_before = os.getloadavg()
    folders = {size: build_input(size) for size in (n_docs, small)}
    runs = [("baseline", ["--child", "baseline", str(folders[n_docs]), str(n_docs)])]
    for size in (n_docs, small):
        for workers in (1, 2):
            child = ["udl", str(folders[size]), str(size), str(workers)]
            runs.append(
                (f"udl {workers}w", ["--memory-limit", args.memory_limit, "--child", *child])
            )
    rows = []
    for name, child_args in runs:
        result = _child(child_args)
        rows.append({"name": name, **result})
        print(f"done: {name} {result['docs']:,} docs in {result['seconds']:.1f} s", flush=True)
    base = rows[0]["docs"] / rows[0]["seconds"]
    for row in rows:
        row["docs_per_s"] = row["docs"] / row["seconds"]
        row["vs_baseline"] = row["docs_per_s"] / base
    big = {r["workers"]: r for r in rows[1:] if r["docs"] == n_docs}
    little = {r["workers"]: r for r in rows[1:] if r["docs"] == small}
    summary = {
        "speedup_2w_vs_1w_total": big[1]["seconds"] / big[2]["seconds"],
        "speedup_2w_vs_1w_preprocess": big[1]["preprocess_s"] / big[2]["preprocess_s"],
        # CPU seconds the workers spent on ingest + preprocess, total / busiest: the speedup
        # that two free cores would give; unlike wall time, it does not depend on machine load.
        "cpu_balance_2w": sum(big[2]["worker_cpu_s"]) / max(big[2]["worker_cpu_s"]),
        "worker_cpu_s_1w": sum(big[1]["worker_cpu_s"]),
        "worker_cpu_s_2w": sum(big[2]["worker_cpu_s"]),
        "worker_peak_growth_2w": max(big[2]["worker_mib"]) / max(little[2]["worker_mib"]),
        "worker_peak_growth_1w": max(big[1]["worker_mib"]) / max(little[1]["worker_mib"]),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print()
    print(_table(rows))
    print()
    for key, value in summary.items():
        shown = f"{value:.2f}" if isinstance(value, float) else value
        print(f"{key:<32}{shown}")
    print("targets: speedup >= 1.60; worker peak growth <= 1.20")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
