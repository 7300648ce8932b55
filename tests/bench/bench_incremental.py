"""Incremental nightly runs (issue 19): a full run of SIZE documents, then the next night's
corpus (1% new documents, 0.5% changed: same id, another text) under `update.policy` refresh
(re-cluster everything) and frozen (keep the clusters), each measured as bench_scale measures
a run: `udl run` in a child process, seconds per step from the manifest, peak memory of the
process tree. Both incremental runs follow the full run (``latest`` is pointed back at it in
between, as if the refresh night had not happened).

    .venv/bin/python tests/bench/bench_incremental.py                 # 1M
    .venv/bin/python tests/bench/bench_incremental.py --size 100000
    .venv/bin/python tests/bench/bench_incremental.py --changed 0     # a night that only appends

Prints each run's wall time, step seconds and peak, and the incremental/full ratios; writes
`.bench/incremental.json` (`.bench/incremental-changed<share>.json` with another --changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_assign import _new_documents
from bench_preprocess import build_input
from bench_scale import STEPS, WORKDIR, _config, run_pipeline

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / ".bench" / "incremental.json"
NEW_SHARE, CHANGED_SHARE = 0.01, 0.005


def _next_night(size: int, folder: Path, changed_share: float, seed: int = 11) -> Path:
    """The corpus of `folder` with `changed_share` of texts replaced (anywhere) and NEW_SHARE
    appended as a file of their own."""
    night = WORKDIR / "input" / f"{size}-night2-changed{changed_share:g}"
    shutil.rmtree(night, ignore_errors=True)
    night.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_changed, n_new = int(size * changed_share), int(size * NEW_SHARE)
    changed = set(rng.choice(size, n_changed, replace=False).tolist())
    fresh = pq.read_table(_new_documents(n_changed + n_new, night))["text"].to_pylist()
    offset = 0
    for index, path in enumerate(sorted(folder.glob("docs-*.parquet"))):
        table = pq.read_table(path)
        texts = table["text"].to_pylist()
        for row in range(table.num_rows):
            if offset + row in changed:
                texts[row] = fresh.pop()
        offset += table.num_rows
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
        pq.write_table(table, night / f"docs-{index:04d}.parquet")
    ids = [f"night2-{i:08d}" for i in range(n_new)]
    labels = ["new"] * n_new
    pq.write_table(
        pa.table({"doc_id": ids, "text": fresh[:n_new], "label": labels}),
        night / "docs-9999.parquet",
    )
    (night / f"new-{n_changed + n_new}.parquet").unlink()
    return night


def _line(name: str, run: dict) -> str:
    steps = ", ".join(f"{s} {run['step_seconds'][s]:.1f}" for s in STEPS)
    peak = max(p.get("all", 0.0) for p in run["step_peak_mib"].values())
    return f"{name:>8}: {run['wall_seconds']:6.1f} s wall, steps {steps} s; peak {peak:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument(
        "--changed", type=float, default=CHANGED_SHARE, help="share of texts changed in place"
    )
    args = parser.parse_args()
    folder = build_input(args.size)
    night = _next_night(args.size, folder, args.changed)
    output = WORKDIR / "out" / f"{args.size}-incremental"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    base = _config(folder, "two_view")
    runs = {"full": run_pipeline(folder, output, base, f"{args.size}-full")}
    for policy in ("refresh", "frozen"):
        os.replace(output / "latest", output / "latest.old")  # replaced below
        os.symlink(Path("runs") / runs["full"]["run_id"], output / "latest")
        (output / "latest.old").unlink()
        config = {**base, "input": {**base["input"], "path": str(night)}}
        config["update"] = {"policy": policy}
        runs[policy] = run_pipeline(night, output, config, f"{args.size}-{policy}")
        steps = output / "runs" / runs[policy]["run_id"] / "steps"
        runs[policy]["parts_linked"] = {
            step: json.loads((steps / f"{step}.json").read_text()).get("parts_linked")
            for step in ("preprocess", "embed")
        }
    full = runs["full"]
    print(f"{args.size:,} documents; next night {NEW_SHARE:.1%} new, {args.changed:.1%} changed")
    for name, run in runs.items():
        print(_line(name, run))
        if name != "full":
            update = run["update"]
            ratio = run["wall_seconds"] / full["wall_seconds"]
            steps = sum(run["step_seconds"].values()) / sum(full["step_seconds"].values())
            embed = run["step_seconds"]["embed"] / full["step_seconds"]["embed"]
            linked = run["parts_linked"]
            print(
                f"{'':>10}{update['changes']} clusters {update['clusters']}; parts linked "
                f"{linked}; "
                f"wall {ratio:.3f}x full, steps {steps:.3f}x, embed step {embed:.3f}x"
            )
    result = RESULT
    if args.changed != CHANGED_SHARE:
        result = RESULT.with_name(f"incremental-changed{args.changed:g}.json")
    result.parent.mkdir(exist_ok=True)
    result.write_text(
        json.dumps({"size": args.size, "changed": args.changed, "runs": runs}, indent=2)
    )
    print(f"wrote {result.relative_to(REPO)}")


if __name__ == "__main__":
    main()
