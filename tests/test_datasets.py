"""The run's datasets: the embeddings and features round trips, the one vector decoder, part
alignment errors, and use-before-fit errors of the estimators that read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from udl import schema as S
from udl.cluster.kmeans import FaissKMeans
from udl.datasets import (
    RunLayout,
    aligned_parts,
    decode_vectors,
    embeddings_table,
    features_table,
    read_csr,
    read_embeddings,
    read_feature_width,
    read_has_features,
    read_idf,
    tfidf_table,
)
from udl.errors import NotFittedError, SchemaError
from udl.storage import write_part


def _write(folder: Path, sizes: list[int]) -> None:
    folder.mkdir(parents=True)
    start = 0
    for index, size in enumerate(sizes):
        ids = [f"d{i}" for i in range(start, start + size)]
        write_part(pa.table({S.DOC_ID: pa.array(ids, pa.string())}), folder, index)
        start += size


def test_embeddings_round_trip_keeps_every_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((7, 5)).astype(np.float32)
    scores = rng.random(7).astype(np.float32)
    featured = np.array([True, False, True, True, True, False, True])
    ids = [f"doc-{i}" for i in range(7)]
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_part(embeddings_table(ids, vectors, scores, featured), folder, 0)
    got_ids, got_vectors, got_scores = read_embeddings(folder)
    assert got_ids == ids
    assert got_vectors.dtype == np.float32 and got_vectors.tobytes() == vectors.tobytes()
    assert got_scores.tobytes() == scores.tobytes()
    assert read_has_features(folder / "part-00000.parquet").tolist() == featured.tolist()


def test_features_carry_their_width_through_parquet(tmp_path: Path) -> None:
    """The matrix comes back whole, trailing empty columns included, from the file alone (also
    from a column subset and a row subset), and so does the IDF vector."""
    dense = np.random.default_rng(0).random((6, 50), dtype=np.float32)
    dense[dense < 0.9] = 0
    dense[:, 45:] = 0
    matrix = sp.csr_matrix(dense)
    ids = pa.array([f"d{i}" for i in range(6)], pa.string())
    pq.write_table(features_table(ids, matrix), tmp_path / "part.parquet")
    back = read_csr(pq.read_table(tmp_path / "part.parquet"))
    assert back.shape == (6, 50) and (back != matrix).nnz == 0
    subset = pq.read_table(tmp_path / "part.parquet", columns=[S.INDICES, S.VALUES]).take([4, 1])
    assert (read_csr(subset) != matrix[[4, 1]]).nnz == 0

    idf = np.zeros(50, np.float32)
    idf[[3, 7]] = [1.5, 2.0]
    models = tmp_path / "models"
    models.mkdir()
    pq.write_table(
        tfidf_table(np.arange(50, dtype=np.int64), idf, np.array([3, 7])),
        models / "tfidf.parquet",
    )
    assert read_feature_width(models) == 50
    np.testing.assert_array_equal(read_idf(models), idf)


def test_features_written_before_their_width_was_recorded(tmp_path: Path) -> None:
    """Without a legacy width (the run's config) it is a clear error naming the table."""
    matrix = sp.csr_matrix(np.eye(3, dtype=np.float32))
    table = features_table(pa.array(["a", "b", "c"], pa.string()), matrix)
    old = table.replace_schema_metadata(None)
    with pytest.raises(SchemaError, match=r"features part has no recorded width.*older udl"):
        read_csr(old)
    assert read_csr(old, legacy_width=8).shape == (3, 8)
    assert read_csr(table, legacy_width=8).shape == (3, 3)  # a recorded width wins
    pq.write_table(pa.table({"feature": [0]}), tmp_path / "tfidf.parquet")
    with pytest.raises(SchemaError, match=r"tfidf.parquet has no recorded width"):
        read_feature_width(tmp_path)
    assert read_feature_width(tmp_path, legacy=16) == 16


def test_vectors_decode_across_chunks_and_slices() -> None:
    flat = pa.array(np.arange(12, dtype=np.float32))
    column = pa.FixedSizeListArray.from_arrays(flat, 3)
    chunked = pa.chunked_array([column.slice(0, 1), column.slice(1, 3)])
    expected = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(decode_vectors(chunked), expected)
    np.testing.assert_array_equal(decode_vectors(column.slice(2)), expected[2:])


def test_aligned_parts_zip_datasets_written_from_one_another(tmp_path: Path) -> None:
    _write(tmp_path / "corpus", [3, 2])
    _write(tmp_path / "features", [3, 2])
    pairs = aligned_parts(tmp_path / "corpus", tmp_path / "features")
    assert [(a.name, b.name) for a, b in pairs] == [
        ("part-00000.parquet",) * 2,
        ("part-00001.parquet",) * 2,
    ]


def test_aligned_parts_name_the_dataset_and_part_that_disagree(tmp_path: Path) -> None:
    _write(tmp_path / "corpus", [3, 2])
    _write(tmp_path / "fewer", [5])
    _write(tmp_path / "shifted", [2, 3])
    with pytest.raises(SchemaError, match=r"fewer has 1 parts but .*corpus has 2"):
        aligned_parts(tmp_path / "corpus", tmp_path / "fewer")
    with pytest.raises(SchemaError, match=r"shifted/part-00000.parquet has 2 rows but .* has 3"):
        aligned_parts(tmp_path / "corpus", tmp_path / "shifted")


def test_layout_names_every_file_under_the_run(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "r1")
    files = [
        layout.centroids,
        layout.alignment,
        layout.encoder,
        layout.metrics,
        layout.report_html,
        layout.step_record("embed"),
        layout.manifest,
    ]
    assert all(path.is_relative_to(layout.run_dir) for path in files)
    assert len(set(files)) == len(files)


def test_kmeans_predict_before_fit_is_a_clear_error() -> None:
    with pytest.raises(NotFittedError, match=r"FaissKMeans\.predict called before fit"):
        FaissKMeans(3).predict(np.zeros((2, 4), np.float32))
