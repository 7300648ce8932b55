"""Ingestion: every reader and compression, a hostile corpus, reruns, fsspec URLs (issue 3)."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard

from udl import corpus as corpus_module
from udl import schema as S
from udl.config import InputConfig
from udl.corpus import ingest
from udl.errors import InputDataError
from udl.storage import dataset_parts

FORTUNES = Path(__file__).resolve().parent / "data" / "fortunes_sample.parquet"
COMPRESS = {
    "": lambda b: b,
    ".gz": lambda b: gzip.compress(b, mtime=0),
    ".bz2": bz2.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.fixture(params=["one chunk", "chunk per file"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small files share an ingest task; with a 1-byte budget each file is its own task, and
    repeated ids across files are found by the cross-chunk check instead."""
    if request.param == "chunk per file":
        monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1)
    return request.param


@pytest.fixture(scope="module")
def fortunes() -> pa.Table:
    """150 real fortunes: multi-line texts with tabs, quotes and commas stress every format."""
    table = pq.read_table(FORTUNES)
    return table.take(list(range(0, table.num_rows, table.num_rows // 150))[:150])


def _read(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder))


def _write_format(table: pa.Table, folder: Path, fmt: str, suffix: str) -> Path:
    """Write `table` (doc_id, text, label) in `fmt`; returns the path to ingest."""
    if fmt == "text":
        for row in table.to_pylist():
            path = folder / "docs" / row["label"] / f"{row['doc_id']}.txt{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(COMPRESS[suffix](row["text"].encode()))
        return folder / "docs"
    buffer = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, buffer)
    elif fmt in ("csv", "tsv"):
        options = pacsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ",")
        pacsv.write_csv(table, buffer, options)
    else:
        lines = "".join(json.dumps(r) + "\n" for r in table.to_pylist())
        buffer.write(lines.encode())
    path = folder / f"corpus.{fmt}{suffix}"
    path.write_bytes(COMPRESS[suffix](buffer.getvalue().to_pybytes()))
    return path


@pytest.mark.parametrize("suffix", list(COMPRESS))
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "text"])
def test_every_reader_and_compression_round_trips_3(
    fortunes: pa.Table, tmp_path: Path, fmt: str, suffix: str
) -> None:
    path = _write_format(fortunes, tmp_path, fmt, suffix)
    config = InputConfig(path=str(path), id_column="doc_id", label_column="label")
    result = ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert (result.rows_read, result.rows_ingested, result.rows_rejected) == (150, 150, 0)
    corpus = _read(tmp_path / "corpus").sort_by(S.ROW if fmt != "text" else S.SOURCE)
    expected = fortunes
    if fmt == "text":  # one file one doc: the id is the relative path, the label its folder
        names = [f"{r['label']}/{r['doc_id']}.txt{suffix}" for r in fortunes.to_pylist()]
        expected = pa.table({"doc_id": names, "text": fortunes["text"], "label": fortunes["label"]})
        expected = expected.sort_by("doc_id")
    assert corpus[S.DOC_ID].to_pylist() == expected["doc_id"].to_pylist()
    assert corpus[S.TEXT].to_pylist() == expected["text"].to_pylist()
    assert corpus[S.LABEL].to_pylist() == expected["label"].to_pylist()
    assert _read(tmp_path / "rejects").num_rows == 0


