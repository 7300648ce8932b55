"""Incremental runs: which documents are new, changed or deleted since the run this one
follows, and this run's features and embeddings made of that run's rows for every text it
already processed plus freshly computed rows for the others.

A document's features and embedding depend only on its text once the IDF and the encoder are
fixed (`refresh` and `frozen` reuse the previous run's, see `udl.config.UpdateConfig`), so rows
are reused by *content*: a document whose text the previous run held (under any id, which
covers ids derived from row numbers that shift when rows are inserted) gets that run's rows,
byte for byte. The inference kernels are batch-invariant (`udl.encoders.base.in_row_blocks`),
so a vector computed alone equals the one a full recompute would give.

Content hashes are two independent 64-bit SipHashes of the ingested text (after
``input.max_chars``): a text is reused only when both agree (a false match needs a 128-bit
collision). Each run saves its hashes (``content.npy``) for the run after it.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.config import EncoderConfig, PreprocessConfig
from udl.datasets import ENCODER_DIR, TFIDF_FILE, VOCABULARY_FILE, RunLayout
from udl.embed import EmbedResult, embed_with_checkpoint
from udl.features import transform_features
from udl.storage import PartRows, atomic_dir, dataset_parts, write_part

__all__ = [
    "Changes",
    "content_hashes",
    "copy_models",
    "find_changes",
    "merge_rows",
    "read_changes",
    "reuse_embeddings",
    "reuse_features",
    "write_delta_corpus",
]

log = logging.getLogger(__name__)

# Two fixed SipHash keys (16 characters each): the same hashes in every process and release.
_HASH_KEYS = ("udl-content-0001", "udl-content-0002")
CONTENT_FILE = "content.npy"  # (n, 2) uint64 hashes of the run's corpus, in corpus order
SOURCES_FILE = "sources.npy"  # per corpus row: the previous run's row it reuses, or -1


def content_hashes(texts: pa.Array | pa.ChunkedArray) -> NDArray[np.uint64]:
    """(n, 2) uint64: two independent 64-bit hashes of each text."""
    values = texts.to_numpy(zero_copy_only=False)
    return np.stack(
        [pd.util.hash_array(values, hash_key=key, categorize=False) for key in _HASH_KEYS], axis=1
    )


def _corpus_ids_and_hashes(layout: RunLayout) -> tuple[NDArray[np.object_], NDArray[np.uint64]]:
    """Doc ids and content hashes of a run's corpus (hashes from ``content.npy`` when saved)."""
    ids, hashes = [], []
    saved = layout.run_dir / CONTENT_FILE
    for part in dataset_parts(layout.corpus):
        columns = [S.DOC_ID] if saved.is_file() else [S.DOC_ID, S.TEXT]
        table = pq.read_table(part, columns=columns)
        ids.append(table.column(S.DOC_ID).to_numpy(zero_copy_only=False))
        if not saved.is_file():
            hashes.append(content_hashes(table.column(S.TEXT)))
    doc_ids = np.concatenate(ids) if ids else np.empty(0, object)
    if saved.is_file():
        content = np.load(saved, allow_pickle=False)
    else:
        content = np.concatenate(hashes) if hashes else np.empty((0, 2), np.uint64)
    return doc_ids, content


