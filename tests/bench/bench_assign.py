"""`udl assign` speed (issue 19): new documents joining the clusters of a large run.

Uses bench_scale's run of SIZE documents with the default encoder (`.bench/scale/out/
SIZE-two_view`, run first when missing: about 3 minutes at 1M), writes DOCS new documents
(pairs of texts of the shared corpora joined differently from any document of the run) and
runs `udl assign` on them as a user does: a child process with its own temporary Prefect
server. Prints the wall time, each step's seconds from the new run's manifest, the largest
child process's peak memory, and the whole run's seconds for scale; writes
`.bench/assign.json`.

    .venv/bin/python tests/bench/bench_assign.py                       # 10,000 into 1M
    .venv/bin/python tests/bench/bench_assign.py --docs 50000 --size 200000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import SHARED
from bench_scale import WORKDIR, run_size

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / ".bench" / "assign.json"
STEPS = ["ingest", "preprocess", "embed", "cluster"]


def _source_run(size: int) -> Path:
    """The output folder of the SIZE-document two-view run, made if missing."""
    output = WORKDIR / "out" / f"{size}-two_view"
    if not list(output.glob("runs/*/steps/report.json")):
        run_size(size, "two_view")
    return output


def _new_documents(n_docs: int, folder: Path, seed: int = 7) -> Path:
    """N documents none of the run has: two random texts of the pool joined by a newline."""
    pool = pa.concat_tables(
        [
            pq.read_table(SHARED / "wordnet_glosses" / "wordnet_glosses.parquet", columns=["text"]),
            pq.read_table(SHARED / "fortunes" / "fortunes.parquet", columns=["text"]),
        ]
    )["text"].to_pylist()
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(pool), (2, n_docs))
    texts = [f"{pool[a]}\n{pool[b]}" for a, b in zip(first, second, strict=True)]
    path = folder / f"new-{n_docs}.parquet"
    ids = [f"new-{i:08d}" for i in range(n_docs)]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=10_000, help="new documents")
    parser.add_argument("--size", type=int, default=1_000_000, help="documents of the run")
    args = parser.parse_args()
    output = _source_run(args.size)
    source = next(output.glob("runs/*/steps/report.json")).parent.parent
    new = _new_documents(args.docs, output.parent)
    run_id = f"assign-{args.docs}"
    command = [str(Path(sys.executable).parent / "udl"), "assign", str(new)]
    command += ["--output", str(output), "--from", source.name, "--run-id", run_id]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    shutil.rmtree(output / "runs" / run_id, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"udl assign failed ({done.returncode}):\n{done.stderr[-3000:]}")
    manifest = json.loads((output / "runs" / run_id / "manifest.json").read_text())
    run_manifest = json.loads((source / "manifest.json").read_text())
    result = {
        "new_docs": args.docs,
        "run_docs": args.size,
        "source_run": source.name,
        "wall_seconds": wall,
        "step_seconds": {s: manifest["steps"][s]["seconds"] for s in STEPS},
        "rows": manifest["rows"],
        "peak_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "run_step_seconds": sum(s["seconds"] for s in run_manifest["steps"].values()),
        "summary": done.stdout.strip().splitlines()[-1],
    }
    steps = ", ".join(f"{s} {t:.1f} s" for s, t in result["step_seconds"].items())
    print(
        f"udl assign of {args.docs:,} documents into a {args.size:,}-document run: "
        f"{wall:.1f} s wall ({steps}); peak {result['peak_child_mib']:,.0f} MiB; "
        f"the run's own steps took {result['run_step_seconds']:.0f} s"
    )
    print(result["summary"])
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
