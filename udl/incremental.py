"""Incremental runs: this run's features and embeddings made of the previous run's rows for
every text it already processed plus freshly computed rows for the others.

A document's features and embedding depend only on its text once the IDF and the encoder are
fixed (`refresh` and `frozen` reuse the previous run's, see `udl.config.UpdateConfig`), so rows
are reused by *content*: a document whose text the previous run held (under any id, which
covers ids derived from row numbers that shift when rows are inserted) gets that run's rows,
byte for byte. The inference kernels are batch-invariant (`udl.encoders.base.in_row_blocks`),
so a vector computed alone equals the one a full recompute would give.

Which texts are known comes from `udl.changes`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.changes import Changes, delta_path, find_changes, read_changes
from udl.datasets import ENCODER_DIR, TFIDF_FILE, VOCABULARY_FILE, RunLayout
from udl.storage import (
    BackgroundWriter,
    PartRows,
    atomic_dir,
    contiguous_runs,
    dataset_parts,
    link_part,
    write_part,
)

__all__ = [
    "copy_models",
    "merge_embeddings",
    "merge_features",
    "merge_rows",
    "plan_delta",
    "write_delta_corpus",
]

# Parts encoded at once by a merge, one per usable core up to 4. Each part waiting to be written
# keeps alive the previous parts its rows are slices of (one or two each).
MERGE_WRITERS = min(
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4
)


def write_delta_corpus(corpus_dir: Path, sources: NDArray[np.int64], out_dir: Path) -> None:
    """The corpus rows to compute (``sources < 0``), in corpus order, as a dataset of their
    own (no part when there is none)."""
    offset = written = 0
    with atomic_dir(out_dir) as out:
        for part in dataset_parts(corpus_dir):
            table = pq.read_table(part)
            todo = np.flatnonzero(sources[offset : offset + table.num_rows] < 0)
            offset += table.num_rows
            if len(todo):
                write_part(table.take(pa.array(todo)), out, written)
                written += 1


def merge_rows(
    corpus_dir: Path,
    sources: NDArray[np.int64],
    previous: Path,
    computed: pa.Table,
    out_dir: Path,
    schema: pa.Schema,
) -> int:
    """Write a dataset part-aligned with `corpus_dir`: each row from the `previous` dataset
    (``sources >= 0``) or, in order, from `computed` (``sources < 0``), under the corpus's
    doc id (a reused text may have had another id, or have been a duplicate's).

    A part made of one whole previous part, in order and under the same ids and schema (a
    corpus that grew by new files) would be written again with the same rows: the previous
    file is linked instead (`udl.storage.link_part`), so a night that only appends costs what
    it appends.

    Returns:
        The number of parts linked.

    Raises:
        ValueError: `computed` does not hold exactly the rows to compute.
    """
    if computed.num_rows != int(np.sum(sources < 0)):
        raise ValueError(
            f"{computed.num_rows} computed rows for {int(np.sum(sources < 0))} documents"
        )
    # Rows in the previous run's order read part by part; in another order, all at once.
    reused = sources[sources >= 0]
    rows = PartRows(previous, keep_all=len(contiguous_runs(reused)) > len(reused) // 16 + 1)
    # Rows are numbered as one sequence: the previous rows, a gap, then the computed ones, so
    # that each run of consecutive numbers is one zero-copy slice of either.
    first_computed = int(rows.starts[-1]) + 1
    fresh = sources < 0
    numbers = np.where(fresh, first_computed + np.cumsum(fresh) - 1, sources)
    offset = linked = 0
    id_field = schema.field(S.DOC_ID)
    # The merge only moves rows, so encoding Parquet bounds it: parts are encoded on
    # MERGE_WRITERS threads (Parquet releases the GIL) while the next part is read.
    with atomic_dir(out_dir) as out, BackgroundWriter(MERGE_WRITERS) as writer:
        for index, corpus_part in enumerate(dataset_parts(corpus_dir)):
            doc_ids = pq.read_table(corpus_part, columns=[S.DOC_ID]).column(S.DOC_ID)
            part = numbers[offset : offset + len(doc_ids)]
            offset += len(doc_ids)
            same = _same_part(part, rows, doc_ids, schema)
            if same is not None:
                link_part(same, out, index)
                linked += 1
                continue
            pieces = []
            for first, length in contiguous_runs(part):
                start = int(part[first])
                if start >= first_computed:
                    pieces.append(computed.slice(start - first_computed, length))
                else:
                    pieces.extend(rows.slices(start, length))
            merged = pa.concat_tables(
                [p.select(schema.names).cast(schema) for p in pieces] or [schema.empty_table()]
            )
            merged = merged.set_column(merged.schema.get_field_index(S.DOC_ID), id_field, doc_ids)
            writer.write(merged.replace_schema_metadata(schema.metadata), out, index)
    return linked


def _same_part(
    numbers: NDArray[np.int64], rows: PartRows, doc_ids: pa.ChunkedArray, schema: pa.Schema
) -> Path | None:
    """The previous part that holds exactly the rows `numbers`, in order, under `doc_ids` and
    with `schema`, if there is one: the part a merge would write again."""
    if not len(numbers) or np.any(np.diff(numbers) != 1):
        return None
    index = int(np.searchsorted(rows.starts, numbers[0], side="right")) - 1
    if index >= len(rows.parts) or rows.starts[index] != numbers[0]:
        return None
    if rows.starts[index + 1] != numbers[-1] + 1:
        return None
    path = rows.parts[index]
    if not pq.read_schema(path).equals(schema, check_metadata=True):
        return None
    return (
        path if pq.read_table(path, columns=[S.DOC_ID]).column(S.DOC_ID).equals(doc_ids) else None
    )


def _computed(folder: Path, schema: pa.Schema, count: int) -> pa.Table:
    """The `count` rows a delta step wrote (none read when nothing was computed this time:
    the folder may hold an earlier attempt's)."""
    if not count:
        return schema.empty_table()
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder))


