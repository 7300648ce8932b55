"""The similar-documents step: a FAISS index of the run's embeddings and each document's
nearest neighbours."""

from __future__ import annotations

from pydantic import Field

from udl.config._base import Frozen

__all__ = ["NeighboursConfig"]


class NeighboursConfig(Frozen):
    """Whether and how the run indexes its embeddings for similar-document lookup."""

    enabled: bool = Field(
        False,
        description="Save a FAISS index of the embeddings (models/neighbours.faiss) and write "
        "each document's nearest neighbours to neighbours/ (for `udl similar` and the report).",
    )
    k: int = Field(10, ge=1, le=100, description="Neighbours written per document.")
    flat_max: int = Field(
        50_000,
        ge=100,
        description="Up to this many documents the index is exact (flat); above, an IVF index.",
    )
    nprobe: int = Field(
        16, ge=1, le=1024, description="IVF cells searched per query (more: slower, closer)."
    )
