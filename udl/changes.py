"""What changed between a run's corpus and the corpus of the run it follows: documents new,
changed (same id, another text), deleted or unchanged, which earlier row holds each text, and
afterwards which documents changed cluster and why.

Content hashes are two independent 64-bit SipHashes of the ingested text (after
``input.max_chars``): a text counts as known only when both agree (a false match needs a
128-bit collision). Each run saves its hashes (``content.npz``) for the run after it.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.bag as db
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.datasets import RunLayout
from udl.parallel import compute
from udl.storage import dataset_parts, read_json

__all__ = [
    "DELTA_DIR",
    "Changes",
    "content_hashes",
    "delta_path",
    "document_moves",
    "find_changes",
    "has_changes",
    "read_changes",
    "record_hashes",
]

log = logging.getLogger(__name__)

DELTA_DIR = "delta"  # inside the run folder: the reuse plan and the datasets of computed rows

# Two fixed SipHash keys (16 characters each): the same hashes in every process and release.
_HASH_KEYS = ("udl-content-0001", "udl-content-0002")
CONTENT_FILE = "content.npz"  # hashes (n, 2) uint64 of the corpus in order, and the ingest key
SOURCES_FILE = "sources.npy"  # per corpus row: the previous run's row it reuses, or -1


def content_hashes(texts: pa.Array | pa.ChunkedArray) -> NDArray[np.uint64]:
    """(n, 2) uint64: two independent 64-bit hashes of each text."""
    values = texts.to_numpy(zero_copy_only=False)
    return np.stack(
        [pd.util.hash_array(values, hash_key=key, categorize=False) for key in _HASH_KEYS], axis=1
    )


def _ingest_key(layout: RunLayout) -> str:
    record = layout.step_record("ingest")
    return str(read_json(record)["key"]) if record.exists() else ""


def _saved_hashes(layout: RunLayout, n_docs: int) -> NDArray[np.uint64] | None:
    """The hashes `layout` saved of its corpus, if they are of the corpus it holds now (the
    same ingest, the same row count): a run id rerun on another input re-ingests."""
    path = layout.run_dir / CONTENT_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        if str(saved["ingest_key"]) != _ingest_key(layout) or len(saved["hashes"]) != n_docs:
            return None
        return saved["hashes"]


def _corpus_ids_and_hashes(
    layout: RunLayout, reuse_saved: bool, with_ids: bool = True
) -> tuple[pa.ChunkedArray | None, NDArray[np.uint64], bool]:
    """Doc ids (with `with_ids`, else None) and content hashes of a run's corpus, and whether
    the hashes are the ones the run saved (`_save_hashes`; with `reuse_saved`, when they are
    still its corpus's)."""
    parts = dataset_parts(layout.corpus)
    n_docs = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    saved = _saved_hashes(layout, n_docs) if reuse_saved else None
    columns = ([S.DOC_ID] if with_ids else []) + ([S.TEXT] if saved is None else [])
    ids, hashes = [], []
    for part in parts if columns else []:
        table = pq.read_table(part, columns=columns)
        if with_ids:
            ids.append(table.column(S.DOC_ID))
        if saved is None:
            hashes.append(content_hashes(table.column(S.TEXT)))
    doc_ids = (
        pa.chunked_array([c for i in ids for c in i.chunks], pa.string()) if with_ids else None
    )
    if saved is not None:
        return doc_ids, saved, True
    return doc_ids, np.concatenate(hashes) if hashes else np.empty((0, 2), np.uint64), False


def _hashes_of(layout: RunLayout, n_docs: int) -> NDArray[np.uint64]:
    """A run's content hashes: saved, or computed from its corpus."""
    saved = _saved_hashes(layout, n_docs)
    if saved is not None:
        return saved
    return _corpus_ids_and_hashes(layout, reuse_saved=False, with_ids=False)[1]


def _save_hashes(layout: RunLayout, hashes: NDArray[np.uint64], ingest_key: str) -> None:
    """Keep a run's content hashes, with the ingest they describe, for the run after it."""
    path = layout.run_dir / CONTENT_FILE
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    with open(tmp, "wb") as handle:
        np.savez(handle, hashes=hashes, ingest_key=np.array(ingest_key))
    os.replace(tmp, path)


def _part_hashes(part: Path) -> NDArray[np.uint64]:
    return content_hashes(pq.read_table(part, columns=[S.TEXT]).column(S.TEXT))


def record_hashes(layout: RunLayout, ingest_key: str) -> None:
    """Hash the texts of `layout`'s freshly ingested corpus (ingest `ingest_key`), one task per
    part on the active Dask client (in this process without one), and save them: the next
    run compares its corpus with them, and this run's own incremental steps read them
    instead of every text again."""
    parts = db.from_sequence(dataset_parts(layout.corpus), partition_size=1)
    _save_hashes(layout, np.concatenate(compute(parts.map(_part_hashes))), ingest_key)


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
        matched_by: ``"id"``, or ``"text"`` for derived ids (see `find_changes`).
    """

    sources: NDArray[np.int64]
    n_new: int
    n_changed: int
    n_deleted: int
    n_unchanged: int
    matched_by: str = "id"

    @property
    def n_computed(self) -> int:
        """Documents whose features and embedding are computed (no earlier row has the text)."""
        return int(np.sum(self.sources < 0))

    def record(self) -> dict[str, int | str]:
        return {
            "matched_by": self.matched_by,
            "new": self.n_new,
            "changed": self.n_changed,
            "deleted": self.n_deleted,
            "unchanged": self.n_unchanged,
            "computed": self.n_computed,
            "reused": len(self.sources) - self.n_computed,
        }


def find_changes(layout: RunLayout, previous: RunLayout, by_id: bool = True) -> Changes:
    """Compare `layout`'s corpus with `previous`'s; save this run's content hashes and the
    reuse plan (``delta/sources.npy``, read back by `read_changes`).

    Args:
        by_id: documents are the same document when their ids are equal (an id column);
            False for ids derived from file name, row and text, which change with any of them:
            then documents are matched by text, and none counts as changed.
    """
    ids, hashes, saved = _corpus_ids_and_hashes(layout, reuse_saved=True, with_ids=by_id)
    old_ids, old_hashes, _ = _corpus_ids_and_hashes(previous, reuse_saved=True, with_ids=by_id)
    if not saved:  # a corpus ingested before ingest saved its hashes
        _save_hashes(layout, hashes, _ingest_key(layout))

    # Reuse by text: the first earlier row with both hashes equal.
    found = _first_positions(hashes[:, 0], old_hashes[:, 0])
    hit = found >= 0
    sources = np.full(len(hashes), -1, np.int64)
    candidates = found[hit]
    agree = old_hashes[candidates, 1] == hashes[hit, 1]
    sources[np.flatnonzero(hit)[agree]] = candidates[agree]

    if by_id:
        assert ids is not None and old_ids is not None  # read with by_id
        at = _first_positions(ids, old_ids.combine_chunks())
        known = at >= 0
        same = np.zeros(len(ids), np.bool_)
        same[known] = np.all(old_hashes[at[known]] == hashes[known], axis=1)
        # An unchanged document reuses its own row rather than the first with its text (the
        # same bytes), so that unchanged parts stay whole previous parts (`merge_rows` links).
        sources[same] = at[same]
        n_deleted = len(old_ids) - int(np.sum(known))
    else:
        known = same = sources >= 0
        n_deleted = int(np.sum(~np.isin(old_hashes[:, 0], hashes[:, 0])))
    changes = Changes(
        sources=sources,
        n_new=int(np.sum(~known)),
        n_changed=int(np.sum(known & ~same)),
        n_deleted=n_deleted,
        n_unchanged=int(np.sum(same)),
        matched_by="id" if by_id else "text",
    )
    delta = layout.run_dir / DELTA_DIR
    delta.mkdir(parents=True, exist_ok=True)
    _save_array(sources, delta / SOURCES_FILE)
    log.info("changes since run %s: %s", previous.run_id, changes.record())
    return changes


def delta_path(layout: RunLayout, name: str) -> Path:
    """A dataset of the computed documents of an incremental run (``corpus``, ``features``,
    ``embeddings``), in ``delta/``."""
    return layout.run_dir / DELTA_DIR / name


def read_changes(layout: RunLayout, mapped: bool = False) -> NDArray[np.int64]:
    """The reuse plan `find_changes` saved (per document, the previous run's row or -1);
    `mapped`: memory-mapped, for a reader that looks up a few rows."""
    return np.load(
        layout.run_dir / DELTA_DIR / SOURCES_FILE,
        allow_pickle=False,
        mmap_mode="r" if mapped else None,
    )


def has_changes(layout: RunLayout) -> bool:
    """Whether `layout` is an incremental run with a saved reuse plan."""
    return (layout.run_dir / DELTA_DIR / SOURCES_FILE).is_file()


def _first_positions(
    keys: pa.Array | pa.ChunkedArray | NDArray[np.uint64], known: pa.Array | NDArray[np.uint64]
) -> NDArray[np.int64]:
    """Per key, the position of its first occurrence in `known`, or -1 (an Arrow hash
    lookup: a million string ids take a fraction of a second, without Python objects)."""
    return pc.index_in(keys, value_set=pa.array(known)).fill_null(-1).to_numpy().astype(np.int64)


def document_moves(
    layout: RunLayout,
    previous: RunLayout,
    by_id: bool = True,
    vanished: frozenset[int] = frozenset(),
    limit: int = 10,
) -> dict[str, Any]:
    """Documents of both runs whose cluster id changed, counted by why: their text changed,
    their previous cluster has no continuation (`vanished`, from the run comparison), or the
    clusters were fitted again around them; `limit` examples of each. Documents are the same
    by id, or by text for derived ids (`by_id` False; see `find_changes`). Meaningful when
    both runs share cluster ids (the same embedding space, ids aligned)."""

    def clusters(run: RunLayout) -> tuple[pa.Array, NDArray[np.int32]]:
        table = pq.read_table(run.assignments, columns=[S.DOC_ID, S.CLUSTER_ID])
        ids = table.column(S.DOC_ID).combine_chunks()
        return ids, table.column(S.CLUSTER_ID).to_numpy()

    ids, now = clusters(layout)
    old_ids, before = clusters(previous)
    # Assignments hold the corpus's documents in corpus order, as the hashes do.
    hashes = _hashes_of(layout, len(ids))
    old_hashes = _hashes_of(previous, len(old_ids))
    keys, old_keys = (ids, old_ids) if by_id else (hashes[:, 0], old_hashes[:, 0])
    at = _first_positions(keys, old_keys)
    both = np.flatnonzero(at >= 0)
    moved = both[now[both] != before[at[both]]]
    edited = np.any(hashes[moved] != old_hashes[at[moved]], axis=1)
    gone = ~edited & np.isin(before[at[moved]], np.asarray(sorted(vanished), np.int32))
    reasons = {
        "text_changed": edited,
        "cluster_vanished": gone,
        "refitted": ~edited & ~gone,
    }
    examples = {
        why: [
            {"doc_id": ids[int(i)].as_py(), "was": int(before[at[i]]), "now": int(now[i])}
            for i in moved[mask][:limit]
        ]
        for why, mask in reasons.items()
    }
    return {
        "n_moved": len(moved),
        **{f"n_moved_{why}": int(mask.sum()) for why, mask in reasons.items()},
        "examples": examples,
    }
