"""The clustering step: fit on (a sample of) the embeddings, then write one assignment row per
document, streamed part by part, with the label and metadata columns carried from the corpus.

Documents without features (``has_features`` False in ``embeddings/``) share one meaningless
embedding: they are left out of training, of the choice of k or eps and of DBSCAN, and get
cluster_id -1, distance NaN, confidence 0 and status ``no_features``. Results worth a second
look (a dominant cluster, mostly noise, those documents) come with warnings
(``udl.cluster.health``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.cluster.align import Alignment, align_clusters
from udl.cluster.clusterers import Assigned, Clusterer, KMeansClusterer, make_clusterer
from udl.cluster.health import log_warnings, no_features_warning, result_warnings
from udl.cluster.kmeans import NearestCentroids
from udl.cluster.neighbours import Metric
from udl.config import ClusterConfig, RuntimeConfig
from udl.datasets import (
    ALIGNMENT_FILE,
    CENTROIDS_FILE,
    Embeddings,
    aligned_parts,
    read_embeddings,
    read_has_features,
)
from udl.errors import ConfigError, SchemaError
from udl.parallel import dask_client, map_parts
from udl.storage import PartRows, atomic_dir, dataset_parts, write_json_atomic, write_part

__all__ = [
    "ClusterResult",
    "NewAssignments",
    "assign_to_centroids",
    "cluster_embeddings",
    "keep_assignments",
]

log = logging.getLogger(__name__)

CARRIED = {S.DOC_ID, S.TEXT, S.SOURCE, S.ROW, S.TRUNCATED, S.EMBEDDING}


@dataclass(frozen=True)
class ClusterResult:
    """What the clustering step chose and produced (all of it goes to metrics.json).

    Attributes:
        selection: for ``k="auto"``, ``{"rule", "tie_break", "chosen", "extended",
            "at_edge", "candidates": [{k, silhouette, calinski_harabasz, davies_bouldin,
            rank_sum}]}``; for ``eps="auto"``, ``{"rule", "eps", "min_samples", "sample_size",
            "candidates": [{eps, source, n_clusters, noise_share, largest_share, silhouette,
            score, eligible}]}``; empty when both were given.
        spherical: whether k-means was spherical (None for DBSCAN).
        exact: False only for DBSCAN with ``dbscan_nprobe`` above ``dbscan_flat_max``.
        warm_start: whether k-means started from the previous run's centroids.
        alignment: empty without ``previous_models``; else the content of ``alignment.json``:
            ``{"previous_models", "status": "aligned"|"skipped", "reason", "warm_start",
            "mapping", "appeared", "vanished", "moved", "shifts"}`` (see ``udl.cluster.align``).
        n_no_features: documents without features, not clustered (status no_features).
        warnings: plain sentences about results to check (``udl.cluster.health``).
    """

    algorithm: str
    metric: str
    k: int | None
    eps: float | None
    min_samples: int | None
    n_clusters: int
    n_noise: int
    n_docs: int
    n_train: int
    selection: dict[str, Any] = field(default_factory=dict)
    spherical: bool | None = None
    exact: bool = True
    warm_start: bool = False
    alignment: dict[str, Any] = field(default_factory=dict)
    n_no_features: int = 0
    warnings: list[str] = field(default_factory=list)
    fit_seconds: float = 0.0  # choosing k or eps, fitting and aligning, in this process
    assign_seconds: float = 0.0  # assigning every document and writing assignments/


def _check_featured(embeddings: Embeddings) -> None:
    """A clear error when no document has features."""
    if not any(mask.any() for mask in embeddings.has_features()):
        n = sum(len(mask) for mask in embeddings.has_features())
        raise ConfigError(
            f"None of the {n} documents has a word kept by preprocessing, so there is nothing "
            "to cluster; lower preprocess.min_df or check the text column."
        )


def _load_previous(previous_models: Path | None) -> tuple[NDArray[np.float32] | None, str | None]:
    """The previous run's centroids, or None and the reason they cannot be used."""
    if previous_models is None:
        return None, "no previous run"
    path = previous_models / CENTROIDS_FILE
    if not path.is_file():
        return None, f"{path} does not exist"
    return np.load(path, allow_pickle=False).astype(np.float32), None


