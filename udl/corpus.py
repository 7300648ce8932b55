"""Ingest a corpus (CSV/TSV, JSON Lines, Parquet, folders of text files; any fsspec URL) into
a partitioned Parquet dataset, sending every bad row to the rejects dataset with a reason.

Partition-parallel on Dask, in three steps:

1. consecutive source files are grouped into chunks of about CHUNK_BYTES; each chunk is read,
   validated (`udl.validation`) and written to staging parts by one task, which returns its
   row accounting and the 64-bit hashes of the ids it kept;
2. the caller walks the chunks in source order with one set of id hashes (8 bytes an id) and
   moves ids already kept by an earlier chunk to the rejects: the first occurrence wins, as
   in a sequential read;
3. staged parts are renamed into the dataset in source order.

Every row read ends up either in the corpus or in the rejects: `rows_read = ingested + rejected`
holds per source file and is returned for the run manifest.

Supplied vectors (`input.embedding_column`) become the corpus column `embedding`, a
fixed-size float32 list of one dimension for the whole corpus: `input.embedding_dim` if set,
otherwise the length of the first valid vector of the first source file (sorted file order)
that has one. It is decided once, before the chunks run in parallel, so it depends neither on
the chunking nor on the scheduler, and a rerun decides the same.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import dask.bag as db
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from udl import schema as S
from udl.config import InputConfig
from udl.doc_ids import KeptDocs, SeenIds, describe_record, duplicate_error
from udl.errors import ConfigError, InputDataError
from udl.parallel import compute
from udl.readers import read_source
from udl.sources import Source, resolve_sources
from udl.storage import PartWriter, atomic_dir, dataset_parts, part_path, write_part
from udl.validation import Validator
from udl.vectors import first_valid_length

__all__ = ["IngestResult", "SourceCounts", "ingest", "resolve_sources"]

log = logging.getLogger(__name__)

RESERVED = {S.DOC_ID, S.TEXT, S.SOURCE, S.ROW, S.TRUNCATED, S.LABEL}
# Input bytes per ingest task: small files (a folder of texts) share a task, a big file has
# one to itself. Parts never span chunks, so this also bounds how many partial parts appear.
CHUNK_BYTES = 16 * 2**20
# Share of rejected rows from which the step record carries a warning (below it, the rejects
# are logged and counted by reason, but not flagged).
REJECTED_WARNING = 0.01


@dataclass
class SourceCounts:
    """Row accounting of one source file: `read == ingested + rejected`."""

    read: int = 0
    ingested: int = 0
    rejected: int = 0


@dataclass
class IngestResult:
    """What `ingest` wrote: row counts overall and per source, and the corpus columns."""

    rows_read: int
    rows_ingested: int
    rows_rejected: int
    truncated: int
    per_source: dict[str, SourceCounts]
    rejected_by_reason: dict[str, int]
    columns: list[str]
    has_label: bool
    embedding_dim: int | None  # length of the supplied vectors; None without embedding_column
    warnings: list[str]  # plain sentences a user can act on (skipped files, many rejects)


@dataclass
class _Chunk:
    """What one ingest task staged, for a run of consecutive sources."""

    folder: Path  # holds corpus/ and rejects/ part folders
    sources: list[Source]
    per_source: dict[str, SourceCounts]
    reasons: Counter[str]
    truncated: int
    kept: KeptDocs  # each staged document's id hash, source, row and line, in corpus order


def _chunks(sources: list[Source]) -> list[list[Source]]:
    """Consecutive sources grouped up to CHUNK_BYTES (a larger file is a chunk alone)."""
    chunks: list[list[Source]] = []
    size = 0
    for source in sources:
        if not chunks or size + source.size > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(source)
        size += source.size
    return chunks


def _ingest_chunk(
    folder: Path, sources: list[Source], config: InputConfig, schema: pa.Schema
) -> _Chunk:
    """Step 1, one task: read and validate `sources` into staging parts under `folder`."""
    validate = Validator(config, schema)
    per_source: dict[str, SourceCounts] = {}
    reasons: Counter[str] = Counter()
    (folder / "corpus").mkdir(parents=True)
    (folder / "rejects").mkdir()
    with (
        PartWriter(folder / "corpus", schema, config.partition_rows) as corpus_out,
        PartWriter(folder / "rejects", S.REJECTS_SCHEMA, config.partition_rows) as rejects_out,
    ):
        for source in sources:
            counts = per_source.setdefault(source.url, SourceCounts())
            for batch in read_source(source, config):
                good, rejects = validate(source, batch)
                corpus_out.add(good)
                rejects_out.add(rejects)
                reasons.update(rejects.column(S.REASON).to_pylist())
                counts.ingested += good.num_rows
                counts.rejected += rejects.num_rows
                counts.read += good.num_rows + rejects.num_rows
        corpus_out.close()
        rejects_out.close()
    return _Chunk(folder, sources, per_source, reasons, validate.truncated, validate.kept)


def _reject_repeats(chunk: _Chunk, repeats: dict[int, str], config: InputConfig) -> None:
    """Step 2 for one chunk: move the staged rows at the positions of `repeats` (ids an earlier
    chunk kept; each with the place of that first row) to its rejects as `duplicate_id`, or
    raise under `duplicate_ids="error"`."""
    urls = {source.name: source.url for source in chunk.sources}
    positions = np.array(sorted(repeats), dtype=np.int64)
    rejects_dir = chunk.folder / "rejects"
    offset = 0
    for index, part in enumerate(dataset_parts(chunk.folder / "corpus")):
        table = pq.read_table(part)
        at = positions[(positions >= offset) & (positions < offset + table.num_rows)]
        local, offset = at - offset, offset + table.num_rows
        if not len(local):
            continue
        records = [
            {
                S.SOURCE: urls[r[S.SOURCE]],
                S.ROW: r[S.ROW],
                S.LINE: chunk.kept.where(position)[2],
                S.DOC_ID: r[S.DOC_ID],
                S.REASON: "duplicate_id",
                S.DETAIL: f"doc_id {r[S.DOC_ID]!r} repeats {repeats[position]}",
                S.RAW: r[S.TEXT],
            }
            for r, position in zip(
                table.take(pa.array(local)).to_pylist(), at.tolist(), strict=True
            )
        ]
        if config.duplicate_ids == "error":
            first = records[0]
            raise duplicate_error(
                first[S.SOURCE], first[S.DOC_ID], first[S.ROW], first[S.LINE], repeats[int(at[0])]
            )
        keep = np.ones(table.num_rows, dtype=bool)
        keep[local] = False
        write_part(table.filter(pa.array(keep)), part.parent, index)
        write_part(
            pa.Table.from_pylist(records, schema=S.REJECTS_SCHEMA),
            rejects_dir,
            len(dataset_parts(rejects_dir)),
        )
        for record in records:
            counts = chunk.per_source[record[S.SOURCE]]
            counts.ingested -= 1
            counts.rejected += 1
        chunk.reasons["duplicate_id"] += len(records)


def _find_repeats(chunks: list[_Chunk]) -> list[dict[int, str]]:
    """Step 2's search: per chunk, the staged positions whose id an earlier chunk kept, each
    with the place of that first row (``row 3 (line 4) of a.csv``)."""
    seen = SeenIds()
    starts = np.cumsum([0, *(chunk.kept.count for chunk in chunks)])
    found: list[dict[int, str]] = []
    for index, chunk in enumerate(chunks):
        hashes = chunk.kept.all_hashes()
        earlier = seen.find(hashes)
        new = np.flatnonzero(earlier < 0)
        seen.add(hashes[new], starts[index] + new)
        repeats = {}
        for at in np.flatnonzero(earlier >= 0).tolist():
            owner = int(np.searchsorted(starts, earlier[at], side="right")) - 1
            place = chunks[owner].kept.where(int(earlier[at] - starts[owner]))
            repeats[at] = describe_record(*place)
        found.append(repeats)
    return found


def _commit(chunks: list[_Chunk], kind: str, out: Path, schema: pa.Schema) -> None:
    """Step 3: rename the non-empty staged parts into `out` in source order."""
    count = 0
    for chunk in chunks:
        for part in dataset_parts(chunk.folder / kind):
            if pq.ParquetFile(part).metadata.num_rows:
                os.replace(part, part_path(out, count))
                count += 1
    if not count:  # an empty dataset still has its schema on disk
        write_part(schema.empty_table(), out, 0)


def _supplied_dim(config: InputConfig, sources: list[Source]) -> int | None:
    """The length every supplied vector must have (see the module docstring)."""
    if config.embedding_column is None or config.embedding_dim is not None:
        return config.embedding_dim
    for source in sources:
        with closing(read_source(source, config)) as batches:
            for batch in batches:
                assert batch.vectors is not None
                dim = first_valid_length(batch.vectors)
                if dim is not None:
                    return dim
    raise InputDataError(
        config.path,
        f"column {config.embedding_column!r} holds no valid vector (every one is null, empty, "
        "or has a null, NaN or infinite value); fix the column or unset input.embedding_column",
    )


def _corpus_schema(config: InputConfig, dim: int | None) -> pa.Schema:
    reserved = RESERVED | ({S.EMBEDDING} if dim is not None else set())
    clash = reserved.intersection(config.metadata_columns)
    if clash:
        raise ConfigError(
            f"metadata_columns {sorted(clash)} clash with columns udl writes; rename them"
        )
    fields = [*S.CORPUS_FIELDS]
    if dim is not None:
        fields.append(S.embedding_field(dim))
    if config.label_column:
        fields.append(pa.field(S.LABEL, pa.string()))
    fields += [pa.field(m, pa.string()) for m in config.metadata_columns]
    return pa.schema(fields)


def ingest(
    config: InputConfig, corpus_dir: Path, rejects_dir: Path, allow_empty: bool = False
) -> IngestResult:
    """Read every source into `corpus_dir` (partitioned Parquet) and `rejects_dir`.

    Runs on the active Dask scheduler (see `udl.parallel.compute`): the sources must
    be reachable from the workers, and so must `corpus_dir`'s parent (staging happens there).
    Both folders appear only once complete (see `udl.storage.atomic_dir`); an error leaves
    the previous ones untouched. The output does not depend on the scheduler.

    Args:
        config: where the corpus is and which columns to use.
        corpus_dir: output dataset folder, replaced atomically.
        rejects_dir: output rejects folder, replaced atomically.
        allow_empty: return an empty corpus instead of raising (nothing could be clustered).

    Returns:
        Row counts, per source and overall.

    Raises:
        InputDataError: a source cannot be read at all, lacks a configured column, repeats
            an id under `duplicate_ids="error"`, or (with `embedding_column`) holds no valid
            vector at all; or, unless `allow_empty`, no row is left to cluster (raised once
            both folders are written, so the rejects can be inspected).
        ConfigError: the column configuration is inconsistent.
    """
    skipped: list[str] = []
    sources = resolve_sources(config, skipped)
    dim = _supplied_dim(config, sources)
    schema = _corpus_schema(config, dim)
    chunks = _chunks(sources)
    with atomic_dir(corpus_dir) as corpus_tmp, atomic_dir(rejects_dir) as rejects_tmp:
        staging = corpus_tmp / "_staging"
        staged: list[_Chunk] = compute(
            db.from_sequence(list(enumerate(chunks)), partition_size=1).map(
                lambda item: _ingest_chunk(staging / f"{item[0]:05d}", item[1], config, schema)
            )
        )
        for chunk, repeats in zip(staged, _find_repeats(staged), strict=True):
            if repeats:
                _reject_repeats(chunk, repeats, config)
        _commit(staged, "corpus", corpus_tmp, schema)
        _commit(staged, "rejects", rejects_tmp, S.REJECTS_SCHEMA)
        shutil.rmtree(staging)
    per_source = {url: c for chunk in staged for url, c in chunk.per_source.items()}
    reasons = sum((chunk.reasons for chunk in staged), Counter())
    result = IngestResult(
        rows_read=sum(c.read for c in per_source.values()),
        rows_ingested=sum(c.ingested for c in per_source.values()),
        rows_rejected=sum(c.rejected for c in per_source.values()),
        truncated=sum(chunk.truncated for chunk in staged),
        per_source=per_source,
        rejected_by_reason=dict(sorted(reasons.items())),
        columns=schema.names,
        has_label=config.label_column is not None,
        embedding_dim=dim,
        warnings=[],
    )
    result.warnings += _warnings(config, skipped, result, rejects_dir)
    if not result.rows_ingested and not allow_empty:
        raise _empty_corpus_error(config, sources, result, rejects_dir)
    return result


def _warnings(
    config: InputConfig, skipped: list[str], result: IngestResult, rejects_dir: Path
) -> list[str]:
    """What the user should know although ingest succeeded: files it did not read, and a
    share of rejected rows (REJECTED_WARNING or more) that changes what is clustered."""
    found = []
    if skipped:
        names = ", ".join(posixpath.basename(path) for path in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        found.append(
            f"ingest: skipped {len(skipped)} file(s) in {config.path} with no known format "
            f"({names}{more}); rename them (*.csv, *.tsv, *.jsonl, *.parquet, *.txt) or set "
            "input.format to read them"
        )
    for warning in found:
        log.warning(warning)
    if result.rows_rejected:
        top = sorted(result.rejected_by_reason.items(), key=lambda item: (-item[1], item[0]))
        reasons = ", ".join(f"{reason}: {count}" for reason, count in top[:3])
        rejected = (
            f"ingest: rejected {result.rows_rejected} of {result.rows_read} rows "
            f"({result.rows_rejected / result.rows_read:.1%}; {reasons}); see {rejects_dir} "
            "for each one's row, line and reason"
        )
        log.warning(rejected)  # logged whatever the share; flagged in the record from 1%
        if result.rows_rejected >= REJECTED_WARNING * result.rows_read:
            found.append(rejected)
    return found


def _empty_corpus_error(
    config: InputConfig, sources: list[Source], result: IngestResult, rejects_dir: Path
) -> InputDataError:
    """Why ingest kept no document: the files hold no rows, or every row was rejected (the
    rejects are written by then, so the message points at them)."""
    where = sources[0].url if len(sources) == 1 else f"{config.path} ({len(sources)} files)"
    if not result.rows_read:
        header = all(source.format in ("csv", "tsv") for source in sources)
        what = "0 rows (header only)" if header else "0 rows (every file is empty)"
    else:
        top = sorted(result.rejected_by_reason.items(), key=lambda item: (-item[1], item[0]))
        counts = ", ".join(f"{reason}: {count}" for reason, count in top[:3])
        more = ", ..." if len(top) > 3 else ""
        rows = f"all {result.rows_read} rows" if result.rows_read > 1 else "the only row"
        what = f"{rows} rejected ({counts}{more}); see {rejects_dir}"
    return InputDataError(where, f"no documents to cluster: {what}")
