"""k-means, automatic k, cross-run alignment, supplied vectors and the clustering step (issue 5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from udl import schema as S
from udl.cluster.align import align_clusters
from udl.cluster.assign import cluster_embeddings
from udl.cluster.clusterers import make_clusterer
from udl.cluster.kmeans import FaissKMeans, NearestCentroids
from udl.cluster.selection import K_RULE, choose_k
from udl.config import ClusterConfig
from udl.datasets import ALIGNMENT_FILE, CENTROIDS_FILE, Embeddings
from udl.errors import ConfigError, NotFittedError, SchemaError
from udl.storage import write_part
from udl.vectors import validate_vectors


def _blobs(
    n: int = 1500, centers: int = 5, dim: int = 16, seed: int = 0, std: float = 1.0
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    x, y = make_blobs(
        n, n_features=dim, centers=centers, cluster_std=std, center_box=(-20, 20), random_state=seed
    )
    return x.astype(np.float32), y


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- k-means -------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_kmeans_recovers_planted_clusters_5(metric: str) -> None:
    x, truth = _blobs()
    model = FaissKMeans(5, metric, niter=20, nredo=3, seed=0).fit(x)
    labels, dist, confidence = model.predict(x)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert labels.dtype == np.int32 and dist.dtype == confidence.dtype == np.float32
    assert ((confidence >= 0) & (confidence <= 1)).all()


def test_predict_by_hand() -> None:
    # Two pairs: centroids (0, 0.5) and (10, 10.5). The point (0, 0) is 0.5 from the first and
    # sqrt(10^2 + 10.5^2) = 14.5 from the second, so confidence = 1 - 0.5 / 14.5.
    x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=np.float32)
    model = FaissKMeans(2, "l2", seed=0).fit(x)
    labels, dist, confidence = model.predict(np.array([[0, 0]], dtype=np.float32))
    np.testing.assert_allclose(model.cluster_centers_[labels[0]], [0, 0.5])
    np.testing.assert_allclose(dist, [0.5], rtol=1e-6)
    np.testing.assert_allclose(confidence, [1 - 0.5 / 14.5], rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_centroids_predict_to_themselves(metric: str) -> None:
    x, _ = _blobs(seed=1)
    model = FaissKMeans(5, metric, seed=0).fit(x)
    labels, dist, confidence = model.predict(model.cluster_centers_)
    np.testing.assert_array_equal(labels, np.arange(5))
    np.testing.assert_allclose(dist, 0.0, atol=1e-3)
    np.testing.assert_allclose(confidence, 1.0, atol=1e-3)


def test_batch_assignment_equals_full_assignment_5() -> None:
    x, _ = _blobs(seed=2)
    before = x.copy()
    model = FaissKMeans(7, "cosine", seed=0).fit(x[:800])
    full = model.predict(x)
    batched = model.predict(x, batch_size=37)
    for a, b in zip(full, batched, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, before)


def test_spherical_defaults() -> None:
    x, _ = _blobs(seed=3)
    cosine = FaissKMeans(5, "cosine", seed=0).fit(x)
    assert cosine.spherical_
    np.testing.assert_allclose(np.linalg.norm(cosine.cluster_centers_, axis=1), 1.0, atol=1e-5)
    assert FaissKMeans(5, "l2", seed=0).fit(_unit(x)).spherical_
    assert not FaissKMeans(5, "l2", seed=0).fit(x).spherical_
    assert not FaissKMeans(5, "cosine", seed=0, spherical=False).fit(x).spherical_
    with pytest.raises(ConfigError, match="unit-norm"):
        FaissKMeans(5, "l2", spherical=True).fit(x)


def test_warm_start_beats_cold_start_on_first_iteration() -> None:
    x, _ = _blobs(n=3000, centers=20, seed=4)
    cold = FaissKMeans(20, "l2", niter=10, seed=0).fit(x)
    warm = FaissKMeans(20, "l2", niter=10, seed=1).fit(x, init_centroids=cold.cluster_centers_)
    assert warm.warm_started_ and not cold.warm_started_
    # objective_ is FAISS's sum of squared distances per iteration (non-increasing).
    assert warm.objective_[0] < cold.objective_[0]
    assert all(
        b <= a * (1 + 1e-6) for a, b in zip(cold.objective_, cold.objective_[1:], strict=False)
    )
    assert warm.inertia_ <= cold.inertia_ * (1 + 1e-6)


def test_more_clusters_lower_inertia() -> None:
    x, _ = _blobs(seed=5)
    inertias = [FaissKMeans(k, "l2", nredo=2, seed=0).fit(x).inertia_ for k in (2, 5, 10)]
    assert inertias[0] > inertias[1] > inertias[2]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda x: FaissKMeans(1), "'k'"),
        (lambda x: FaissKMeans(3, "manhattan"), "'metric'"),
        (lambda x: FaissKMeans(3, niter=0), "'niter'"),
        (lambda x: FaissKMeans(50).fit(x[:10]), "should be >= k=50"),
        (lambda x: FaissKMeans(3).fit(x, init_centroids=x[:2]), "init_centroids"),
        (lambda x: FaissKMeans(3).fit(np.where(x > 5, np.nan, x)), "NaN"),
    ],
)
def test_kmeans_bad_parameters_raise_config_error(build, match: str) -> None:
    x, _ = _blobs(n=100)
    with pytest.raises(ConfigError, match=match):
        build(x)


# --- automatic k ---------------------------------------------------------------------------


def test_choose_k_finds_planted_k_5() -> None:
    x, _ = _blobs(n=1200, centers=6, dim=8, seed=6, std=0.8)
    result = choose_k(x, [2, 3, 4, 6, 8, 10], "l2", niter=20, seed=0)
    assert result.chosen == 6
    record = result.as_dict()
    assert record["rule"] == K_RULE and record["chosen"] == 6
    assert [c["k"] for c in record["candidates"]] == [2, 3, 4, 6, 8, 10]
    assert set(record["candidates"][0]) == {
        "k",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "rank_sum",
    }
    best = next(c for c in result.candidates if c.k == 6)
    assert best.silhouette == max(c.silhouette for c in result.candidates)


def test_choose_k_extends_the_grid_past_its_largest_candidate() -> None:
    # Eight blobs, candidates 2-4: the best of those is 4, the edge, which says nothing about
    # where the scores peak. The grid grows by 1.5x and 2x of the edge until the choice is
    # inside it.
    x, _ = _blobs(n=1200, centers=8, dim=8, seed=6, std=0.5)
    result = choose_k(x, [2, 3, 4], "l2", niter=20, seed=0)
    assert result.chosen == 8 and result.extended == [6, 8, 12, 16] and not result.at_edge
    assert [c.k for c in result.candidates] == [2, 3, 4, 6, 8, 12, 16]
    assert result.warnings == [
        (
            "auto k: the best of k_candidates (2, 3, 4) was at the edge of that grid, so k=6, "
            "8, 12, 16 were tried too and k=8 chosen; the internal scores favour it over the "
            "candidates given, but set k by hand if you need coarser or finer clusters."
        )
    ]
    record = result.as_dict()
    assert record["tie_break"] == "ties go to the higher silhouette, then to the smaller k"
    assert record["tie_break"] in record["rule"] and record["extended"] == [6, 8, 12, 16]


def test_choose_k_extends_below_its_smallest_candidate() -> None:
    x, _ = _blobs(n=900, centers=3, dim=8, seed=7, std=0.5)
    result = choose_k(x, [6, 8, 10], "l2", niter=20, seed=0)
    assert result.chosen == 3 and result.extended == [3, 4, 2] and not result.at_edge


def test_choose_k_warns_when_the_choice_stays_at_the_edge() -> None:
    x, _ = _blobs(n=1200, centers=30, dim=8, seed=6, std=0.5)
    result = choose_k(x, [2, 3], "l2", niter=20, seed=0)
    assert result.at_edge and result.chosen == max(c.k for c in result.candidates) == 12
    assert result.warnings == [
        (
            "auto k: k=12 is the largest k tried (2, 3, 4, 6, 9, 12), so the scores may keep "
            "improving past it and the choice is arbitrary; try k_candidates with larger values, "
            "or set k by hand."
        )
    ]


def test_choose_k_needs_a_usable_candidate() -> None:
    x, _ = _blobs(n=20)
    with pytest.raises(ConfigError, match="k_candidates"):
        choose_k(x, [50, 100])


# --- alignment across runs -----------------------------------------------------------------


def test_alignment_by_hand_permutation() -> None:
    previous = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    current = previous[[3, 1, 0, 2]] + 0.5
    alignment = align_clusters(current, previous, "l2")
    assert alignment.new_ids.tolist() == [3, 1, 0, 2]
    assert alignment.mapping == {0: 0, 1: 1, 2: 2, 3: 3}
    assert alignment.appeared == alignment.vanished == alignment.moved == []
    np.testing.assert_array_equal(alignment.reorder(current), previous + 0.5)
    assert alignment.relabel(np.array([0, -1, 2])).tolist() == [3, -1, 0]


def test_alignment_reports_appeared_vanished_and_moved() -> None:
    previous = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    # Cluster 3 is gone, a new one far away took its place; cluster 1 moved 3 units, more
    # than MOVE_SHARE (0.5) of its territory (half of 10), but still inside it.
    current = np.array([[0, 0], [13, 0], [0, 10], [50, 50]], dtype=np.float32)
    alignment = align_clusters(current, previous, "l2")
    assert alignment.mapping == {0: 0, 1: 1, 2: 2, 3: None}
    assert alignment.appeared == [3] and alignment.vanished == [3]
    assert [m["id"] for m in alignment.moved] == [1]
    assert alignment.moved[0]["shift"] == pytest.approx(3.0)
    assert alignment.moved[0]["territory"] == pytest.approx(5.0)


def test_alignment_when_k_shrinks_keeps_ids_below_k() -> None:
    previous = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    current = previous[[0, 2, 3]]
    alignment = align_clusters(current, previous, "l2")
    # Id 3 does not exist with k=3: that match takes the free id 1 and says where it came from.
    assert alignment.new_ids.tolist() == [0, 2, 1]
    assert alignment.mapping == {0: 0, 1: 3, 2: 2}
    assert alignment.vanished == [1] and alignment.appeared == []


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_alignment_keeps_ids_across_seeds_and_drift_5(metric: str) -> None:
    x, _ = _blobs(n=2000, centers=8, seed=7)
    first = FaissKMeans(8, metric, nredo=3, seed=0).fit(x)
    labels_first = first.predict(x)[0]
    rng = np.random.default_rng(0)
    drifted = x + rng.normal(0, 0.3, x.shape).astype(np.float32)
    for data, seed in ((x, 11), (drifted, 12)):
        second = FaissKMeans(8, metric, nredo=3, seed=seed).fit(data)
        alignment = align_clusters(second.cluster_centers_, first.cluster_centers_, metric)
        aligned = alignment.relabel(second.predict(x)[0])
        assert (aligned == labels_first).mean() > 0.999
        assert alignment.appeared == alignment.vanished == alignment.moved == []


# --- supplied vectors ----------------------------------------------------------------------


def test_validate_vectors_splits_good_rows_from_rejects_with_reasons() -> None:
    column = pa.chunked_array(
        [
            pa.array([[1.0, 2.0, 3.0], None, [1.0, 2.0]], pa.list_(pa.float64())),
            pa.array(
                [[1.0, None, 3.0], [np.nan, 0, 0], [1e39, 0, 0], [4.0, 5.0, 6.0]],
                pa.list_(pa.float64()),
            ),
        ]
    )
    check = validate_vectors(column)
    assert check.dim == 3
    assert check.good_rows.tolist() == [0, 6]
    np.testing.assert_array_equal(check.vectors, [[1, 2, 3], [4, 5, 6]])
    assert check.vectors.dtype == np.float32
    assert check.reject_rows.tolist() == [1, 2, 3, 4, 5]
    assert check.reject_reasons == [
        "null_vector",
        "wrong_length",
        "null_value",
        "non_finite",
        "non_finite",
    ]


def test_validate_vectors_dim_and_types() -> None:
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.int32)), 2)
    assert validate_vectors(fixed).vectors.shape == (3, 2)
    ragged = pa.array([[1, 2], [1, 2, 3], [1, 2, 3]])
    assert validate_vectors(ragged).good_rows.tolist() == [1, 2]
    assert validate_vectors(ragged, dim=2).good_rows.tolist() == [0]
    with pytest.raises(ConfigError, match="list of integers or floats"):
        validate_vectors(pa.array([["a", "b"]]))
    with pytest.raises(ConfigError, match="'dim'"):
        validate_vectors(ragged, dim=0)


# --- the clustering step on a tiny embeddings dataset --------------------------------------


def _write_dataset(
    root: Path,
    x: NDArray[np.float32],
    truth: NDArray[np.int64],
    parts: int = 3,
    featured: NDArray[np.bool_] | None = None,
) -> tuple[Path, Path]:
    corpus, embeddings = root / "corpus", root / "embeddings"
    corpus.mkdir(parents=True)
    embeddings.mkdir(parents=True)
    ids = [f"d{i:05d}" for i in range(len(x))]
    featured = np.ones(len(x), np.bool_) if featured is None else featured
    for i, rows in enumerate(np.array_split(np.arange(len(x)), parts)):
        n = len(rows)
        write_part(
            pa.table(
                {
                    S.DOC_ID: [ids[r] for r in rows],
                    S.TEXT: [f"text {r}" for r in rows],
                    S.SOURCE: ["mem"] * n,
                    S.ROW: rows.astype(np.int64),
                    S.TRUNCATED: [False] * n,
                    S.LABEL: [str(truth[r]) for r in rows],
                    "lang": ["en" if r % 2 else "fr" for r in rows],
                }
            ),
            corpus,
            i,
        )
        dim = x.shape[1]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), dim)
        write_part(
            pa.Table.from_arrays(
                [
                    pa.array([ids[r] for r in rows]),
                    vectors,
                    pa.array(np.zeros(n, np.float32)),
                    pa.array(featured[rows]),
                ],
                schema=S.embeddings_schema(dim),
            ),
            embeddings,
            i,
        )
    return corpus, embeddings


def _run(
    root: Path,
    corpus: Path,
    embeddings: Path,
    name: str,
    config: ClusterConfig,
    seed: int = 0,
    previous: Path | None = None,
):
    result = cluster_embeddings(
        embeddings,
        corpus,
        root / name / "assignments",
        root / name / "models",
        config,
        f"run-{name}",
        seed,
        previous_models=previous,
    )
    table = pq.read_table(root / name / "assignments")
    return result, table


def test_cluster_embeddings_end_to_end_5(tmp_path: Path) -> None:
    x, truth = _blobs(n=600, centers=4, dim=8, seed=8)
    corpus, embeddings = _write_dataset(tmp_path, x, truth)
    config = ClusterConfig(k=4, nredo=3, assign_batch_size=50, max_points_per_centroid=100)
    result, table = _run(tmp_path, corpus, embeddings, "a", config)

    assert result.n_docs == table.num_rows == 600
    assert result.k == result.n_clusters == 4 and result.spherical is True
    assert result.n_train == 400 and result.alignment == {} and not result.warm_start
    assert table.schema.names == [*S.ASSIGNMENTS_SCHEMA.names, S.LABEL, "lang"]
    assert table.column(S.DOC_ID).to_pylist() == [f"d{i:05d}" for i in range(600)]
    assert set(table.column(S.RUN_ID).to_pylist()) == {"run-a"}
    assert table.column("lang").to_pylist()[:2] == ["fr", "en"]
    labels = table.column(S.CLUSTER_ID).to_numpy()
    assert adjusted_rand_score(truth, labels) == 1.0
    confidence = table.column(S.CONFIDENCE).to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all()
    # Streamed, part-by-part assignment equals one search of every document at once.
    centroids = np.load(tmp_path / "a" / "models" / CENTROIDS_FILE)
    cosine = _unit(x) @ _unit(centroids).T
    np.testing.assert_array_equal(labels, cosine.argmax(axis=1))
    np.testing.assert_allclose(table.column(S.DISTANCE).to_numpy(), 1 - cosine.max(1), atol=1e-5)


def test_cluster_embeddings_keeps_ids_night_after_night_5(tmp_path: Path) -> None:
    x, truth = _blobs(n=600, centers=4, dim=8, seed=9)
    corpus, embeddings = _write_dataset(tmp_path, x, truth)
    config = ClusterConfig(k=4, nredo=3, metric="l2")
    _, first = _run(tmp_path, corpus, embeddings, "night1", config, seed=0)
    result, second = _run(
        tmp_path,
        corpus,
        embeddings,
        "night2",
        config,
        seed=5,
        previous=tmp_path / "night1" / "models",
    )
    np.testing.assert_array_equal(
        first.column(S.CLUSTER_ID).to_numpy(), second.column(S.CLUSTER_ID).to_numpy()
    )
    record = json.loads((tmp_path / "night2" / "models" / ALIGNMENT_FILE).read_text())
    assert record == result.alignment
    assert record["status"] == "aligned" and record["warm_start"] is True
    assert record["mapping"] == {str(i): i for i in range(4)}
    assert record["appeared"] == record["vanished"] == record["moved"] == []

    # A changed k still aligns (no warm start); a missing previous run is recorded, not fatal.
    other = ClusterConfig(k=5, metric="l2")
    result, _ = _run(
        tmp_path, corpus, embeddings, "night3", other, previous=tmp_path / "night2" / "models"
    )
    assert not result.warm_start and result.alignment["status"] == "aligned"
    assert len(result.alignment["appeared"]) == 1
    result, _ = _run(tmp_path, corpus, embeddings, "night4", config, previous=tmp_path / "none")
    assert (
        result.alignment["status"] == "skipped" and "does not exist" in result.alignment["reason"]
    )


def test_cluster_embeddings_auto_k_records_selection(tmp_path: Path) -> None:
    x, truth = _blobs(n=600, centers=4, dim=8, seed=10, std=0.8)
    corpus, embeddings = _write_dataset(tmp_path, x, truth)
    config = ClusterConfig(k="auto", k_candidates=[2, 4, 6], selection_sample=300, metric="l2")
    result, _ = _run(tmp_path, corpus, embeddings, "auto", config)
    assert result.k == 4
    assert result.selection["chosen"] == 4
    assert [c["k"] for c in result.selection["candidates"]] == [2, 4, 6]


def test_cluster_embeddings_dbscan_auto_eps(tmp_path: Path) -> None:
    x, truth = _blobs(n=600, centers=3, dim=4, seed=11, std=0.5)
    x = np.vstack([x, np.full((2, 4), 100.0, np.float32)])  # two far outliers
    truth = np.concatenate([truth, [-1, -1]])
    corpus, embeddings = _write_dataset(tmp_path, x, truth)
    config = ClusterConfig(
        algorithm="dbscan", eps="auto", min_samples=5, metric="l2", dbscan_flat_max=100
    )
    result, table = _run(tmp_path, corpus, embeddings, "db", config)
    labels = table.column(S.CLUSTER_ID).to_numpy()
    assert labels[-2:].tolist() == [-1, -1] and result.n_noise >= 2
    clustered = labels[:-2] >= 0
    assert adjusted_rand_score(truth[:-2][clustered], labels[:-2][clustered]) == 1.0
    assert result.exact and result.n_clusters == 3 and result.k is None
    assert result.selection["eps"] == result.eps and "rule" in result.selection


def test_cluster_embeddings_rejects_misaligned_parts(tmp_path: Path) -> None:
    x, truth = _blobs(n=60, centers=2, dim=4)
    corpus, embeddings = _write_dataset(tmp_path, x, truth, parts=2)
    table = pq.read_table(corpus / "part-00000.parquet")
    write_part(table.take(np.arange(table.num_rows)[::-1]), corpus, 0)
    with pytest.raises(SchemaError, match="doc_id"):
        _run(tmp_path, corpus, embeddings, "bad", ClusterConfig(k=2))


# --- warnings about results ------------------------------------------------------------------


def test_kmeans_warns_when_one_cluster_holds_most_documents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    big, _ = _blobs(n=900, centers=1, dim=4, seed=12)
    small, _ = _blobs(n=50, centers=1, dim=4, seed=13)
    x = np.vstack([big, small + 100.0, small - 100.0])
    corpus, embeddings = _write_dataset(tmp_path, x, np.zeros(len(x), np.int64))
    with caplog.at_level(logging.WARNING, logger="udl"):
        result, table = _run(tmp_path, corpus, embeddings, "km", ClusterConfig(k=3, metric="l2"))
    sizes = np.bincount(table.column(S.CLUSTER_ID).to_numpy())
    assert sorted(sizes) == [50, 50, 900]
    big_id = int(sizes.argmax())
    assert result.warnings == [
        (
            f"k-means: cluster {big_id} holds 90.0% of the 1,000 documents clustered (k=3), so "
            "the clusters say little about the corpus; try a larger k or k='auto', or another "
            "encoder."
        )
    ]
    assert result.warnings[0] in caplog.messages


def test_dbscan_warns_about_a_single_cluster_and_about_mostly_noise(tmp_path: Path) -> None:
    x, truth = _blobs(n=600, centers=3, dim=4, seed=11, std=0.5)
    corpus, embeddings = _write_dataset(tmp_path, x, truth)
    wide = ClusterConfig(algorithm="dbscan", eps=100.0, metric="l2")
    result, _ = _run(tmp_path, corpus, embeddings, "wide", wide)
    assert result.n_clusters == 1 and result.warnings == [
        (
            "DBSCAN: a single cluster holds 100.0% of the 600 documents clustered (eps=100, "
            "min_samples=5), so the clusters say little about the corpus; try a smaller eps, a "
            "larger min_samples, or k-means."
        )
    ]
    narrow = ClusterConfig(algorithm="dbscan", eps=0.05, metric="l2")
    result, _ = _run(tmp_path, corpus, embeddings, "narrow", narrow)
    assert result.n_noise / 600 > 0.5
    assert result.warnings[-1].startswith(f"DBSCAN: {result.n_noise / 600:.1%} of the 600 ")
    assert result.warnings[-1].endswith("try a larger eps or a smaller min_samples.")
    fine = ClusterConfig(algorithm="dbscan", eps=2.0, metric="l2")
    assert _run(tmp_path, corpus, embeddings, "fine", fine)[0].warnings == []


def test_dbscan_over_its_memory_limit_stops_before_loading(tmp_path: Path) -> None:
    x, truth = _blobs(n=600, centers=3, dim=4, seed=11, std=0.5)
    corpus, embeddings = _write_dataset(tmp_path, x, truth)
    # 600 vectors of 4 float32, twice: 19,200 bytes.
    tight = ClusterConfig(algorithm="dbscan", eps=2.0, metric="l2", dbscan_max_gib=19_000 / 2**30)
    with pytest.raises(ConfigError, match=r"all 600 vectors of width 4 .*dbscan_max_gib"):
        _run(tmp_path, corpus, embeddings, "tight", tight)
    assert not (tmp_path / "tight" / "assignments").exists()
    enough = tight.model_copy(update={"dbscan_max_gib": 19_200 / 2**30})
    assert _run(tmp_path, corpus, embeddings, "enough", enough)[0].n_clusters == 3


def test_kmeans_warns_about_empty_clusters_when_k_exceeds_distinct_points(tmp_path: Path) -> None:
    x = np.repeat(np.eye(2, 3, dtype=np.float32), 10, axis=0)  # 20 documents, 2 distinct
    corpus, embeddings = _write_dataset(tmp_path, x, np.repeat([0, 1], 10), parts=2)
    result, _ = _run(tmp_path, corpus, embeddings, "few", ClusterConfig(k=5))
    assert result.warnings == [
        (
            "k-means: 3 of the 5 clusters are empty (k=5): the embeddings have fewer distinct "
            "points than clusters; lower k."
        )
    ]


def test_tiny_corpus_errors_name_the_setting_to_change(tmp_path: Path) -> None:
    x, truth = _blobs(n=4, centers=2, dim=4)
    corpus, embeddings = _write_dataset(tmp_path, x, truth, parts=1)
    with pytest.raises(ConfigError, match="the selection sample has 4 documents"):
        _run(tmp_path, corpus, embeddings, "k", ClusterConfig(k="auto"))
    with pytest.raises(ConfigError, match=r"min_samples=5 documents with features.*there are 4"):
        _run(tmp_path, corpus, embeddings, "eps", ClusterConfig(algorithm="dbscan"))


# --- the clusterer protocol ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["kmeans", "dbscan"])
def test_every_clusterer_refuses_to_assign_before_fit(algorithm: str) -> None:
    clusterer = make_clusterer(ClusterConfig(algorithm=algorithm), seed=0)
    with pytest.raises(NotFittedError):
        clusterer.assign(np.zeros((2, 4), np.float32), np.ones(2, np.bool_), 0)
    with pytest.raises(NotFittedError):
        clusterer.parameters()
    with pytest.raises(NotFittedError):
        clusterer.setting()


@pytest.mark.parametrize(
    "config",
    [ClusterConfig(k=4, nredo=3), ClusterConfig(algorithm="dbscan", eps=0.05, min_samples=5)],
    ids=["kmeans", "dbscan"],
)
def test_clusterers_label_the_corpus_part_by_part_as_one_whole(
    tmp_path: Path, config: ClusterConfig
) -> None:
    # Documents without features sit between the others in every part: the part-by-part
    # labels (DBSCAN's read at each part's offset) must equal the labels of the whole.
    x, truth = _blobs(n=600, centers=4, dim=8, seed=8, std=0.5)
    x = _unit(x)
    featured = np.arange(len(x)) % 7 != 3
    _, folder = _write_dataset(tmp_path, x, truth, parts=3, featured=featured)
    clusterer = make_clusterer(config, seed=0).fit(Embeddings(folder), previous=None)
    assert clusterer.n_train_ == featured.sum()
    assert set(clusterer.parameters()) == {"k", "eps", "min_samples", "spherical"}
    labels, offset = [], 0
    for part in np.array_split(np.arange(len(x)), 3):
        mask = featured[part]
        part_labels, dist, conf = clusterer.assign(x[part], mask, offset)
        offset += int(mask.sum())
        assert part_labels.dtype == np.int32 and dist.dtype == conf.dtype == np.float32
        labels.append(part_labels[mask])
    whole = np.concatenate(labels)
    assert adjusted_rand_score(truth[featured], whole) == 1.0
    assert len(clusterer.centroids_) == 4


@pytest.mark.gpu
def test_nearest_centroids_on_the_gpu_match_the_cpu() -> None:
    """With faiss-gpu, assignment searches on the GPU: the same nearest centroids (where the
    two nearest are not within rounding of each other) and distances to float32 rounding."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.fail("FAISS GPU is not installed or sees no GPU: pip install faiss-gpu")
    x, _ = _blobs(n=20_000, centers=50, dim=64, seed=3)
    centroids = x[:50].astype(np.float32)
    gpu = NearestCentroids(centroids, "cosine").predict(x)
    cpu = NearestCentroids(centroids, "cosine", gpu=False).predict(x)
    clear = cpu[2] > 1e-4
    assert np.array_equal(gpu[0][clear], cpu[0][clear])
    np.testing.assert_allclose(gpu[1], cpu[1], atol=1e-5)


def test_nearest_centroids_do_not_depend_on_the_thread_count() -> None:
    """FAISS's BLAS rounds 512-d scores differently on 4 threads than on 1; assignment must
    give the same bytes in the flow process and on a one-thread Dask worker."""
    import faiss

    x = np.random.default_rng(0).standard_normal((20_000, 512)).astype(np.float32)
    nearest = NearestCentroids(x[:100], "cosine", gpu=False)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(4)
        many = nearest.predict(x)
        faiss.omp_set_num_threads(1)
        one = nearest.predict(x)
    finally:
        faiss.omp_set_num_threads(before)
    for a, b in zip(many, one, strict=True):
        assert a.tobytes() == b.tobytes()