def _align(
    fitted: NDArray[np.float32],
    previous: NDArray[np.float32] | None,
    reason: str | None,
    config: ClusterConfig,
) -> tuple[Alignment | None, dict[str, Any]]:
    if previous is not None and previous.ndim == 2 and previous.shape[1] != fitted.shape[1]:
        previous, reason = (
            None,
            (f"embedding dim changed from {previous.shape[1]} to {fitted.shape[1]}"),
        )
    if previous is None:
        return None, {"status": "skipped", "reason": reason}
    alignment = align_clusters(fitted, previous, config.metric)
    log.info(
        "aligned %d clusters to the previous run: %d appeared, %d vanished, %d moved",
        len(fitted),
        len(alignment.appeared),
        len(alignment.vanished),
        len(alignment.moved),
    )
    return alignment, {"status": "aligned", "reason": None, **alignment.as_dict()}


@dataclass(frozen=True)
class _Labels:
    """One part's assignments: cluster ids, distances, confidences and statuses (n,)."""

    ids: NDArray[np.int32]
    dist: NDArray[np.float32]
    conf: NDArray[np.float32]
    status: NDArray[np.object_]


def _label_part(
    assigned: Assigned, featured: NDArray[np.bool_], alignment: Alignment | None = None
) -> _Labels:
    """One part's assignments in the aligned cluster ids, from a clusterer's (ids, distances,
    confidences); rows without features are not clustered."""
    labels, dist, conf = assigned
    if alignment is not None:
        labels = alignment.relabel(labels)
    labels = np.where(featured, labels, -1).astype(np.int32)
    dist = np.where(featured, dist, np.nan).astype(np.float32)
    conf = np.where(featured, conf, 0.0).astype(np.float32)
    status = np.where(labels >= 0, S.CLUSTERED, S.NOISE).astype(object)
    status[~featured] = S.NO_FEATURES
    return _Labels(labels, dist, conf, status)


def _assignment_table(
    corpus_part: Path, doc_ids: list[str], labels: _Labels, run_id: str
) -> pa.Table:
    base = pa.Table.from_arrays(
        [
            pa.array(doc_ids, pa.string()),
            pa.array(labels.ids, pa.int32()),
            pa.array(labels.dist, pa.float32()),
            pa.array(labels.conf, pa.float32()),
            pa.array([run_id] * len(doc_ids), pa.string()),
            pa.array(labels.status, pa.string()),
        ],
        schema=S.ASSIGNMENTS_SCHEMA,
    )
    corpus_ids = pq.read_table(corpus_part, columns=[S.DOC_ID]).column(S.DOC_ID)
    if corpus_ids.to_pylist() != doc_ids:
        raise SchemaError(
            f"{corpus_part}: doc_id column does not match its embeddings part row by row; "
            "rerun the embed step."
        )
    corpus_schema = pq.read_schema(corpus_part)
    carried = [name for name in corpus_schema.names if name not in CARRIED]
    if carried:
        extra = pq.read_table(corpus_part, columns=carried)
        for name in carried:
            base = base.append_column(corpus_schema.field(name), extra.column(name))
    return base


@dataclass(frozen=True)
class _Counts:
    """What one part's assignments add to the step's totals."""

    n_docs: int
    sizes: NDArray[np.int64]  # documents per cluster id
    statuses: dict[str, int]

    @classmethod
    def of(cls, labels: _Labels, n_clusters: int) -> _Counts:
        return cls(
            len(labels.ids),
            np.bincount(labels.ids[labels.ids >= 0], minlength=n_clusters),
            {status: int(np.sum(labels.status == status)) for status in S.STATUSES},
        )