def _save_array(array: NDArray[Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Changes:
    """How this run's corpus differs from the previous run's, and what it reuses.

    Attributes:
        sources: per document of this run (corpus order), the previous run's row (corpus
            order) holding the same text, or -1 where features and embedding are computed.
        n_new: ids the previous run did not have.
        n_changed: ids the previous run had with another text.
        n_deleted: ids of the previous run that are gone.
        n_unchanged: ids with the same text.
    """

    sources: NDArray[np.int64]
    n_new: int
    n_changed: int
    n_deleted: int
    n_unchanged: int

    @property
    def n_computed(self) -> int:
        """Documents whose features and embedding are computed (no earlier row has the text)."""
        return int(np.sum(self.sources < 0))

    def record(self) -> dict[str, int]:
        return {
            "new": self.n_new,
            "changed": self.n_changed,
            "deleted": self.n_deleted,
            "unchanged": self.n_unchanged,
            "computed": self.n_computed,
            "reused": len(self.sources) - self.n_computed,
        }


def find_changes(layout: RunLayout, previous: RunLayout) -> Changes:
    """Compare `layout`'s corpus with `previous`'s; save this run's content hashes and the
    reuse plan (``delta/sources.npy``, read back by `read_changes`)."""
    ids, hashes = _corpus_ids_and_hashes(layout)
    old_ids, old_hashes = _corpus_ids_and_hashes(previous)
    _save_array(hashes, layout.run_dir / CONTENT_FILE)

    # Reuse by text: the first earlier row with both hashes equal.
    by_hash = pd.Series(np.arange(len(old_hashes)), index=old_hashes[:, 0])
    by_hash = by_hash[~by_hash.index.duplicated(keep="first")]
    found = by_hash.reindex(hashes[:, 0]).to_numpy()
    hit = ~np.isnan(found)
    sources = np.full(len(hashes), -1, np.int64)
    candidates = found[hit].astype(np.int64)
    agree = old_hashes[candidates, 1] == hashes[hit, 1]
    sources[np.flatnonzero(hit)[agree]] = candidates[agree]

    # New, changed, deleted: by id.
    at = pd.Index(old_ids).get_indexer(ids)
    known = at >= 0
    same = np.zeros(len(ids), np.bool_)
    same[known] = np.all(old_hashes[at[known]] == hashes[known], axis=1)
    changes = Changes(
        sources=sources,
        n_new=int(np.sum(~known)),
        n_changed=int(np.sum(known & ~same)),
        n_deleted=len(old_ids) - int(np.sum(known)),
        n_unchanged=int(np.sum(same)),
    )
    delta = layout.run_dir / "delta"
    delta.mkdir(parents=True, exist_ok=True)
    _save_array(sources, delta / SOURCES_FILE)
    log.info("changes since run %s: %s", previous.run_id, changes.record())
    return changes


def read_changes(layout: RunLayout) -> NDArray[np.int64]:
    """The reuse plan `find_changes` saved (per document, the previous run's row or -1)."""
    return np.load(layout.run_dir / "delta" / SOURCES_FILE, allow_pickle=False)


def write_delta_corpus(corpus_dir: Path, sources: NDArray[np.int64], out_dir: Path) -> int:
    """The corpus rows to compute (``sources < 0``), in corpus order, as a dataset of their
    own (no part when there is none); returns their count."""
    offset = written = 0
    with atomic_dir(out_dir) as out:
        for part in dataset_parts(corpus_dir):
            table = pq.read_table(part)
            todo = np.flatnonzero(sources[offset : offset + table.num_rows] < 0)
            offset += table.num_rows
            if len(todo):
                write_part(table.take(pa.array(todo)), out, written)
                written += 1
    return int(np.sum(sources < 0))


def merge_rows(
    target_parts: list[int],
    sources: NDArray[np.int64],
    previous: PartRows,
    computed: pa.Table,
    out_dir: Path,
    schema: pa.Schema,
) -> None:
    """Write a dataset part-aligned with a corpus of `target_parts` rows per part: each row
    from `previous` (``sources >= 0``) or, in order, from `computed` (``sources < 0``).

    Raises:
        ValueError: `computed` does not hold exactly the rows to compute.
    """
    if computed.num_rows != int(np.sum(sources < 0)):
        raise ValueError(
            f"{computed.num_rows} computed rows for {int(np.sum(sources < 0))} documents"
        )
    offset = done = 0
    with atomic_dir(out_dir) as out:
        for index, n_rows in enumerate(target_parts):
            part_sources = sources[offset : offset + n_rows]
            offset += n_rows
            reuse = np.flatnonzero(part_sources >= 0)
            fresh = np.flatnonzero(part_sources < 0)
            old = previous.take(part_sources[reuse]).select(schema.names).cast(schema)
            new = computed.slice(done, len(fresh)).select(schema.names).cast(schema)
            done += len(fresh)
            position = np.empty(n_rows, np.int64)
            position[reuse] = np.arange(len(reuse))
            position[fresh] = len(reuse) + np.arange(len(fresh))
            merged = pa.concat_tables([old, new]).take(pa.array(position))
            write_part(merged.combine_chunks().replace_schema_metadata(schema.metadata), out, index)


def _part_rows(folder: Path) -> list[int]:
    return [pq.ParquetFile(p).metadata.num_rows for p in dataset_parts(folder)]


def _computed(folder: Path, schema: pa.Schema) -> pa.Table:
    """The dataset a delta step wrote, or no row when there was nothing to compute."""
    if not folder.is_dir() or not dataset_parts(folder):
        return schema.empty_table()
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder))


def reuse_features(
    layout: RunLayout, previous: RunLayout, config: PreprocessConfig
) -> tuple[Changes, int]:
    """``features/`` of `layout`: `previous`'s rows for every text it had, TF-IDF with its
    IDF (copied into `layout`'s models) for the others. Runs on the active Dask scheduler.

    Returns:
        The changes, and how many computed documents have no feature.
    """
    changes = find_changes(layout, previous)
    delta = layout.run_dir / "delta"
    computed = write_delta_corpus(layout.corpus, changes.sources, delta / "corpus")
    empty = 0
    if computed:
        empty = transform_features(
            delta / "corpus", delta / "features", previous.models, config
        ).n_empty_docs
    schema = pq.read_schema(dataset_parts(previous.features)[0])
    merge_rows(
        _part_rows(layout.corpus),
        changes.sources,
        PartRows(previous.features),
        _computed(delta / "features", schema),
        layout.features,
        schema,
    )
    copy_models(previous.models, layout.models, (TFIDF_FILE, VOCABULARY_FILE))
    return changes, empty


def reuse_embeddings(
    layout: RunLayout, previous: RunLayout, config: EncoderConfig
) -> tuple[EmbedResult | None, pa.Table]:
    """``embeddings/`` of `layout`: `previous`'s rows for every text it had, its encoder
    (copied into `layout`'s models) applied to the others. Call after `reuse_features`.

    Returns:
        What embedding the computed documents did (None when there were none), and their
        rows (for the drift check).
    """
    sources = read_changes(layout)
    delta = layout.run_dir / "delta"
    result = None
    if np.any(sources < 0):
        result = embed_with_checkpoint(
            delta / "corpus", delta / "features", delta / "embeddings", previous.encoder, config
        )
    schema = pq.read_schema(dataset_parts(previous.embeddings)[0])
    computed = _computed(delta / "embeddings", schema)
    merge_rows(
        _part_rows(layout.corpus),
        sources,
        PartRows(previous.embeddings),
        computed,
        layout.embeddings,
        schema,
    )
    copy_models(previous.models, layout.models, (ENCODER_DIR,))
    return result, computed


def copy_models(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy fitted models (files or folders) from one run's ``models/`` to another's."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = source / name, target / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
