"""How a run treats the run it follows: recompute everything, or reuse its fitted models and
compute only the documents whose text is new or changed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from udl.config._base import Frozen, _empty_is_none

__all__ = ["UPDATE_POLICIES", "UpdateConfig"]

UPDATE_POLICIES = ("full", "refresh", "frozen")
FloatOrNone = Annotated[float | None, BeforeValidator(_empty_is_none)]


class UpdateConfig(Frozen):
    """The update policy of a run that follows an earlier one (a nightly run).

    `refresh` and `frozen` keep the previous run's IDF and encoder, so unchanged documents keep
    their features and embeddings and only new or changed ones are computed; `refresh` then
    re-clusters all documents (k-means warm-started from the previous centroids, ids of the
    clusters that continue kept), `frozen` assigns the new and changed documents to the
    previous centroids (nobody's cluster changes). `full` retrains the encoder (with
    ``encoder.warm_start`` as configured). Without a previous run, or when the previous run's
    preprocessing or encoder settings differ from this run's, every policy runs as `full`.
    """

    policy: Literal["full", "refresh", "frozen"] = Field(
        "full",
        description="full: retrain the encoder on the whole corpus; refresh: reuse the previous "
        "run's encoder, embed only new or changed documents, re-cluster everything; frozen: "
        "as refresh, but assign new documents to the previous clusters without re-clustering.",
    )
    drift_threshold: FloatOrNone = Field(
        None,
        ge=0.1,
        le=1.0,
        description="Share of new or changed documents farther from every previous centroid "
        "than 95% of the previous run's documents are from theirs (about 0.05 when nothing "
        "drifted), past which the run escalates to `on_drift`, e.g. 0.2. Empty: drift is "
        "measured and reported only.",
    )
    on_drift: Literal["refresh", "full"] = Field(
        "full", description="Policy a run escalates to when the drift threshold is passed."
    )