def _assign_in_process(
    clusterer: Clusterer,
    embeddings: Embeddings,
    parts: list[tuple[Path, Path]],
    alignment: Alignment | None,
    run_id: str,
    out: Path,
) -> list[_Counts]:
    counts, offset = [], 0
    for i, ((emb_part, corpus_part), featured) in enumerate(
        zip(parts, embeddings.has_features(), strict=True)
    ):
        doc_ids, x_part, _ = read_embeddings(emb_part)
        labels = _label_part(clusterer.assign(x_part, featured, offset), featured, alignment)
        offset += int(featured.sum())
        write_part(_assignment_table(corpus_part, doc_ids, labels, run_id), out, i)
        counts.append(_Counts.of(labels, len(clusterer.centroids_)))
    return counts


def _assign_part(
    part: tuple[int, Path, Path],
    centroids: NDArray[np.float32],
    alignment: Alignment | None,
    metric: Metric,
    batch_size: int,
    run_id: str,
    out: Path,
) -> _Counts:
    """One part assigned to fixed centroids (on a Dask worker, or here), written as part
    `index` of `out`."""
    index, emb_part, corpus_part = part
    doc_ids, x, _ = read_embeddings(emb_part)
    if x.shape[1] != centroids.shape[1]:
        raise SchemaError(
            f"{emb_part}: vectors of dimension {x.shape[1]}, but the run's centroids "
            f"have {centroids.shape[1]}"
        )
    featured = read_has_features(emb_part)
    nearest = NearestCentroids(centroids, metric)
    labels = _label_part(nearest.predict(x, batch_size), featured, alignment)
    write_part(_assignment_table(corpus_part, doc_ids, labels, run_id), out, index)
    return _Counts.of(labels, len(centroids))


def _assign_to(
    centroids: NDArray[np.float32],
    parts: list[tuple[Path, Path]],
    alignment: Alignment | None,
    metric: Metric,
    batch_size: int,
    run_id: str,
    out: Path,
    workers: RuntimeConfig | None,
) -> list[_Counts]:
    """Every part assigned to `centroids`: one Dask task per part on `workers` (the centroids
    sent once), or here part after part."""
    items = [(index, *pair) for index, pair in enumerate(parts)]
    shared = {
        "centroids": centroids,
        "alignment": alignment,
        "metric": metric,
        "batch_size": batch_size,
        "run_id": run_id,
        "out": out,
    }
    if workers is None:
        return [_assign_part(item, **shared) for item in items]
    with dask_client(workers):
        return map_parts(_assign_part, items, "assign-part", **shared)