HOSTILE_CSV = (
    b"id,text,label,lang\n"
    b"a1,A fine first document,x,en\n"  # 1
    b"a2,too,many,fields,here\n"  # 2 malformed
    b"a3,\xff\xfe not utf-8 \xff,x,en\n"  # 3 invalid_utf8
    b"a4,,x,en\n"  # 4 empty_text
    b'a5,"  \t ",x,en\n'  # 5 whitespace only
    b'a6,"A quoted, multi-line\ndocument",y,fr\n'  # 6 good (spans two lines)
    b"a1,Same id as row one,y,en\n"  # 7 duplicate_id
    b",Text without an id,y,en\n"  # 8 missing_id
    b"a9,short\n"  # 9 malformed
    b"a10,LONGDOC,y,en\n"  # 10 truncated
    b"a11,The last good row,x,de\n"  # 11
)
HOSTILE_JSONL = (
    b'{"id": "j1", "text": "json one", "label": "x", "lang": "en"}\n'  # line 1
    b'{"id": "j2", "text": "broken json", \n'  # 2 malformed_json
    b"\n"  # 3 blank: not a record
    b'["an", "array"]\n'  # 4 not an object
    b'{"id": "j5", "text": "bad \xc3\x28 byte", "label": "x", "lang": "en"}\n'  # 5 invalid_utf8
    b'{"id": "a1", "text": "duplicate across files", "label": "x", "lang": "en"}\n'  # 6
    b'{"id": "j7", "label": "x", "lang": "en"}\n'  # 7 no text key: empty_text
    b'{"id": 8, "text": "numeric id", "label": "y", "lang": null}\n'  # 8 good, id "8"
)


def _hostile(tmp_path: Path) -> Path:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "a.csv").write_bytes(HOSTILE_CSV.replace(b"LONGDOC", b"word " * 1000))
    (folder / "b.jsonl").write_bytes(HOSTILE_JSONL)
    return folder


def test_hostile_corpus_gives_exact_rejects_and_conserved_counts_3(
    tmp_path: Path, chunking: str
) -> None:
    config = InputConfig(
        path=str(_hostile(tmp_path)),
        id_column="id",
        label_column="label",
        metadata_columns=["lang"],
        max_chars=200,
    )
    result = ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    rejects = _read(tmp_path / "rejects")
    found = [(Path(r[S.SOURCE]).name, r[S.ROW], r[S.REASON]) for r in rejects.to_pylist()]
    assert sorted(found) == [
        ("a.csv", 2, "malformed_row"),
        ("a.csv", 3, "invalid_utf8"),
        ("a.csv", 4, "empty_text"),
        ("a.csv", 5, "empty_text"),
        ("a.csv", 7, "duplicate_id"),
        ("a.csv", 8, "missing_id"),
        ("a.csv", 9, "malformed_row"),
        ("b.jsonl", 2, "malformed_json"),
        ("b.jsonl", 4, "malformed_json"),
        ("b.jsonl", 5, "invalid_utf8"),
        ("b.jsonl", 6, "duplicate_id"),
        ("b.jsonl", 7, "empty_text"),
    ]
    raws = {(Path(r[S.SOURCE]).name, r[S.ROW]): r[S.RAW] for r in rejects.to_pylist()}
    assert raws["a.csv", 2] == "a2,too,many,fields,here"
    assert "\\xff\\xfe not utf-8" in raws["a.csv", 3]
    assert rejects.filter(pa.compute.equal(rejects[S.ROW], 2))[S.DETAIL][0].as_py() == (
        "expected 4 fields, got 5"
    )

    corpus = _read(tmp_path / "corpus")
    assert corpus[S.DOC_ID].to_pylist() == ["a1", "a6", "a10", "a11", "j1", "8"]
    assert corpus[S.ROW].to_pylist() == [1, 6, 10, 11, 1, 8]
    assert corpus["lang"].to_pylist() == ["en", "fr", "en", "de", "en", None]
    assert corpus[S.TEXT][1].as_py() == "A quoted, multi-line\ndocument"
    assert corpus[S.TRUNCATED].to_pylist() == [False, False, True, False, False, False]
    assert len(corpus[S.TEXT][2].as_py()) == 200 and result.truncated == 1

    counts = {Path(k).name: v for k, v in result.per_source.items()}
    assert (counts["a.csv"].read, counts["a.csv"].ingested, counts["a.csv"].rejected) == (11, 4, 7)
    assert (counts["b.jsonl"].read, counts["b.jsonl"].ingested, counts["b.jsonl"].rejected) == (
        7,
        2,
        5,
    )
    assert result.rows_read == result.rows_ingested + result.rows_rejected == 18
    assert result.rejected_by_reason == {
        "duplicate_id": 2,
        "empty_text": 3,
        "invalid_utf8": 2,
        "malformed_json": 2,
        "malformed_row": 2,
        "missing_id": 1,
    }


