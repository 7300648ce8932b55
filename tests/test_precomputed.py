"""Precomputed vectors (`input.embedding_column`): ingest checks them, the embed step copies
them, and the clustering step recovers the structure planted in them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray
from sklearn.metrics import adjusted_rand_score

from udl import corpus as corpus_module
from udl import schema as S
from udl.cluster.assign import cluster_embeddings
from udl.config import ClusterConfig, EncoderConfig, InputConfig, PipelineConfig
from udl.corpus import ingest
from udl.datasets import read_embeddings
from udl.embed import copy_embeddings, embed_corpus
from udl.errors import ConfigError, InputDataError
from udl.storage import dataset_parts

DIM = 16
PER_CLUSTER = 80
# Well-separated clusters: orthogonal centres, small noise. Each cluster has its own words,
# so the TF-IDF the report needs has something to find.
CENTRES = np.eye(DIM, dtype=np.float32)[[0, 5, 10]] * 3.0
WORDS = [
    ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum", "melon", "berry"],
    ["river", "ocean", "lake", "stream", "bay", "harbor", "coast", "delta", "marsh", "pond"],
    ["violin", "piano", "guitar", "flute", "cello", "drum", "harp", "organ", "trumpet", "oboe"],
]
NAN, INF = float("nan"), float("inf")
# Bad rows: (file, 1-based row in that file, vector, expected reason). The first row of the
# first file is not valid (NaN, and of length 15), so the dimension comes from the next row.
BAD = [
    ("a", 1, [NAN] + [0.0] * 14, "wrong_length"),
    ("a", 3, None, "null_vector"),
    ("a", 60, [0.0] * (DIM - 1) + [INF], "non_finite"),
    ("a", 90, [1.0] * (DIM + 1), "wrong_length"),
    ("b", 2, [1.0] * 7 + [None] + [1.0] * 8, "null_value"),
    ("b", 40, [0.0] * (DIM - 1) + [1e39], "non_finite"),  # finite in float64, not in float32
]


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _planted() -> dict[str, list[dict]]:
    """Two files of records: 3 planted clusters, one outlier (last good row), the BAD rows."""
    rng = np.random.default_rng(0)
    truth = rng.permutation(np.repeat(np.arange(3), PER_CLUSTER))
    vectors = CENTRES[truth] + rng.normal(0, 0.1, (len(truth), DIM)).astype(np.float32)
    good = [
        {
            "label": str(c),
            "text": " ".join(rng.choice(WORDS[c], 4, replace=False)),
            "vec": v.tolist(),
        }
        for c, v in zip(truth, vectors, strict=True)
    ]
    outlier = np.zeros(DIM, np.float32)
    outlier[15] = 3.0
    good.append({"label": "outlier", "text": "lonely outlier", "vec": outlier.tolist()})
    files: dict[str, list[dict]] = {"a": [], "b": []}
    for name, rows in (("a", good[:130]), ("b", good[130:])):
        bad = {row: vec for file, row, vec, _ in BAD if file == name}
        pending = iter(rows)
        while len(files[name]) < len(rows) + len(bad):
            number = len(files[name]) + 1
            if number in bad:
                record = {"label": "bad", "text": f"bad row {number}", "vec": bad[number]}
            else:
                record = next(pending)
            files[name].append({"id": f"{name}{number}", **record})
    return files


PLANTED = _planted()
GOOD = [r for name in "ab" for r in PLANTED[name] if r["label"] != "bad"]


def _write(folder: Path, fmt: str, files: dict[str, list[dict]] = PLANTED) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        if fmt == "parquet":
            table = pa.Table.from_pylist(
                records,
                schema=pa.schema(
                    [
                        ("id", pa.string()),
                        ("label", pa.string()),
                        ("text", pa.string()),
                        ("vec", pa.list_(pa.float64())),
                    ]
                ),
            )
            pq.write_table(table, folder / f"{name}.parquet")
        else:  # JSON Lines: NaN and Infinity are written as the literals Python reads back
            lines = "".join(json.dumps(r) + "\n" for r in records)
            (folder / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    return folder


def _read(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder))


def _config(folder: Path, **changes: object) -> InputConfig:
    return InputConfig(
        path=str(folder),
        id_column="id",
        label_column="label",
        embedding_column="vec",
        partition_rows=100,
        **changes,
    )


@pytest.fixture(params=["one chunk", "chunk per file"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both files in one ingest task, or one task each: the dimension must not depend on it."""
    if request.param == "chunk per file":
        monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1)
    return request.param


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted Parquet corpus ingested once: a folder with corpus/ and rejects/."""
    root = tmp_path_factory.mktemp("ingested")
    ingest(_config(_write(root / "input", "parquet")), root / "corpus", root / "rejects")
    return root


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_bad_vectors_are_rejected_with_reasons_and_counts_conserve(
    tmp_path: Path, fmt: str, chunking: str
) -> None:
    result = ingest(
        _config(_write(tmp_path / "input", fmt)), tmp_path / "corpus", tmp_path / "rejects"
    )

    rejects = _read(tmp_path / "rejects")
    found = [(Path(r[S.SOURCE]).stem, r[S.ROW], r[S.REASON]) for r in rejects.to_pylist()]
    assert sorted(found) == sorted((f, row, reason) for f, row, _, reason in BAD)
    by_row = {(Path(r[S.SOURCE]).stem, r[S.ROW]): r for r in rejects.to_pylist()}
    assert by_row["a", 90][S.DETAIL] == f"{DIM + 1} values, expected {DIM}"
    assert by_row["a", 90][S.DOC_ID] == "a90"
    assert json.loads(by_row["a", 60][S.RAW])[-1] == math.inf  # the offending vector
    assert by_row["a", 3][S.RAW] is None

    assert result.embedding_dim == DIM
    for counts in result.per_source.values():
        assert counts.read == counts.ingested + counts.rejected
    assert result.rows_read == sum(len(r) for r in PLANTED.values())
    assert result.rows_ingested == len(GOOD) and result.rows_rejected == len(BAD)
    assert result.rejected_by_reason == {
        "non_finite": 2,
        "null_value": 1,
        "null_vector": 1,
        "wrong_length": 2,
    }

    corpus = _read(tmp_path / "corpus")
    assert corpus.schema.field(S.EMBEDDING).type == pa.list_(pa.float32(), DIM)
    assert corpus[S.DOC_ID].to_pylist() == [r["id"] for r in GOOD]
    vectors = np.array(corpus[S.EMBEDDING].to_pylist(), np.float32)
    np.testing.assert_array_equal(vectors, np.array([r["vec"] for r in GOOD], np.float32))


def test_explicit_dimension_rejects_every_other_length(tmp_path: Path) -> None:
    folder = _write(tmp_path / "input", "parquet")
    result = ingest(
        _config(folder, embedding_dim=DIM + 1), tmp_path / "corpus", tmp_path / "rejects"
    )
    assert result.embedding_dim == DIM + 1
    assert _read(tmp_path / "corpus")[S.DOC_ID].to_pylist() == ["a90"]
    # Length is checked before values, so only the null vector keeps another reason.
    assert result.rejected_by_reason == {"null_vector": 1, "wrong_length": result.rows_read - 2}


def test_a_row_with_a_bad_vector_does_not_claim_its_id(tmp_path: Path) -> None:
    records = [
        {"id": "x", "text": "first", "vec": [1.0, NAN]},
        {"id": "x", "text": "second", "vec": [1.0, 2.0]},
    ]
    folder = _write(tmp_path / "input", "jsonl", {"c": records})
    config = InputConfig(path=str(folder), id_column="id", embedding_column="vec")
    ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert _read(tmp_path / "corpus")[S.TEXT].to_pylist() == ["second"]
    assert _read(tmp_path / "rejects")[S.REASON].to_pylist() == ["non_finite"]


def test_fixed_size_and_all_null_parquet_columns_are_read(tmp_path: Path) -> None:
    fixed = pa.array([[1, 2, 3, 4], None, [5, 6, 7, 8]], pa.list_(pa.float32(), 4))
    pq.write_table(pa.table({"text": ["a", "b", "c"], "vec": fixed}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["d"], "vec": pa.nulls(1)}), tmp_path / "b.parquet")
    result = ingest(
        InputConfig(path=str(tmp_path / "*.parquet"), embedding_column="vec"),
        tmp_path / "out" / "corpus",
        tmp_path / "out" / "rejects",
    )
    assert (result.embedding_dim, result.rows_ingested) == (4, 2)
    assert result.rejected_by_reason == {"null_vector": 2}
    corpus = _read(tmp_path / "out" / "corpus")
    assert corpus[S.EMBEDDING].to_pylist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_jsonl_value_that_is_not_an_array_of_numbers_is_rejected(tmp_path: Path) -> None:
    records = [
        {"text": "good", "vec": [1, 2]},
        {"text": "a string", "vec": "[1, 2]"},
        {"text": "a boolean inside", "vec": [1, True]},
        {"text": "no vector key"},
    ]
    folder = _write(tmp_path / "input", "jsonl", {"c": records})
    result = ingest(
        InputConfig(path=str(folder), embedding_column="vec"),
        tmp_path / "corpus",
        tmp_path / "rejects",
    )
    assert result.rejected_by_reason == {"invalid_vector": 2, "null_vector": 1}
    detail = _read(tmp_path / "rejects")[S.DETAIL][0].as_py()
    assert detail == 'expected an array of numbers, got "[1, 2]"'


def test_copy_embeddings_writes_the_supplied_vectors_in_corpus_order(
    ingested: Path, tmp_path: Path
) -> None:
    corpus = ingested / "corpus"
    result = copy_embeddings(corpus, tmp_path / "embeddings", normalize=True)
    parts = dataset_parts(tmp_path / "embeddings")
    assert len(parts) == len(dataset_parts(corpus)) == 3  # part i holds corpus part i
    assert pq.read_schema(parts[0]) == S.embeddings_schema(DIM)
    doc_ids, vectors, anomaly = read_embeddings(tmp_path / "embeddings")
    supplied = np.array([r["vec"] for r in GOOD], np.float32)
    assert doc_ids == [r["id"] for r in GOOD]
    np.testing.assert_allclose(vectors, _unit(supplied), rtol=1e-6, atol=1e-7)
    assert (result.n_docs, result.dim, result.n_train, result.n_parameters) == (
        len(GOOD),
        DIM,
        0,
        0,
    )

    # anomaly = 1 - cosine to the mean direction of the unit vectors, computed here at once.
    mean = _unit(supplied).mean(axis=0)
    expected = 1 - _unit(supplied) @ (mean / np.linalg.norm(mean))
    np.testing.assert_allclose(anomaly, expected, atol=1e-5)
    assert anomaly.dtype == np.float32 and np.ptp(anomaly) > 0.5
    assert GOOD[int(np.argmax(anomaly))]["label"] == "outlier"

    copy_embeddings(corpus, tmp_path / "raw", normalize=False)
    np.testing.assert_array_equal(read_embeddings(tmp_path / "raw")[1], supplied)
    np.testing.assert_array_equal(read_embeddings(tmp_path / "raw")[2], anomaly)


def test_embed_corpus_copies_supplied_vectors_without_training(
    ingested: Path, tmp_path: Path
) -> None:
    config = PipelineConfig()
    result = embed_corpus(
        ingested / "corpus",
        tmp_path / "no-features",  # never read: nothing is trained
        tmp_path / "embeddings",
        tmp_path / "models",
        EncoderConfig(normalize=True),
        config.preprocess,
        seed=0,
    )
    assert result.n_docs == len(GOOD) and result.epochs_run == 0
    assert not (tmp_path / "models").exists()
    copy_embeddings(ingested / "corpus", tmp_path / "copied", normalize=True)
    for a, b in zip(
        dataset_parts(tmp_path / "embeddings"), dataset_parts(tmp_path / "copied"), strict=True
    ):
        assert a.read_bytes() == b.read_bytes()


def test_clustering_the_supplied_vectors_recovers_the_planted_clusters(
    ingested: Path, tmp_path: Path
) -> None:
    copy_embeddings(ingested / "corpus", tmp_path / "embeddings", normalize=True)
    result = cluster_embeddings(
        tmp_path / "embeddings",
        ingested / "corpus",
        tmp_path / "assignments",
        tmp_path / "models",
        ClusterConfig(k=3, nredo=3),
        "run",
        seed=0,
    )
    assert result.n_docs == len(GOOD)
    table = _read(tmp_path / "assignments")
    assert S.EMBEDDING not in table.column_names  # vectors stay in embeddings/, not copied
    planted = np.array([r["label"] != "outlier" for r in GOOD])
    truth = [r["label"] for r in GOOD]
    labels = table[S.CLUSTER_ID].to_numpy()
    assert adjusted_rand_score(np.array(truth)[planted], labels[planted]) == 1.0


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_missing_embedding_column_is_a_clear_error_naming_file_and_column(
    tmp_path: Path, fmt: str
) -> None:
    folder = _write(tmp_path / "input", fmt)
    config = _config(folder).model_copy(update={"embedding_column": "vector"})
    with pytest.raises(InputDataError, match=rf"a\.{fmt}: missing column 'vector'"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert not (tmp_path / "corpus").exists()


def test_unusable_embedding_columns_are_clear_errors(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a"], "vec": ["[1, 2]"]}), tmp_path / "s.parquet")
    config = InputConfig(path=str(tmp_path / "s.parquet"), embedding_column="vec")
    with pytest.raises(InputDataError, match=r"s\.parquet: column 'vec' has type string"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    (tmp_path / "c.csv").write_text("text,vec\na,1\n", encoding="utf-8")
    config = InputConfig(path=str(tmp_path / "c.csv"), embedding_column="vec")
    with pytest.raises(InputDataError, match=r"c\.csv: input.embedding_column='vec' needs Parquet"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    pq.write_table(
        pa.table({"text": ["a", "b"], "vec": pa.array([None, [NAN]], pa.list_(pa.float64()))}),
        tmp_path / "n.parquet",
    )
    config = InputConfig(path=str(tmp_path / "n.parquet"), embedding_column="vec")
    with pytest.raises(InputDataError, match=r"n\.parquet: column 'vec' holds no valid vector"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")


def test_embedding_column_settings_are_validated() -> None:
    assert InputConfig(embedding_column="").embedding_column is None
    with pytest.raises(ValueError, match="embedding_dim needs embedding_column"):
        InputConfig(embedding_dim=8)
    with pytest.raises(ValueError, match="'text' is also used as the text"):
        InputConfig(embedding_column="text")
    with pytest.raises(
        ConfigError, match=r"dec\.method must be 'none' with input\.embedding_column"
    ):
        PipelineConfig().with_overrides(
            {"input.embedding_column": "vec", "encoder.dec.method": "dec"}
        )


def test_cli_maps_embedding_column_onto_the_input_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["run", "c.parquet", "-o", "out", "--embedding-column", "vec"])
    assert config_from_args(args).input.embedding_column == "vec"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    assert "--embedding-column C" in capsys.readouterr().out


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_clusters_supplied_vectors_end_to_end(tmp_path: Path) -> None:
    from flows.cli import main

    folder = _write(tmp_path / "input", "parquet")
    output = tmp_path / "out"
    argv = ["run", str(folder), "-o", str(output), "--embedding-column", "vec"]
    argv += ["--id-column", "id", "--label-column", "label", "--k", "3", "--run-id", "pc"]
    assert main(argv) == 0
    run = output / "runs" / "pc"
    embed = json.loads((run / "steps" / "embed.json").read_text())
    assert embed["space"] == "column:vec" and embed["epochs_run"] == 0
    assert _read(run / "rejects").num_rows == len(BAD)
    table = _read(run / "assignments")
    planted = np.array([label != "outlier" for label in table[S.LABEL].to_pylist()])
    truth = np.array(table[S.LABEL].to_pylist())[planted]
    assert adjusted_rand_score(truth, table[S.CLUSTER_ID].to_numpy()[planted]) == 1.0
    assert (run / "report" / "index.html").exists()