def cluster_embeddings(
    embeddings_dir: Path,
    corpus_dir: Path,
    assignments_dir: Path,
    models_dir: Path,
    config: ClusterConfig,
    run_id: str,
    seed: int,
    previous_models: Path | None = None,
    workers: RuntimeConfig | None = None,
) -> ClusterResult:
    """Cluster the embeddings and write ``assignments/`` (one row per document).

    k-means trains on at most ``max_points_per_centroid * k`` sampled points and assigns every
    part in turn, ``assign_batch_size`` rows per search. DBSCAN needs all embeddings in memory
    (n x dim float32). With ``previous_models``, k-means warm-starts from the previous
    centroids when k and dim match, and cluster ids are aligned to the previous run's (see
    ``udl.cluster.align``); ``models/alignment.json`` records the outcome.

    Args:
        embeddings_dir: embeddings dataset (``udl.schema.embeddings_schema``), parts aligned
            row by row with ``corpus_dir``'s.
        corpus_dir: corpus dataset; its label and metadata columns are carried over.
        assignments_dir: written atomically, ``ASSIGNMENTS_SCHEMA`` then the carried columns.
        models_dir: receives ``centroids.npy`` (row i = cluster i) and ``alignment.json``.
        config: the clustering configuration.
        run_id: written into every assignment row.
        seed: seed of the samples, k-means and the DBSCAN cells.
        previous_models: the previous run's ``models/`` folder, or None.
        workers: the Dask cluster (`udl.parallel.dask_client`'s settings) on which k-means
            assigns every part, the centroids sent once and each part written by its worker;
            None assigns in this process. DBSCAN's labels come from its fit on all
            embeddings, in this process, and are written here either way.

    Returns:
        The chosen parameters, counts, selection scores and alignment record.

    Raises:
        ConfigError: parameters that do not fit the data (e.g. k above the number of docs).
        SchemaError: embeddings and corpus parts that do not line up.
    """
    started = time.perf_counter()
    parts = aligned_parts(embeddings_dir, corpus_dir)
    embeddings = Embeddings(embeddings_dir)
    _check_featured(embeddings)
    models_dir.mkdir(parents=True, exist_ok=True)
    previous, reason = _load_previous(previous_models)
    clusterer = make_clusterer(config, seed).fit(embeddings, previous)
    alignment, record = _align(clusterer.centroids_, previous, reason, config)
    fitted = clusterer.centroids_
    centroids = alignment.reorder(fitted) if alignment else fitted
    np.save(models_dir / CENTROIDS_FILE, centroids, allow_pickle=False)
    if previous_models is not None:
        record = {
            "previous_models": str(previous_models),
            "warm_start": clusterer.warm_started_,
            **record,
        }
        write_json_atomic(models_dir / ALIGNMENT_FILE, record)

    fitted_at = time.perf_counter()
    with atomic_dir(assignments_dir) as out:
        if workers is not None and isinstance(clusterer, KMeansClusterer):
            counts = _assign_to(
                fitted,
                parts,
                alignment,
                config.metric,
                config.assign_batch_size,
                run_id,
                out,
                workers,
            )
        else:
            counts = _assign_in_process(clusterer, embeddings, parts, alignment, run_id, out)
    n_docs = sum(c.n_docs for c in counts)
    sizes = np.sum([c.sizes for c in counts], axis=0)
    statuses = {status: sum(c.statuses[status] for c in counts) for status in S.STATUSES}
    warnings = [
        *no_features_warning(statuses[S.NO_FEATURES], n_docs),
        *clusterer.warnings_,
        *result_warnings(sizes, statuses[S.NOISE], config.algorithm, clusterer.setting()),
    ]
    log_warnings(warnings)
    return ClusterResult(
        algorithm=config.algorithm,
        metric=config.metric,
        **clusterer.parameters(),
        n_clusters=len(centroids),
        n_noise=statuses[S.NOISE],
        n_docs=n_docs,
        n_train=clusterer.n_train_,
        selection=clusterer.selection_,
        exact=clusterer.exact_,
        warm_start=clusterer.warm_started_,
        alignment=record if previous_models is not None else {},
        n_no_features=statuses[S.NO_FEATURES],
        warnings=warnings,
        fit_seconds=fitted_at - started,
        assign_seconds=time.perf_counter() - fitted_at,
    )


@dataclass(frozen=True)
class NewAssignments:
    """What `assign_to_centroids` wrote.

    Attributes:
        n_docs: documents written (every ingested one).
        n_clusters: clusters of the run joined.
        sizes: documents per cluster id, only ids that received some.
        n_no_features: documents without features (cluster_id -1, status no_features).
    """

    n_docs: int
    n_clusters: int
    sizes: dict[int, int]
    n_no_features: int


def assign_to_centroids(
    embeddings_dir: Path,
    corpus_dir: Path,
    assignments_dir: Path,
    models_dir: Path,
    metric: Metric,
    run_id: str,
    batch_size: int = 65_536,
    workers: RuntimeConfig | None = None,
) -> NewAssignments:
    """Assign new documents to a finished k-means run's clusters: each joins the nearest of
    the run's ``centroids.npy`` (in the run's cluster ids), with the distance and confidence a
    document of the run gets, and nothing is refitted.

    Args:
        embeddings_dir: the new documents' embeddings (the run's encoder), aligned with
            ``corpus_dir``'s parts.
        corpus_dir: their corpus; label and metadata columns are carried over.
        assignments_dir: written atomically, as the cluster step writes ``assignments/``.
        models_dir: the run's ``models/`` (only read).
        metric: the run's ``cluster.metric``.
        run_id: written into every row: the run whose cluster ids these are.
        batch_size: rows searched at once.
        workers: the Dask cluster that assigns the parts (as in `cluster_embeddings`); None:
            here.

    Raises:
        SchemaError: embeddings and corpus parts that do not line up, or vectors of another
            width than the centroids.
    """
    centroids = np.load(models_dir / CENTROIDS_FILE, allow_pickle=False).astype(np.float32)
    parts = aligned_parts(embeddings_dir, corpus_dir)
    with atomic_dir(assignments_dir) as out:
        counts = _assign_to(centroids, parts, None, metric, batch_size, run_id, out, workers)
    sizes = np.sum([c.sizes for c in counts], axis=0)
    return NewAssignments(
        sum(c.n_docs for c in counts),
        len(centroids),
        {int(c): int(n) for c, n in enumerate(sizes) if n},
        sum(c.statuses[S.NO_FEATURES] for c in counts),
    )


