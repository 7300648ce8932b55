"""The clustering step: fit on (a sample of) the embeddings, then write one assignment row per
document, streamed part by part, with the label and metadata columns carried from the corpus.

Documents without features (``has_features`` False in ``embeddings/``) share one meaningless
embedding: they are left out of training, of the choice of k or eps and of DBSCAN, and get
cluster_id -1, distance NaN, confidence 0 and status ``no_features``. Results worth a second
look (a dominant cluster, mostly noise, those documents) come with warnings
(``udl.cluster.health``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.cluster.align import Alignment, align_clusters
from udl.cluster.dbscan import dbscan
from udl.cluster.eps_search import choose_eps
from udl.cluster.health import log_warnings, no_features_warning, result_warnings
from udl.cluster.kmeans import FaissKMeans, prepare, to_distance
from udl.cluster.neighbours import flat_index
from udl.cluster.selection import choose_k
from udl.config import ClusterConfig
from udl.datasets import (
    ALIGNMENT_FILE,
    CENTROIDS_FILE,
    aligned_parts,
    read_embeddings,
    read_has_features,
)
from udl.errors import ConfigError, SchemaError
from udl.storage import atomic_dir, dataset_parts, write_json_atomic, write_part

__all__ = ["ClusterResult", "cluster_embeddings", "read_sample"]

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


@dataclass(frozen=True)
class _Fit:
    """A fitted model before alignment: centroids in fitted order and how to label a part."""

    centroids: NDArray[np.float32]
    n_train: int
    selection: dict[str, Any]
    kmeans: FaissKMeans | None = None
    dbscan_labels: NDArray[np.int32] | None = None  # of the documents with features
    eps: float | None = None
    exact: bool = True
    warnings: list[str] = field(default_factory=list)


def _featured(parts: list[Path]) -> list[NDArray[np.bool_]]:
    """``has_features`` of each part; a clear error when no document has any."""
    featured = [read_has_features(p) for p in parts]
    if not any(f.any() for f in featured):
        n = sum(len(f) for f in featured)
        raise ConfigError(
            f"None of the {n} documents has a word kept by preprocessing, so there is nothing "
            "to cluster; lower preprocess.min_df or check the text column."
        )
    return featured


def _sample_featured(
    featured: list[NDArray[np.bool_]], size: int, seed: int
) -> list[tuple[int, NDArray[np.int64]]]:
    """A seeded uniform sample of at most ``size`` documents with features, across parts.

    Returns:
        (part position, sorted row numbers within that part) for each part with sampled rows;
        the same rows as ``udl.storage.sample_rows`` when every document has features.
    """
    positions = np.flatnonzero(np.concatenate(featured))
    size = min(size, len(positions))
    rows = positions[np.sort(np.random.default_rng(seed).choice(len(positions), size, False))]
    starts = np.concatenate([[0], np.cumsum([len(f) for f in featured])])
    picks = []
    for i in range(len(featured)):
        inside = rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]
        if len(inside):
            picks.append((i, inside))
    return picks


def read_sample(
    embeddings_dir: Path, size: int, seed: int
) -> tuple[NDArray[np.float32], list[tuple[int, NDArray[np.int64]]]]:
    """A seeded sample of at most ``size`` embeddings (n, dim) of documents with features, and
    where the rows came from."""
    parts = dataset_parts(embeddings_dir)
    picks = _sample_featured(_featured(parts), size, seed)
    blocks = [read_embeddings(parts[i])[1][rows] for i, rows in picks]
    return np.concatenate(blocks).astype(np.float32), picks


def _read_featured(embeddings_dir: Path) -> NDArray[np.float32]:
    """Every embedding (n_featured, dim) of the documents with features, in corpus order."""
    parts = dataset_parts(embeddings_dir)
    featured = _featured(parts)
    return np.concatenate([read_embeddings(p)[1][f] for p, f in zip(parts, featured, strict=True)])


def _centroids_of(
    x: NDArray[np.float32], labels: NDArray[np.int32], n_clusters: int, metric: str
) -> NDArray[np.float32]:
    """Mean of each cluster's members (normalised for cosine); noise (-1) is ignored."""
    member = labels >= 0
    sums = np.zeros((n_clusters, x.shape[1]), np.float64)
    np.add.at(sums, labels[member], x[member])
    counts = np.bincount(labels[member], minlength=n_clusters)[:, None]
    centroids = (sums / counts).astype(np.float32)
    return prepare(centroids, "cosine") if metric == "cosine" else centroids


