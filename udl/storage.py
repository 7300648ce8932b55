"""Atomic writes and Parquet part files (the run's layout is `udl.datasets`).

Every dataset a step writes is a folder of `part-NNNNN.parquet` files that appears under its
final name only once complete (written under a temporary name, then renamed), so a crash
never leaves a half-written dataset that a rerun would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S

__all__ = [
    "BackgroundWriter",
    "PartRows",
    "PartWriter",
    "atomic_dir",
    "contiguous_runs",
    "dataset_parts",
    "link_part",
    "part_path",
    "read_ahead",
    "read_json",
    "sample_rows",
    "write_json_atomic",
    "write_part",
    "write_table_atomic",
]

T = TypeVar("T")
R = TypeVar("R")

PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "row_group_size": 64 * 1024,
    "write_statistics": True,
}
# A part holds at most this much uncompressed data whatever its row count, so a corpus of long
# documents still gives parts a worker processes in bounded memory; row groups are cut at
# ROW_GROUP_BYTES so a reader scanning one column never holds a whole large part.
PART_MAX_BYTES = 256 * 2**20
ROW_GROUP_BYTES = 64 * 2**20


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `final` when the block ends without error.

    A previous `final` is replaced (a rerun of a step overwrites its own output); on error
    the temporary folder is removed and `final` is left as it was. Temporary folders of
    `final` that a killed process left behind are removed first: they were never committed,
    and each crash would otherwise keep a copy of the dataset on disk.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_interrupted(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        for leftover in tmp.glob(".part-*.tmp-*"):
            leftover.unlink()  # a part whose writer was killed; the part itself was rewritten
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


def _remove_interrupted(final: Path) -> None:
    """Delete ``.<name>.tmp-*`` and ``.<name>.old-*`` folders next to `final` (see `atomic_dir`)."""
    prefixes = (f".{final.name}.tmp-", f".{final.name}.old-")
    for path in final.parent.iterdir():
        if path.name.startswith(prefixes) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _leaf_path(field: pa.Field) -> str:
    """The Parquet column path pyarrow matches a per-column codec against (list columns are
    stored as ``<name>.list.element``)."""
    kind = field.type
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    return (
        f"{field.name}.list.element" if listed or pa.types.is_fixed_size_list(kind) else field.name
    )


def _is_vector(kind: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type)


def part_path(folder: Path, index: int) -> Path:
    """Part `index` of the dataset in `folder`."""
    return folder / f"part-{index:05d}.parquet"


def _write_options(table: pa.Table) -> dict[str, Any]:
    """Parquet options for `table`: zstd, plain vectors, dictionaries only where they pay."""
    # Dictionary pages pay off on repetitive strings (source, label, metadata). On ids, texts
    # and number lists Parquet tries them, overflows and falls back, at ~10x the write time.
    dictionary = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type) and f.name not in (S.DOC_ID, S.TEXT, S.RAW)
    ]
    # Float vectors barely compress (zstd saves 8% of an embeddings part) but cost 9x the
    # reading time and 3x the writing time: they are stored plain, everything else zstd.
    compression = {
        _leaf_path(f): "none" if _is_vector(f.type) else PARQUET_OPTIONS["compression"]
        for f in table.schema
    }
    by_bytes = table.num_rows * ROW_GROUP_BYTES // max(table.nbytes, 1)
    return {
        **PARQUET_OPTIONS,
        "row_group_size": max(1, min(by_bytes, PARQUET_OPTIONS["row_group_size"])),
        "use_dictionary": dictionary,
        "compression": compression,
    }


def write_part(table: pa.Table, folder: Path, index: int) -> Path:
    """Write one zstd Parquet part `part-{index:05d}.parquet` into `folder`.

    The same table always gives the same bytes (no timestamps or random ids in the file).
    """
    path = part_path(folder, index)
    # Through a temporary name: a Dask worker lost mid-write leaves no truncated part behind
    # for the task's rerun on another worker to race with.
    tmp = folder / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    options = _write_options(table)
    try:
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def link_part(source: Path, folder: Path, index: int) -> Path:
    """Make the part file `source` part `index` of `folder` without rewriting it: a hard link
    (no udl step writes a part in place, so two runs may share one), or a copy where the file
    system cannot link. Through a temporary name, as `write_part`."""
    path = part_path(folder, index)
    tmp = folder / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write one Parquet file (a fitted model table, a sample) through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        pq.write_table(table, tmp, **_write_options(table))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class BackgroundWriter:
    """`write_part` on background threads: Parquet encoding and zstd release the GIL, so
    writing part k overlaps computing part k + 1. With `threads` > 1, that many parts are
    encoded at once (a step that only moves rows, such as an incremental run's merge, is
    bound by encoding). Each `write` first waits while `threads` writes are pending
    (surfacing the oldest one's error), so at most `threads` tables wait in memory (with
    whatever buffers they are slices of). Leaving
    the `with` block normally waits for every write."""

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="udl-part-writer")
        self._writing: deque[Future[Path]] = deque()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def write(self, table: pa.Table, folder: Path, index: int) -> None:
        while len(self._writing) >= self._threads:
            self._writing.popleft().result()
        self._writing.append(self._pool.submit(write_part, table, folder, index))

    def wait(self) -> None:
        while self._writing:
            self._writing.popleft().result()


def read_ahead(read: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """`read(item)` of each item in order, the next item read on a background thread while
    the caller works on the current one (at most one result waits in memory)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="udl-part-reader") as pool:
        pending = pool.submit(read, items[0])
        for following in items[1:]:
            result = pending.result()
            pending = pool.submit(read, following)
            yield result
        yield pending.result()


