"""udl: batch embedding and clustering of large text corpora.

The library is importable and testable without Prefect; `tasks/` and `flows/` orchestrate it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("udl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