def plan_delta(layout: RunLayout, previous: RunLayout, by_id: bool) -> Changes:
    """Compare `layout`'s corpus with `previous`'s (`udl.changes.find_changes`, `by_id`) and write the
    documents to compute to ``delta/corpus``; the caller then computes their features (with
    `previous`'s IDF) into ``delta/features``, and `merge_features` completes the step."""
    changes = find_changes(layout, previous, by_id)
    write_delta_corpus(layout.corpus, changes.sources, delta_path(layout, "corpus"))
    return changes


def merge_features(layout: RunLayout, previous: RunLayout) -> int:
    """``features/`` of `layout`: `previous`'s rows for every text it had, ``delta/features``
    for the others; `previous`'s IDF and vocabulary copied into `layout`'s models. Returns
    the number of parts linked from `previous` (see `merge_rows`)."""
    sources = read_changes(layout)
    schema = pq.read_schema(dataset_parts(previous.features)[0])
    computed = _computed(delta_path(layout, "features"), schema, int(np.sum(sources < 0)))
    linked = merge_rows(
        layout.corpus, sources, previous.features, computed, layout.features, schema
    )
    copy_models(previous.models, layout.models, (TFIDF_FILE, VOCABULARY_FILE))
    return linked


def merge_embeddings(layout: RunLayout, previous: RunLayout) -> tuple[pa.Table, int]:
    """``embeddings/`` of `layout`: `previous`'s rows for every text it had,
    ``delta/embeddings`` (its encoder applied by the caller) for the others; the encoder
    copied into `layout`'s models. Returns the computed rows (for the drift check) and the
    number of parts linked from `previous` (see `merge_rows`)."""
    sources = read_changes(layout)
    schema = pq.read_schema(dataset_parts(previous.embeddings)[0])
    computed = _computed(delta_path(layout, "embeddings"), schema, int(np.sum(sources < 0)))
    linked = merge_rows(
        layout.corpus, sources, previous.embeddings, computed, layout.embeddings, schema
    )
    copy_models(previous.models, layout.models, (ENCODER_DIR,))
    return computed, linked


def copy_models(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy fitted models (files or folders) from one run's ``models/`` to another's."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = source / name, target / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
