"""Configuration of the cluster step: algorithm, k or eps, and alignment to the previous run."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from udl.config._base import Frozen

__all__ = ["ClusterConfig"]


class ClusterConfig(Frozen):
    """FAISS clustering of the embeddings."""

    algorithm: Literal["kmeans", "dbscan"] = Field("kmeans", description="Clustering algorithm.")
    k: int | Literal["auto"] = Field(
        10, description="Number of k-means clusters, or 'auto' to choose it by internal scores."
    )
    k_candidates: list[int] = Field(
        default_factory=lambda: [5, 10, 15, 20, 30, 40, 50],
        description="Values of k tried when k is 'auto'.",
    )
    eps: float | Literal["auto"] = Field(
        "auto", description="DBSCAN neighbourhood radius, or 'auto' (knee of the k-distance curve)."
    )
    min_samples: int = Field(
        5, ge=1, description="DBSCAN: neighbours (self included) of a core point."
    )
    metric: Literal["cosine", "l2"] = Field("cosine", description="Distance between embeddings.")
    niter: int = Field(25, ge=1, le=1000, description="k-means iterations.")
    nredo: int = Field(1, ge=1, le=100, description="k-means restarts; the best is kept.")
    max_points_per_centroid: int = Field(
        256, ge=10, description="k-means trains on at most this many points per centroid."
    )
    selection_sample: int = Field(
        10_000, ge=100, description="Documents sampled to choose k or eps automatically."
    )
    spherical: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "Spherical k-means (unit centroids); 'auto': on for cosine, and for l2 when the "
            "embeddings already have unit norm."
        ),
    )
    kmeans_init: Literal["auto", "k-means++", "random"] = Field(
        "auto",
        description=(
            "Start of each k-means restart: k-means++ seeding, FAISS's random points, or "
            "'auto' (k-means++ for k <= 256, where it is cheap)."
        ),
    )
    assign_batch_size: int = Field(
        65_536, ge=1, description="Documents assigned to centroids per FAISS search."
    )
    dbscan_flat_max: int = Field(
        100_000,
        ge=1,
        description=(
            "DBSCAN searches one flat index up to this many documents; above, a search pruned "
            "by k-means cells that is still exact."
        ),
    )
    dbscan_max_gib: float = Field(
        16.0,
        gt=0,
        description=(
            "Most memory DBSCAN may take in the flow process, which holds every vector with "
            "features twice (the vectors, FAISS's copy: n x dim x 8 bytes, the figure "
            "checked) plus one batch of neighbourhoods; a larger run stops before loading them."
        ),
    )
    dbscan_nprobe: int | None = Field(
        None,
        ge=1,
        description=(
            "Above dbscan_flat_max, search at most this many cells per batch: faster but "
            "APPROXIMATE (neighbours can be missed). None: exact."
        ),
    )

    align_to_previous: bool = Field(
        True,
        description="When the previous run embedded into the same space: warm-start k-means "
        "from its centroids and give continuing clusters their previous ids.",
    )

    @field_validator("k")
    @classmethod
    def _k_at_least_two(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError("must be an int >= 2 or 'auto'")
        return value

    @field_validator("eps")
    @classmethod
    def _eps_positive(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not (0 < value < math.inf):
            raise ValueError("must be a finite number > 0 or 'auto'")
        return value

    @field_validator("k_candidates")
    @classmethod
    def _candidates_valid(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 2:
            raise ValueError("needs at least one candidate, each >= 2")
        return sorted(set(value))