class PartWriter:
    """Accumulates tables and writes a part each `rows_per_part` rows or PART_MAX_BYTES.

    Cut points depend only on the data, so a rerun writes the same parts. At least one part
    is written, so an empty dataset still has its schema on disk. Parts are written by a
    `BackgroundWriter`, so writing part k overlaps reading and validating the rows of part
    k + 1; at most two parts are in memory at once. Use as a context manager; `close` writes
    the rest and waits for every write.
    """

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_part: int) -> None:
        self.folder, self.schema, self.rows_per_part = folder, schema, rows_per_part
        self.pending: list[pa.Table] = []
        self.pending_rows = self.pending_bytes = 0
        self.parts = 0
        self._writer = BackgroundWriter()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._writer.__exit__(exc_type, *exc)

    def add(self, table: pa.Table) -> None:
        """Queue `table` (of the writer's schema) and write every part it completes."""
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.pending_bytes += table.nbytes
        while self.pending_rows >= self.rows_per_part or (
            self.pending_bytes >= PART_MAX_BYTES and self.pending_rows > 1
        ):
            merged = pa.concat_tables(self.pending)
            by_bytes = self.pending_rows * PART_MAX_BYTES // max(self.pending_bytes, 1)
            cut = max(1, min(self.rows_per_part, by_bytes))
            self._write(merged.slice(0, cut))
            rest = merged.slice(cut)
            self.pending, self.pending_rows, self.pending_bytes = [rest], rest.num_rows, rest.nbytes

    def close(self) -> int:
        """Write the remaining rows and wait for all writes; returns the number of parts."""
        if self.pending_rows or self.parts == 0:
            self._write(pa.concat_tables([self.schema.empty_table(), *self.pending]))
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        self._writer.wait()
        return self.parts

    def _write(self, table: pa.Table) -> None:
        self._writer.write(table.combine_chunks(), self.folder, self.parts)
        self.parts += 1


def dataset_parts(folder: Path) -> list[Path]:
    """The part files of a dataset folder, in order."""
    return sorted(folder.glob("part-*.parquet"))