def keep_assignments(
    corpus_dir: Path,
    computed_embeddings: Path,
    assignments_dir: Path,
    previous_assignments: Path,
    models_dir: Path,
    sources: NDArray[np.int64],
    metric: Metric,
    run_id: str,
    batch_size: int = 65_536,
) -> NewAssignments:
    """The assignments of a run under the `frozen` update policy: a document whose text the
    previous run held keeps that document's cluster id, distance and confidence; the others
    join the nearest of the previous centroids (``models_dir/centroids.npy``, copied from the
    previous run). Nothing is refitted, and no cluster id changes.

    Args:
        corpus_dir: the run's corpus; label and metadata columns are carried over.
        computed_embeddings: the embeddings of the documents computed (``sources < 0``), in
            corpus order (``delta/embeddings``).
        sources: per document (corpus order), the previous run's row with its text, or -1
            (`udl.changes.read_changes`).
        previous_assignments: the previous run's ``assignments/``.
    """
    centroids = np.load(models_dir / CENTROIDS_FILE, allow_pickle=False).astype(np.float32)
    x, featured = np.empty((0, centroids.shape[1]), np.float32), np.empty(0, np.bool_)
    if np.any(sources < 0):
        _, x, _ = read_embeddings(computed_embeddings)
        featured = np.concatenate(
            [read_has_features(p) for p in dataset_parts(computed_embeddings)]
        )
    found = _label_part(NearestCentroids(centroids, metric).predict(x, batch_size), featured)
    previous = PartRows(previous_assignments)
    n_docs = n_fresh = n_empty = 0
    sizes = np.zeros(len(centroids), np.int64)
    fields = (
        ("ids", S.CLUSTER_ID),
        ("dist", S.DISTANCE),
        ("conf", S.CONFIDENCE),
        ("status", S.STATUS),
    )
    with atomic_dir(assignments_dir) as out:
        for i, corpus_part in enumerate(dataset_parts(corpus_dir)):
            doc_ids = pq.read_table(corpus_part, columns=[S.DOC_ID]).column(S.DOC_ID).to_pylist()
            part_sources = sources[n_docs : n_docs + len(doc_ids)]
            reused = part_sources >= 0
            kept = previous.take(part_sources[reused])
            fresh = slice(n_fresh, n_fresh + int(np.sum(~reused)))
            n_fresh = fresh.stop
            labels = _Labels(
                np.empty(len(doc_ids), np.int32),
                np.empty(len(doc_ids), np.float32),
                np.empty(len(doc_ids), np.float32),
                np.empty(len(doc_ids), object),
            )
            for name, column in fields:
                values = getattr(labels, name)
                values[reused] = kept.column(column).to_numpy(zero_copy_only=False)
                values[~reused] = getattr(found, name)[fresh]
            write_part(_assignment_table(corpus_part, doc_ids, labels, run_id), out, i)
            n_docs += len(doc_ids)
            n_empty += int(np.sum(labels.status == S.NO_FEATURES))
            sizes += np.bincount(labels.ids[labels.ids >= 0], minlength=len(centroids))
    return NewAssignments(
        n_docs, len(centroids), {int(c): int(n) for c, n in enumerate(sizes) if n}, n_empty
    )