def test_duplicate_id_policy_error_names_file_row_and_id_3(tmp_path: Path, chunking: str) -> None:
    folder = _hostile(tmp_path)
    (folder / "a.csv").write_bytes(b"id,text\na1,first\na2,second\n")
    config = InputConfig(path=str(folder), id_column="id", duplicate_ids="error")
    with pytest.raises(InputDataError, match=r"b\.jsonl:6: duplicate doc_id 'a1'.*'reject'"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    (folder / "b.jsonl").unlink()
    (folder / "c.csv").write_bytes(b"id,text\nc1,one\nc1,again\n")
    with pytest.raises(InputDataError, match=r"c\.csv:2: duplicate doc_id 'c1'"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_missing_column_is_a_clear_error_naming_file_and_column_3(
    fortunes: pa.Table, tmp_path: Path, fmt: str
) -> None:
    path = _write_format(fortunes, tmp_path, fmt, "")
    config = InputConfig(path=str(path), id_column="doc_id", metadata_columns=["author"])
    with pytest.raises(InputDataError, match=rf"corpus\.{fmt}: missing column 'author'"):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert not (tmp_path / "corpus").exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"corpus.{fmt}"]  # no temp folder left


def test_rerun_gives_identical_derived_ids_and_byte_identical_parquet_3(
    fortunes: pa.Table, tmp_path: Path
) -> None:
    path = _write_format(fortunes, tmp_path, "csv", ".gz")
    config = InputConfig(path=str(path), label_column="label", partition_rows=100)
    runs = []
    for name in ("first", "second"):
        ingest(config, tmp_path / name / "corpus", tmp_path / name / "rejects")
        runs.append(
            {
                p.relative_to(tmp_path / name): p.read_bytes()
                for p in (tmp_path / name).rglob("*.parquet")
            }
        )
    assert runs[0] == runs[1]
    assert len([p for p in runs[0] if p.parts[0] == "corpus"]) == 2  # 100 + 50 rows
    ids = _read(tmp_path / "first" / "corpus")[S.DOC_ID].to_pylist()
    assert len(set(ids)) == 150 and all(len(i) == 20 for i in ids)


def test_failed_ingest_keeps_the_previous_corpus_3(fortunes: pa.Table, tmp_path: Path) -> None:
    good = _write_format(fortunes, tmp_path, "parquet", "")
    ingest(InputConfig(path=str(good)), tmp_path / "corpus", tmp_path / "rejects")
    before = {p.name: p.read_bytes() for p in (tmp_path / "corpus").iterdir()}
    bad = InputConfig(path=str(good), id_column="doc_id", metadata_columns=["nope"])
    with pytest.raises(InputDataError):
        ingest(bad, tmp_path / "corpus", tmp_path / "rejects")
    assert {p.name: p.read_bytes() for p in (tmp_path / "corpus").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "corpus.parquet", "rejects"]


def test_memory_fsspec_glob_and_parquet_dataset_3(fortunes: pa.Table, tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    for i, start in enumerate((0, 100)):
        with fs.open(f"/udl-test/dataset/part-{i}.parquet", "wb") as handle:
            pq.write_table(fortunes.slice(start, 100), handle)
    with fs.open("/udl-test/dataset/notes.md", "wb") as handle:
        handle.write(b"not selected by the glob")
    config = InputConfig(path="memory://udl-test/dataset/*.parquet", id_column="doc_id")
    try:
        result = ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    finally:
        fs.rm("/udl-test", recursive=True)
    assert sorted(result.per_source) == [
        "memory:///udl-test/dataset/part-0.parquet",
        "memory:///udl-test/dataset/part-1.parquet",
    ]
    corpus = _read(tmp_path / "corpus")
    assert corpus[S.DOC_ID].to_pylist() == fortunes[S.DOC_ID].to_pylist()
    assert corpus[S.SOURCE].unique().to_pylist() == ["part-0.parquet", "part-1.parquet"]