def sample_rows(
    parts: list[Path],
    size: int,
    seed: int,
    eligible: list[NDArray[np.bool_]] | None = None,
) -> list[tuple[int, NDArray[np.int64]]]:
    """The seeded sampler of training and fitting samples (the report draws by id hash,
    `udl.report_sample`): a uniform sample of at most `size` rows across a dataset's
    parts, drawn among the rows marked in `eligible` (one mask per part; all rows when None).

    Returns:
        (part position, sorted row numbers within that part) for each part with sampled rows;
        reading only those rows keeps memory bounded by the sample.
    """
    rng = np.random.default_rng(seed)
    if eligible is None:
        # Every row: the same draw as over a mask of all True, in memory of the sample's size.
        sizes = np.array([pq.ParquetFile(p).metadata.num_rows for p in parts], np.int64)
        total = int(sizes.sum())
        chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    else:
        sizes = np.array([len(mask) for mask in eligible], np.int64)
        positions = np.flatnonzero(np.concatenate(eligible)) if eligible else np.zeros(0, np.int64)
        drawn = rng.choice(len(positions), size=min(size, len(positions)), replace=False)
        chosen = positions[np.sort(drawn)]
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


class PartRows:
    """Rows of a dataset by row number over all its parts (corpus order), reading a part when
    first asked for it, the part after it meanwhile on a background thread, and keeping the
    last two: consecutive documents of an incremental run mostly come from the same few parts
    of the previous run, in order. With `keep_all`, every part read stays in memory (rows
    asked for in an order unrelated to the parts'). `columns`: the columns read (all when None)."""

    def __init__(
        self, folder: Path, keep_all: bool = False, columns: list[str] | None = None
    ) -> None:
        self.parts = dataset_parts(folder)
        self.columns = columns
        self.keep = len(self.parts) if keep_all else 2
        counts = [pq.ParquetFile(p).metadata.num_rows for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: dict[int, pa.Table] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="udl-part-reader")
        weakref.finalize(self, self._pool.shutdown, wait=False)
        self._ahead: tuple[int, Future[pa.Table]] | None = None

    def _part(self, index: int) -> pa.Table:
        if index not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            if self._ahead is not None and self._ahead[0] == index:
                self._cache[index] = self._ahead[1].result()
            else:
                self._cache[index] = self._read(index)
            following = index + 1
            if following < len(self.parts) and following not in self._cache:
                self._ahead = (following, self._pool.submit(self._read, following))
        return self._cache[index]

    def _read(self, index: int) -> pa.Table:
        return pq.read_table(self.parts[index], columns=self.columns)

    def slices(self, start: int, length: int) -> list[pa.Table]:
        """Rows ``start .. start + length`` as zero-copy slices of the parts they lie in."""
        pieces = []
        while length > 0:
            index = int(np.searchsorted(self.starts, start, side="right") - 1)
            local = start - int(self.starts[index])
            count = min(length, int(self.starts[index + 1]) - start)
            pieces.append(self._part(index).slice(local, count))
            start, length = start + count, length - count
        return pieces

    def take(self, rows: NDArray[np.int64]) -> pa.Table:
        """The rows, in the order asked: zero-copy slices of runs of consecutive rows, or a
        copy of each row when runs are short."""
        runs = contiguous_runs(rows)
        if len(runs) <= max(1, len(rows) // 16):
            pieces = [p for first, length in runs for p in self.slices(int(rows[first]), length)]
            if pieces:
                return pa.concat_tables(pieces)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        pieces, order = [], []
        for index in np.unique(part_of):
            picked = np.flatnonzero(part_of == index)
            local = rows[picked] - self.starts[index]
            pieces.append(self._part(int(index)).take(pa.array(local)))
            order.append(picked)
        if not pieces:
            return self._part(0).slice(0, 0) if self.parts else pa.table({})
        table = pa.concat_tables(pieces)
        return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def contiguous_runs(rows: NDArray[np.int64]) -> list[tuple[int, int]]:
    """(position, length) of each run of consecutive values (``v, v + 1, ...``) in `rows`."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    firsts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([firsts, [len(rows)]]))
    return list(zip(firsts.tolist(), lengths.tolist(), strict=True))