def _fit_kmeans(
    embeddings_dir: Path, config: ClusterConfig, seed: int, previous: NDArray[np.float32] | None
) -> _Fit:
    selection: dict[str, Any] = {}
    warnings: list[str] = []
    k = config.k
    if k == "auto":
        sample, _ = read_sample(embeddings_dir, config.selection_sample, seed)
        result = choose_k(sample, config.k_candidates, config.metric, config.niter, seed)
        k, selection, warnings = result.chosen, result.as_dict(), result.warnings
        log.info(
            "auto k: chose %d from %s (extended by %s)", k, config.k_candidates, result.extended
        )
    train, _ = read_sample(embeddings_dir, config.max_points_per_centroid * k, seed)
    warm = previous if previous is not None and previous.shape == (k, train.shape[1]) else None
    model = FaissKMeans(
        k,
        config.metric,
        config.niter,
        config.nredo,
        config.max_points_per_centroid,
        seed,
        spherical=None if config.spherical == "auto" else config.spherical,
        init=config.kmeans_init,
    ).fit(train, init_centroids=warm)
    return _Fit(model.cluster_centers_, len(train), selection, kmeans=model, warnings=warnings)


def _fit_dbscan(embeddings_dir: Path, config: ClusterConfig, seed: int) -> _Fit:
    x = _read_featured(embeddings_dir)
    flat_max, nprobe = config.dbscan_flat_max, config.dbscan_nprobe
    selection: dict[str, Any] = {}
    warnings: list[str] = []
    if config.eps == "auto":
        if len(x) < config.min_samples:
            raise ConfigError(
                f"eps='auto' needs at least min_samples={config.min_samples} documents with "
                f"features, and there are {len(x)}; lower cluster.min_samples or set eps."
            )
        chosen = choose_eps(
            x,
            config.min_samples,
            config.metric,
            config.selection_sample,
            seed,
            flat_max=flat_max,
            nprobe=nprobe,
        )
        eps, result = chosen.chosen, chosen.result
        selection, warnings = chosen.as_dict(), chosen.warnings
        log.info(
            "auto eps: chose %.4g from %d candidates (min_samples=%d)",
            eps,
            len(chosen.candidates),
            config.min_samples,
        )
    else:
        eps = float(config.eps)
        result = dbscan(
            x, eps, config.min_samples, config.metric, flat_max=flat_max, nprobe=nprobe, seed=seed
        )
    centroids = _centroids_of(x, result.labels, result.n_clusters, config.metric)
    return _Fit(
        centroids,
        len(x),
        selection,
        dbscan_labels=result.labels,
        eps=eps,
        exact=result.exact,
        warnings=warnings,
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
    fit: _Fit, previous: NDArray[np.float32] | None, reason: str | None, config: ClusterConfig
) -> tuple[Alignment | None, dict[str, Any]]:
    if previous is not None and previous.ndim == 2 and previous.shape[1] != fit.centroids.shape[1]:
        previous, reason = (
            None,
            (f"embedding dim changed from {previous.shape[1]} to {fit.centroids.shape[1]}"),
        )
    if previous is None:
        return None, {"status": "skipped", "reason": reason}
    alignment = align_clusters(fit.centroids, previous, config.metric)
    log.info(
        "aligned %d clusters to the previous run: %d appeared, %d vanished, %d moved",
        len(fit.centroids),
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
    x: NDArray[np.float32],
    featured: NDArray[np.bool_],
    fitted: NDArray[np.int32] | None,
    fit: _Fit,
    alignment: Alignment | None,
    centroids: NDArray[np.float32],
    config: ClusterConfig,
) -> _Labels:
    """Assignments of one part's embeddings ``x`` (n, dim); ``fitted``: DBSCAN's labels of
    its documents with features (None for k-means)."""
    if fit.kmeans is not None:
        labels, dist, conf = fit.kmeans.predict(x, config.assign_batch_size)
    else:
        assert fitted is not None
        labels = np.full(len(x), -1, np.int32)
        labels[featured] = fitted
    if alignment is not None:
        labels = alignment.relabel(labels)
    if fit.kmeans is None:
        dist, conf = _dbscan_distances(x, labels, centroids, config.metric)
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


