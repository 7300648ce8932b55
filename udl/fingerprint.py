"""Content fingerprints that decide whether a step's inputs changed since it last ran."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import fsspec

from udl import __version__
from udl.config import InputConfig
from udl.sources import resolve_sources

__all__ = ["code_version", "source_fingerprint", "step_key"]

# Metadata fields that change when a file's content changes, by filesystem: local mtime,
# object-store ETag or checksum. Size is always included.
_CHANGE_FIELDS = ("mtime", "ETag", "etag", "md5Hash", "crc32c", "LastModified", "created")


def source_fingerprint(config: InputConfig) -> str:
    """Hash of every input file's path, size and modification marker (no content read)."""
    entries = []
    for source in resolve_sources(config):
        fs, path = fsspec.core.url_to_fs(source.url)
        info = fs.info(path)
        entries.append(
            [source.url, info.get("size"), *(str(info.get(f)) for f in _CHANGE_FIELDS if f in info)]
        )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20]


@cache
def code_version() -> str:
    """udl's version plus a hash of the installed library and task sources.

    Any code change gives new step keys, so an edited step never reuses results computed by
    the old code.
    """
    digest = hashlib.sha256(__version__.encode())
    roots = [Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "tasks"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def step_key(step: str, *parts: Any) -> str:
    """Key of a step's inputs: the step, its upstream key and config, and the code version."""
    payload = json.dumps([step, code_version(), *parts], sort_keys=True, default=_plain)
    return f"{step}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if dump is not None else str(value)
