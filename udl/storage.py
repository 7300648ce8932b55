"""Run folders, atomic writes and Parquet part files.

Every dataset a step writes is a folder of `part-NNNNN.parquet` files that appears under its
final name only once complete (written under a temporary name, then renamed), so a crash
never leaves a half-written dataset that a rerun would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

__all__ = [
    "RunLayout",
    "atomic_dir",
    "dataset_parts",
    "mark_latest",
    "read_json",
    "sample_rows",
    "write_json_atomic",
    "write_part",
]

PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "row_group_size": 64 * 1024,
    "write_statistics": True,
}


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run: ``<output_dir>/runs/<run_id>/...`` (the output contract)."""

    output_dir: Path
    run_id: str

    @property
    def run_dir(self) -> Path:
        return self.output_dir / "runs" / self.run_id

    @property
    def corpus(self) -> Path:
        return self.run_dir / "corpus"

    @property
    def rejects(self) -> Path:
        return self.run_dir / "rejects"

    @property
    def features(self) -> Path:
        return self.run_dir / "features"

    @property
    def embeddings(self) -> Path:
        return self.run_dir / "embeddings"

    @property
    def assignments(self) -> Path:
        return self.run_dir / "assignments"

    @property
    def models(self) -> Path:
        """Fitted state: TF-IDF vocabulary, encoder checkpoint, centroids."""
        return self.run_dir / "models"

    @property
    def steps(self) -> Path:
        """One small JSON record per completed step (rows, timings, chosen values)."""
        return self.run_dir / "steps"

    @property
    def report(self) -> Path:
        return self.run_dir / "report"

    @property
    def cache(self) -> Path:
        """Prefect's persisted step results (the cache records), named by step key."""
        return self.run_dir / "cache"

    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.json"

    @property
    def latest(self) -> Path:
        return self.output_dir / "latest"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `final` when the block ends without error.

    A previous `final` is replaced (a rerun of a step overwrites its own output); on error
    the temporary folder is removed and `final` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_part(table: pa.Table, folder: Path, index: int) -> Path:
    """Write one zstd Parquet part `part-{index:05d}.parquet` into `folder`."""
    path = folder / f"part-{index:05d}.parquet"
    pq.write_table(table, path, **PARQUET_OPTIONS)
    return path


def dataset_parts(folder: Path) -> list[Path]:
    """The part files of a dataset folder, in order."""
    return sorted(folder.glob("part-*.parquet"))


def sample_rows(parts: list[Path], size: int, seed: int) -> list[tuple[int, NDArray[np.int64]]]:
    """A seeded uniform sample of at most `size` rows across a dataset's parts.

    Returns:
        (part position, sorted row numbers within that part) for each part with sampled rows;
        reading only those rows keeps memory bounded by the sample.
    """
    sizes = np.array([pq.ParquetFile(p).metadata.num_rows for p in parts], dtype=np.int64)
    total = int(sizes.sum())
    chosen = np.sort(
        np.random.default_rng(seed).choice(total, size=min(size, total), replace=False)
    )
    starts = np.concatenate([[0], np.cumsum(sizes)])
    picks = []
    for i in range(len(parts)):
        rows = chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i]
        if len(rows):
            picks.append((i, rows))
    return picks


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Read a JSON file written by `write_json_atomic`."""
    return json.loads(path.read_text())


def mark_latest(layout: RunLayout) -> None:
    """Point ``<output_dir>/latest`` at this run (a relative symlink, swapped atomically)."""
    tmp = layout.output_dir / f".latest.tmp-{uuid.uuid4().hex[:12]}"
    os.symlink(Path("runs") / layout.run_id, tmp, target_is_directory=True)
    os.replace(tmp, layout.latest)