def cluster_embeddings(
    embeddings_dir: Path,
    corpus_dir: Path,
    assignments_dir: Path,
    models_dir: Path,
    config: ClusterConfig,
    run_id: str,
    seed: int,
    previous_models: Path | None = None,
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

    Returns:
        The chosen parameters, counts, selection scores and alignment record.

    Raises:
        ConfigError: parameters that do not fit the data (e.g. k above the number of docs).
        SchemaError: embeddings and corpus parts that do not line up.
    """
    parts = aligned_parts(embeddings_dir, corpus_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    previous, reason = _load_previous(previous_models)
    if config.algorithm == "kmeans":
        fit = _fit_kmeans(embeddings_dir, config, seed, previous)
    else:
        fit = _fit_dbscan(embeddings_dir, config, seed)
    alignment, record = _align(fit, previous, reason, config)
    centroids = alignment.reorder(fit.centroids) if alignment else fit.centroids
    np.save(models_dir / CENTROIDS_FILE, centroids, allow_pickle=False)
    warm = fit.kmeans is not None and fit.kmeans.warm_started_
    if previous_models is not None:
        record = {"previous_models": str(previous_models), "warm_start": warm, **record}
        write_json_atomic(models_dir / ALIGNMENT_FILE, record)

    n_docs = n_fitted = 0
    sizes = np.zeros(len(centroids), np.int64)
    statuses = dict.fromkeys(S.STATUSES, 0)
    with atomic_dir(assignments_dir) as out:
        for i, (emb_part, corpus_part) in enumerate(parts):
            doc_ids, x_part, _ = read_embeddings(emb_part)
            featured = read_has_features(emb_part)
            fitted = None
            if fit.dbscan_labels is not None:
                fitted = fit.dbscan_labels[n_fitted : n_fitted + int(featured.sum())]
                n_fitted += len(fitted)
            labels = _label_part(x_part, featured, fitted, fit, alignment, centroids, config)
            write_part(_assignment_table(corpus_part, doc_ids, labels, run_id), out, i)
            n_docs += len(doc_ids)
            sizes += np.bincount(labels.ids[labels.ids >= 0], minlength=len(centroids))
            for status in statuses:
                statuses[status] += int(np.sum(labels.status == status))
    warnings = [
        *no_features_warning(statuses[S.NO_FEATURES], n_docs),
        *fit.warnings,
        *result_warnings(sizes, statuses[S.NOISE], config.algorithm, _setting(fit, config)),
    ]
    log_warnings(warnings)
    return ClusterResult(
        algorithm=config.algorithm,
        metric=config.metric,
        k=len(centroids) if fit.kmeans is not None else None,
        eps=fit.eps,
        min_samples=config.min_samples if fit.kmeans is None else None,
        n_clusters=len(centroids),
        n_noise=statuses[S.NOISE],
        n_docs=n_docs,
        n_train=fit.n_train,
        selection=fit.selection,
        spherical=fit.kmeans.spherical_ if fit.kmeans is not None else None,
        exact=fit.exact,
        warm_start=warm,
        alignment=record if previous_models is not None else {},
        n_no_features=statuses[S.NO_FEATURES],
        warnings=warnings,
    )


def _setting(fit: _Fit, config: ClusterConfig) -> str:
    """The clustering's parameters in words, for warnings."""
    auto = " chosen automatically" if fit.selection else ""
    if fit.kmeans is not None:
        return f"k={fit.kmeans.k}{auto}"
    return f"eps={fit.eps:.3g}{auto}, min_samples={config.min_samples}"


def _dbscan_distances(
    x: NDArray[np.float32], labels: NDArray[np.int32], centroids: NDArray[np.float32], metric: str
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Distance to the own cluster's centroid (noise: the nearest centroid), and confidence
    1 - d_own / d_nearest_other (0 for noise, 1 when there is a single cluster)."""
    n = len(labels)
    if len(centroids) == 0:
        return np.full(n, np.nan, np.float32), np.zeros(n, np.float32)
    xs = prepare(x, metric)
    scores, ids = flat_index(centroids, metric).search(xs, min(2, len(centroids)))
    dist = to_distance(scores, metric)
    own = np.where(labels >= 0, labels, ids[:, 0])
    if metric == "cosine":
        d_own = (1.0 - np.einsum("ij,ij->i", xs, centroids[own])).clip(min=0.0)
    else:
        diff = xs - centroids[own]
        d_own = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    if len(centroids) < 2:
        return d_own.astype(np.float32), np.where(labels >= 0, 1.0, 0.0).astype(np.float32)
    d_other = np.where(ids[:, 0] == own, dist[:, 1], dist[:, 0])
    conf = np.where(labels >= 0, (1.0 - d_own / np.maximum(d_other, 1e-12)).clip(0.0, 1.0), 0.0)
    return d_own.astype(np.float32), conf.astype(np.float32)
