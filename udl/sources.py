"""The files behind an input path: a file, a folder or a glob, local or any fsspec URL, each
with its format and compression from its suffixes."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec

from udl.config import InputConfig
from udl.errors import InputDataError

__all__ = ["FORMATS", "Source", "resolve_sources"]

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".xz": "xz"}
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
}


@dataclass(frozen=True)
class Source:
    """One input file: its URL, its format and the compression to undo."""

    url: str
    format: str
    compression: str | None
    name: str  # path relative to the input root: stable across machines, used in derived ids
    size: int  # bytes on storage (compressed), to group small files into one task


def _split_suffixes(path: str) -> tuple[str | None, str | None]:
    stem, ext = posixpath.splitext(path.lower())
    compression = COMPRESSIONS.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    return FORMATS.get(ext), compression


def resolve_sources(config: InputConfig, skipped: list[str] | None = None) -> list[Source]:
    """Expand the configured path (file, folder or glob, local or fsspec URL) into sources.

    Args:
        config: gives `path` and `format`.
        skipped: if given, receives the paths of matched files left out for an unknown
            format (hidden files, named ``.*`` or ``_*``, are left out silently).

    Returns:
        The matching files in sorted order (which fixes row order in the corpus).

    Raises:
        InputDataError: nothing readable matches the path.
    """
    fs, root = fsspec.core.url_to_fs(config.path)
    # One listing with details gives every size (chunking needs them) without a call a file.
    if any(ch in root for ch in "*?["):
        found = fs.glob(root, detail=True)
        base = root.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(root):
        found = fs.find(root, detail=True)
        found = {p: i for p, i in found.items() if not posixpath.basename(p).startswith((".", "_"))}
        base = root
    elif fs.exists(root):
        found, base = {root: fs.info(root)}, posixpath.dirname(root)
    else:
        raise InputDataError(config.path, "no such file or folder")
    sources = []
    for path in sorted(p for p, info in found.items() if info["type"] == "file"):
        fmt, compression = _split_suffixes(path)
        fmt = fmt if config.format == "auto" else config.format
        if fmt is None:
            if skipped is not None:
                skipped.append(path)
            continue
        name = posixpath.relpath(path, base) if base else path
        size = int(found[path].get("size") or 0)
        sources.append(Source(fs.unstrip_protocol(path), fmt, compression, name, size))
    if not sources:
        raise InputDataError(
            config.path,
            "no readable files (*.csv, *.tsv, *.jsonl, *.parquet, *.txt, optionally .gz/.bz2/.zst/"
            ".xz); pass a file, a glob, or a folder of such files, or set input.format",
        )
    return sources
