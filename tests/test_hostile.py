"""Hostile input (issue 8): every kind of bad row and file through ingest, hostile configs, property
tests of the readers and the row accounting, and security basics. Library level: no Prefect.

The documented outcome of a bad row is a reject with a reason code (README "ingest"; reasons in
`udl.validation.REASONS` and the readers' ``malformed_row`` / ``malformed_json``); of a file that
cannot be read as a corpus, or a bad setting, a `UdlError` naming the file or the setting before
any work. Either way ``rows read = ingested + rejected`` for every source.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.cli import build_parser, config_from_args, main
from udl import schema as S
from udl.cluster.kmeans import FaissKMeans
from udl.config import EncoderConfig, InputConfig, PreprocessConfig, RuntimeConfig, parse_config
from udl.corpus import IngestResult, ingest
from udl.datasets import ENCODER_CONFIG_FILE, ENCODER_WEIGHTS_FILE, RunLayout
from udl.encoders.registry import load_encoder
from udl.errors import ConfigError, InputDataError
from udl.lineage import resolve_warm_start
from udl.parallel import dask_client
from udl.storage import dataset_parts

REPO = Path(__file__).resolve().parents[1]
PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@dataclass
class Ingested:
    """What one ingest wrote: the result, the corpus rows and the reject rows."""

    result: IngestResult
    corpus: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    counts: dict[str, tuple[int, int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {
            Path(url).name: (c.read, c.ingested, c.rejected)
            for url, c in self.result.per_source.items()
        }

    def reasons(self) -> dict[int, str]:
        return {r[S.ROW]: r[S.REASON] for r in self.rejects}

    def texts(self) -> dict[str, str]:
        return {r[S.DOC_ID]: r[S.TEXT] for r in self.corpus}


def _read(folder: Path) -> list[dict[str, Any]]:
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder)).to_pylist()


def _ingest(path: Path, **options: Any) -> Ingested:
    out = Path(tempfile.mkdtemp(dir=path.parent, prefix="out-"))
    # An empty corpus is an error (see test_ingest_empty.py); here every row's fate is checked.
    config = InputConfig(path=str(path), **options)
    result = ingest(config, out / "corpus", out / "rejects", allow_empty=True)
    ingested = Ingested(result, _read(out / "corpus"), _read(out / "rejects"))
    _assert_conserved(ingested)
    return ingested


def _assert_conserved(ingested: Ingested) -> None:
    """rows read = ingested + rejected, per source and overall, and the datasets agree."""
    result = ingested.result
    for url, counts in result.per_source.items():
        assert counts.read == counts.ingested + counts.rejected, url
        assert counts.ingested == sum(url.endswith(f"/{r[S.SOURCE]}") for r in ingested.corpus)
        assert counts.rejected == sum(r[S.SOURCE] == url for r in ingested.rejects)
    assert result.rows_read == result.rows_ingested + result.rows_rejected
    assert result.rows_ingested == len(ingested.corpus)
    assert result.rows_rejected == len(ingested.rejects)
    assert all(r[S.REASON] for r in ingested.rejects)
    for reject in ingested.rejects:  # every reject says what is wrong, and where (issue 22)
        assert reject[S.DETAIL], reject
        assert (reject[S.LINE] is None) == (".parquet" in reject[S.SOURCE]), reject
    ids = [r[S.DOC_ID] for r in ingested.corpus]
    assert len(ids) == len(set(ids)), "a doc_id was ingested twice"


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- bad rows: each rejected with its reason, the rest ingested as written ----------------------


def test_malformed_csv_rows_are_rejected_with_the_reason(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "c.csv",
        b"id,text\n"
        b"1,fine\n"  # 1
        b"2,too,many,fields\n"  # 2 malformed_row
        b"3\n"  # 3 malformed_row (too few)
        b'4,"a ""quoted"" word, and a comma"\n'  # 4 good: RFC 4180 escaping
        b'5,stray " quote\n'  # 5 good: a quote inside an unquoted field is a character
        b"6,last\n",  # 6
    )
    got = _ingest(path, id_column="id")
    assert got.reasons() == {2: "malformed_row", 3: "malformed_row"}
    assert got.texts() == {
        "1": "fine",
        "4": 'a "quoted" word, and a comma',
        "5": 'stray " quote',
        "6": "last",
    }
    assert got.counts == {"c.csv": (6, 4, 2)}
    details = {r[S.ROW]: (r[S.DETAIL], r[S.RAW]) for r in got.rejects}
    assert details[2] == ("expected 2 fields, got 4", "2,too,many,fields")


def test_unterminated_quote_does_not_swallow_the_following_records(tmp_path: Path) -> None:
    """A quote opened and never closed runs to the end of the file: the record is malformed.

    Ingesting it as one document would silently turn every later record into its text.
    """
    path = _write(
        tmp_path, "c.csv", b'id,text\n1,good\n2,"never closed\n3,swallowed\n4,also swallowed\n'
    )
    try:
        got = _ingest(path, id_column="id")
    except InputDataError as exc:  # a clear error naming the file is also acceptable
        assert "c.csv" in str(exc)
        return
    assert "swallowed" not in "".join(got.texts().values()), got.texts()
    assert got.texts()["1"] == "good"
    assert got.reasons().get(2) == "malformed_row"


def test_nul_bytes_are_text_in_csv_and_escaped_json_but_raw_nul_is_malformed_json(
    tmp_path: Path,
) -> None:
    csv_path = _write(tmp_path / "csv", "c.csv", b"id,text\n1,a\x00b\n2,\x00\n")
    got = _ingest(csv_path, id_column="id")
    assert got.texts() == {"1": "a\x00b", "2": "\x00"}  # NUL is a character, not whitespace
    jsonl = _write(
        tmp_path / "jsonl",
        "c.jsonl",
        b'{"id": "1", "text": "a\\u0000b"}\n{"id": "2", "text": "raw\x00nul"}\n',
    )
    got = _ingest(jsonl, id_column="id")
    assert got.texts() == {"1": "a\x00b"}
    assert got.reasons() == {2: "malformed_json"}  # JSON forbids raw control characters
    assert "control character" in got.rejects[0][S.DETAIL]


def test_invalid_and_mixed_encodings_reject_only_the_bad_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "c.csv",
        b"id,text,label\n"
        b"1,caf\xc3\xa9 in UTF-8,x\n"  # good
        b"2,caf\xe9 in latin-1,x\n"  # invalid_utf8: latin-1 bytes in a UTF-8 file
        b"3,\xff\xfe\x00h\x00i,x\n"  # invalid_utf8: a UTF-16 fragment
        b"4,fine,lab\xe9l\n"  # invalid_utf8 in the label column
        b"\xe9,fine,x\n"  # invalid_utf8 in the id column
        b"6,\xed\xa0\x80 encoded surrogate,x\n"  # invalid_utf8: CESU-8 / WTF-8 surrogate
        b"7,\xc0\xaf overlong,x\n",  # invalid_utf8: overlong encoding of '/'
    )
    got = _ingest(path, id_column="id", label_column="label")
    assert got.reasons() == dict.fromkeys([2, 3, 4, 5, 6, 7], "invalid_utf8")
    assert got.texts() == {"1": "café in UTF-8"}
    raw = {r[S.ROW]: r[S.RAW] for r in got.rejects}
    assert raw[2] == "caf\\xe9 in latin-1"  # undecodable bytes shown, not dropped
    jsonl = _write(tmp_path / "j", "c.jsonl", b'{"id": "1", "text": "caf\xe9"}\n')
    got = _ingest(jsonl, id_column="id")
    assert got.reasons() == {1: "invalid_utf8"}


def test_json_escaped_lone_surrogates_are_rejected_not_a_crash(tmp_path: Path) -> None:
    """``"\\ud800"`` is valid JSON syntax but not Unicode text: it cannot be stored as UTF-8.

    Expected: that row rejected (``invalid_utf8``), the others ingested; not an exception that
    aborts the whole ingest (and that Prefect would retry, as it is no `UdlError`).
    """
    path = _write(
        tmp_path,
        "c.jsonl",
        b'{"id": "1", "text": "fine"}\n'
        b'{"id": "2", "text": "lone \\ud800 surrogate"}\n'
        b'{"id": "\\udc80", "text": "surrogate id"}\n'
        b'{"id": "4", "text": "paired \\ud83d\\ude00 is fine"}\n',
    )
    got = _ingest(path, id_column="id")
    assert got.texts() == {"1": "fine", "4": "paired \U0001f600 is fine"}
    assert got.reasons() == {2: "invalid_utf8", 3: "invalid_utf8"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "text"])
def test_a_10_mb_document_is_truncated_and_flagged(tmp_path: Path, fmt: str) -> None:
    # Multi-byte characters: the limit counts characters, and a cut never splits one.
    doc = ("épée " * 2_100_000)[:10_000_000]
    assert len(doc.encode()) > 10 * 2**20
    data = {
        "csv": b'id,text\nbig,"' + doc.encode() + b'"\nsmall,short\n',
        "jsonl": (
            json.dumps({"id": "big", "text": doc}) + '\n{"id": "small", "text": "short"}\n'
        ).encode(),
        "text": doc.encode(),
    }[fmt]
    path = _write(tmp_path / "in", f"c.{'txt' if fmt == 'text' else fmt}", data)
    options = {} if fmt == "text" else {"id_column": "id"}
    got = _ingest(path, max_chars=100_000, **options)
    big = next(r for r in got.corpus if len(r[S.TEXT]) > 100)
    assert big[S.TEXT] == doc[:100_000]
    assert big[S.TRUNCATED] is True
    assert got.result.truncated == 1
    assert all(r[S.TRUNCATED] is False for r in got.corpus if r is not big)
    assert got.result.rows_rejected == 0


# --- empty and header-only files, duplicate and non-string ids, blank texts ----------------------


def test_empty_jsonl_and_header_only_files_ingest_zero_rows(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _write(folder, "a.jsonl", b"")
    _write(folder, "b.jsonl", b"\n\n")
    _write(folder, "c.csv", b"id,text\n")
    _write(folder, "e.tsv", b"id\ttext\r\n")
    empty = pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    pq.write_table(empty, folder / "f.parquet")
    _write(folder, "g.jsonl", b'{"id": "g1", "text": "the only document"}\n')
    got = _ingest(folder, id_column="id")
    assert got.counts == {
        "a.jsonl": (0, 0, 0),
        "b.jsonl": (0, 0, 0),
        "c.csv": (0, 0, 0),
        "e.tsv": (0, 0, 0),
        "f.parquet": (0, 0, 0),
        "g.jsonl": (1, 1, 0),
    }
    assert got.texts() == {"g1": "the only document"}


def test_header_without_a_final_newline_is_a_header_only_file(tmp_path: Path) -> None:
    """``id,text`` with no line break is a complete header (RFC 4180 makes the final line
    break optional): zero rows, as with the line break."""
    got = _ingest(_write(tmp_path, "c.csv", b"id,text"), id_column="id")
    assert got.counts == {"c.csv": (0, 0, 0)}


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv", "empty.parquet", "garbage.parquet"])
def test_empty_or_corrupt_file_is_a_clear_input_error_naming_it(tmp_path: Path, name: str) -> None:
    """A 0-byte CSV has no header (so no text column) and a 0-byte or garbage Parquet file is
    corrupt: an `InputDataError` naming the file, never a bare pyarrow error (which names no
    file and which Prefect would retry, as it is no `UdlError`)."""
    folder = tmp_path / "in"
    _write(folder, "a.csv", b"id,text\na1,fine\n")
    _write(folder, name, b"PAR1 not really" if name.startswith("garbage") else b"")
    with pytest.raises(InputDataError, match=name.replace(".", r"\.")):
        _ingest(folder, id_column="id")
    assert not any((out / "corpus").exists() for out in tmp_path.glob("out-*"))


def test_a_first_source_without_good_rows_does_not_break_the_id_check(tmp_path: Path) -> None:
    """The duplicate-id check must cope with a source (or batch) that keeps no row at all."""
    folder = tmp_path / "in"
    _write(folder, "a.csv", b"id,text\nx, \n")  # its only row is blank: empty_text
    _write(folder, "b.csv", b"id,text\ny,kept\n")
    got = _ingest(folder, id_column="id")
    assert got.counts == {"a.csv": (1, 0, 1), "b.csv": (1, 1, 0)}
    assert got.texts() == {"y": "kept"}


def test_empty_text_file_is_an_empty_text_reject(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    _write(folder, "empty.txt", b"")
    _write(folder, "blank.txt", b" \n\t\r\n")
    _write(folder, "fine.txt", b"a document")
    got = _ingest(folder)
    assert got.texts() == {"fine.txt": "a document"}
    assert sorted((Path(r[S.SOURCE]).name, r[S.REASON]) for r in got.rejects) == [
        ("blank.txt", "empty_text"),
        ("empty.txt", "empty_text"),
    ]


def test_duplicate_ids_keep_the_first_row_within_and_across_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _write(folder, "a.csv", b"id,text\nx,first\ny,other\nx,repeat in the file\n")
    _write(folder, "b.jsonl", b'{"id": "x", "text": "repeat in another file"}\n')
    got = _ingest(folder, id_column="id")
    assert got.texts() == {"x": "first", "y": "other"}
    assert sorted((Path(r[S.SOURCE]).name, r[S.ROW], r[S.REASON]) for r in got.rejects) == [
        ("a.csv", 3, "duplicate_id"),
        ("b.jsonl", 1, "duplicate_id"),
    ]
    with pytest.raises(InputDataError, match=r"a\.csv:3: duplicate doc_id 'x'"):
        _ingest(folder, id_column="id", duplicate_ids="error")


def test_non_string_ids_in_json_lines(tmp_path: Path) -> None:
    """Ids are strings: a JSON number or boolean becomes its JSON text, so 1 and "1" are the same
    id; null, a missing key and a blank string are missing ids."""
    path = _write(
        tmp_path,
        "c.jsonl",
        b'{"id": 1, "text": "int"}\n'  # 1 -> "1"
        b'{"id": "1", "text": "string one"}\n'  # 2 duplicate of "1"
        b'{"id": 1.5, "text": "float"}\n'  # 3 -> "1.5"
        b'{"id": 2.0, "text": "integral float"}\n'  # 4 -> "2.0"
        b'{"id": true, "text": "bool"}\n'  # 5 -> "true"
        b'{"id": null, "text": "null id"}\n'  # 6 missing_id
        b'{"text": "no id key"}\n'  # 7 missing_id
        b'{"id": "", "text": "empty id"}\n'  # 8 missing_id
        b'{"id": " \\t", "text": "blank id"}\n'  # 9 missing_id
        b'{"id": -0, "text": "negative zero"}\n',  # 10 -> "0"
    )
    got = _ingest(path, id_column="id")
    assert got.texts() == {
        "1": "int",
        "1.5": "float",
        "2.0": "integral float",
        "true": "bool",
        "0": "negative zero",
    }
    assert got.reasons() == {
        2: "duplicate_id",
        6: "missing_id",
        7: "missing_id",
        8: "missing_id",
        9: "missing_id",
    }


def test_numeric_and_null_ids_in_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {"id": pa.array([1, 2, None, 2], pa.int64()), "text": ["one", "two", "none", "two again"]}
    )
    pq.write_table(table, tmp_path / "c.parquet")
    got = _ingest(tmp_path / "c.parquet", id_column="id")
    assert got.texts() == {"1": "one", "2": "two"}
    assert got.reasons() == {3: "missing_id", 4: "duplicate_id"}


def test_blank_and_non_text_values(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "c.jsonl",
        b'{"id": "1", "text": ""}\n'  # empty_text
        b'{"id": "2", "text": " \\t\\n\\r "}\n'  # empty_text
        b'{"id": "3", "text": "\\u3000\\u00a0\\u2028\\u0085"}\n'  # Unicode spaces: empty_text
        b'{"id": "4", "text": null}\n'  # empty_text
        b'{"id": "5"}\n'  # no text key: empty_text
        b'{"id": "6", "text": 42}\n'  # a number is its JSON text
        b'{"id": "7", "text": ["a", "b"]}\n'  # so is a list
        b'{"id": "8", "text": "\\u200b"}\n',  # zero-width space is not whitespace: kept
    )
    got = _ingest(path, id_column="id")
    assert got.reasons() == dict.fromkeys([1, 2, 3, 4, 5], "empty_text")
    assert got.texts() == {"6": "42", "7": '["a", "b"]', "8": "\u200b"}


def test_every_kind_of_bad_row_together_conserves_counts_per_source(tmp_path: Path) -> None:
    """The cases above in one folder, ingested together (one chunk, shared id set)."""
    folder = tmp_path / "in"
    _write(
        folder,
        "a.csv",
        b'id,text\n1,fine\n2,too,many\n3,caf\xe9\n4,\n5,a\x00b\n1,dup\n,no id\n8,"multi\nline"\n',
    )
    _write(
        folder,
        "b.jsonl",
        b'{"id": "b1", "text": "fine"}\n{"id": 1, "text": "dup of csv 1"}\nnot json\n'
        b'[1, 2]\n{"id": null, "text": "x"}\n{"id": "b6", "text": "   "}\n'
        b'{"id": "b7", "text": "caf\xe9"}\n\n{"id": "b9", "text": "last"}\n',
    )
    _write(folder, "c.csv", b"id,text\n")
    _write(folder, "d.jsonl", b"")
    _write(folder, "docs/e.txt", b"\xff\xfe")
    _write(folder, "docs/f.txt", b"plain text file")
    got = _ingest(folder, id_column="id")
    assert got.counts == {
        "a.csv": (8, 3, 5),
        "b.jsonl": (8, 2, 6),
        "c.csv": (0, 0, 0),
        "d.jsonl": (0, 0, 0),
        "e.txt": (1, 0, 1),
        "f.txt": (1, 1, 0),
    }
    assert got.result.rejected_by_reason == {
        "duplicate_id": 2,
        "empty_text": 2,
        "invalid_utf8": 3,
        "malformed_json": 2,
        "malformed_row": 1,
        "missing_id": 2,
    }


# --- hostile configs: a ConfigError naming the setting, before any work -------------------------

HOSTILE_CONFIGS = [
    ({"cluster": {"eps": 0}}, "'cluster.eps' parameter"),
    ({"cluster": {"eps": -0.5}}, "'cluster.eps' parameter"),
    ({"cluster": {"eps": math.nan}}, "'cluster.eps' parameter"),
    ({"cluster": {"k": 1}}, "'cluster.k' parameter"),
    ({"cluster": {"k": "many"}}, "'cluster.k"),
    ({"cluster": {"k": True}}, "'cluster.k' parameter"),
    ({"cluster": {"k_candidates": [1, 5]}}, "'cluster.k_candidates' parameter"),
    ({"cluster": {"k_candidates": []}}, "'cluster.k_candidates' parameter"),
    ({"cluster": {"min_samples": 0}}, "'cluster.min_samples' parameter"),
    ({"cluster": {"algorithm": "hdbscan"}}, "'cluster.algorithm' parameter"),
    ({"encoder": {"kind": "bert"}}, "'encoder.kind' parameter"),
    ({"encoder": {"epochs": 0}}, "'encoder.epochs' parameter"),
    (
        {"encoder": {"kind": "attention", "attention": {"model_dim": 100, "n_heads": 3}}},
        "model_dim=100 must be a multiple of n_heads=3",
    ),
    (
        {"encoder": {"kind": "pretrained", "warm_start": "previous"}},
        "warm_start must be empty for kind='pretrained'",
    ),
    ({"input": {"max_chars": 0}}, "'input.max_chars' parameter"),
    ({"input": {"partition_rows": 0}}, "'input.partition_rows' parameter"),
    ({"input": {"format": "xlsx"}}, "'input.format' parameter"),
    ({"preprocess": {"max_df": 0}}, "'preprocess.max_df' parameter"),
    ({"runtime": {"seed": -1}}, "'runtime.seed' parameter"),
    ({"runtime": {"dask_workers": 0}}, "'runtime.dask_workers' parameter"),
    ({"runtime": {"run_id": "../x"}}, "'runtime.run_id' parameter"),
    ({"runtime": {"run_id": ".."}}, "'runtime.run_id' parameter"),
    ({"runtime": {"run_id": "/tmp/abs"}}, "'runtime.run_id' parameter"),
    ({"runtime": {"run_id": "a/b"}}, "'runtime.run_id' parameter"),
    ({"runtime": {"run_id": "a\\b"}}, "'runtime.run_id' parameter"),
    ({"runtime": {"run_id": "x\n"}}, "'runtime.run_id' parameter"),
    ({"runtime": {"run_id": "latest"}}, "'latest' is reserved for the newest completed run"),
    (
        {"cluster": {"kk": 3}},
        "'cluster.kk' parameter of PipelineConfig: Extra inputs are not permitted",
    ),
    ({"clustering": {}}, "'clustering' parameter"),
]


@pytest.mark.parametrize(("data", "names"), HOSTILE_CONFIGS, ids=lambda v: str(v)[:40])
def test_hostile_config_is_a_config_error_naming_the_setting(
    data: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(names)):
        parse_config(data)


@pytest.mark.parametrize("inside", ["out", ".", "deeper/out"])
def test_output_inside_the_input_folder_is_a_config_error(tmp_path: Path, inside: str) -> None:
    corpus = tmp_path / "corpus"
    output = (corpus / inside).resolve()
    with pytest.raises(ConfigError, match=r"lies inside input\.path"):
        parse_config({"input": {"path": str(corpus)}, "runtime": {"output_dir": str(output)}})


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--eps", "0", "--algorithm", "dbscan"], "cluster.eps"),
        (["--eps", "nan", "--algorithm", "dbscan"], "cluster.eps"),
        (["--min-samples", "0"], "cluster.min_samples"),
        (["--run-id", "../escape"], "runtime.run_id"),
        (["--encoder", "pretrained", "--warm-start", "previous"], "warm_start"),
    ],
)
def test_cli_rejects_hostile_settings(argv: list[str], setting: str) -> None:
    # Parsed only: were a setting accepted, `main` would start a run.
    args = build_parser().parse_args(["run", "c.csv", "--output", "out", *argv])
    with pytest.raises(ConfigError, match=setting):
        config_from_args(args)


def test_output_inside_input_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "corpus"
    _write(folder, "c.csv", b"text\nhello\n")
    assert main(["run", str(folder), "--output", str(folder / "out")]) == 2
    assert "lies inside input.path" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["c.csv"]


def test_metadata_column_clashing_with_udl_columns_fails_before_reading(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", b"text,doc_id\nhello,1\n")
    with pytest.raises(ConfigError, match=r"metadata_columns \['doc_id'\] clash"):
        ingest(
            InputConfig(path=str(path), metadata_columns=["doc_id"]),
            tmp_path / "corpus",
            tmp_path / "rejects",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]


def test_k_larger_than_the_data_is_a_config_error_with_the_remedy() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"n_docs=10 should be >= k=11; lower k or use k='auto'"):
        FaissKMeans(k=11).fit(x)


# --- property tests: readers and accounting on arbitrary rows ------------------------------------

# Characters that stress CSV and JSON: quotes, separators, line breaks of every kind, NUL and
# other controls, Unicode spaces, a BOM, and surrogate escapes (\udc80-\udcff), which stand for
# single bytes >= 0x80: written with "surrogateescape" they give bytes that may not be UTF-8.
HOSTILE_CHARS = st.sampled_from(
    list(",\"'\\\t\n\r\x00\x0b\x0c\x1c\x1f\x7f\x85\xa0\u2028\u3000\ufeff\u200b ")
    + [chr(c) for c in (0xDC80, 0xDCC3, 0xDCA9, 0xDCFF, 0xDCE9)]
)
CELL_TEXT = st.text(
    alphabet=st.one_of(HOSTILE_CHARS, st.characters(exclude_categories=("Cs",))), max_size=40
)


def _expected(raw: bytes, max_chars: int = 100_000) -> tuple[str, str]:
    """("ingested", text) or ("rejected", reason) for a cell's bytes; no normalisation."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "rejected", "invalid_utf8"
    if not text.strip():
        return "rejected", "empty_text"
    return "ingested", text[:max_chars]


def _csv_cell(raw: bytes) -> bytes:
    return b'"' + raw.replace(b'"', b'""') + b'"'


def _check_rows(got: Ingested, expected: list[tuple[str, str]], first_row: int = 1) -> None:
    texts, reasons = got.texts(), got.reasons()
    assert got.result.rows_read == len(expected)
    for i, (outcome, value) in enumerate(expected):
        doc_id, row = f"r{i}", first_row + i
        if outcome == "ingested":
            assert texts.get(doc_id) == value, (row, value)
            assert row not in reasons
        else:
            assert reasons.get(row) == value, (row, value, texts.get(doc_id))
            assert doc_id not in texts


@PROPERTY
@given(cells=st.lists(CELL_TEXT, min_size=1, max_size=12), crlf=st.booleans())
def test_property_csv_rows_are_ingested_verbatim_or_rejected(cells: list[str], crlf: bool) -> None:
    raws = [cell.encode("utf-8", "surrogateescape") for cell in cells]
    newline = b"\r\n" if crlf else b"\n"
    lines = [b"id,text", *(f"r{i},".encode() + _csv_cell(raw) for i, raw in enumerate(raws))]
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "c.csv", newline.join(lines) + newline)
        got = _ingest(path, id_column="id")
    _check_rows(got, [_expected(raw) for raw in raws])


@PROPERTY
@given(cells=st.lists(CELL_TEXT, min_size=1, max_size=12), ascii_only=st.booleans())
def test_property_jsonl_rows_are_ingested_verbatim_or_rejected(
    cells: list[str], ascii_only: bool
) -> None:
    lines, expected = [], []
    for i, cell in enumerate(cells):
        if ascii_only:  # escaped lone surrogates: test_json_escaped_lone_surrogates_...
            cell = "".join(c for c in cell if not 0xD800 <= ord(c) <= 0xDFFF)
        line = json.dumps({"id": f"r{i}", "text": cell}, ensure_ascii=ascii_only)
        raw = line.encode("utf-8", "surrogateescape")
        lines.append(raw)
        if ascii_only:
            expected.append(_expected(cell.encode()))
        else:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                expected.append(("rejected", "invalid_utf8"))
                continue
            expected.append(_expected(cell.encode()))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "c.jsonl", b"\n".join(lines) + b"\n")
        got = _ingest(path, id_column="id")
    _check_rows(got, expected)


@PROPERTY
@given(
    files=st.lists(
        st.lists(st.tuples(st.sampled_from("abcde"), CELL_TEXT), max_size=8), min_size=1, max_size=4
    )
)
def test_property_accounting_conserves_rows_with_repeated_ids_across_files(
    files: list[list[tuple[str, str]]],
) -> None:
    """Random ids (many repeats) over several files: every row is ingested or rejected exactly
    once, and the first good row of an id wins."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        winners: dict[str, str] = {}
        n_rows = 0
        for f, rows in enumerate(files):
            body = [b"id,text"]
            for doc_id, cell in rows:
                raw = cell.encode("utf-8", "surrogateescape")
                body.append(doc_id.encode() + b"," + _csv_cell(raw))
                outcome, value = _expected(raw)
                if outcome == "ingested":
                    winners.setdefault(doc_id, value)
            n_rows += len(rows)
            _write(folder, f"f{f}.csv", b"\n".join(body) + b"\n")
        got = _ingest(folder, id_column="id")
    assert got.result.rows_read == n_rows
    assert got.texts() == winners


# --- security basics ------------------------------------------------------------------------------


def test_every_torch_load_in_udl_refuses_pickled_objects() -> None:
    calls = []
    for path in sorted((REPO / "udl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                flags = {k.arg: k.value for k in node.keywords}
                safe = isinstance(flags.get("weights_only"), ast.Constant) and (
                    flags["weights_only"].value is True
                )
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "no torch.load found: update this test"
    assert [where for where, safe in calls if not safe] == []


class _Payload:
    """Pickles to a call of os.mkdir: loading it runs code (harmless here, a folder appears)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / ENCODER_CONFIG_FILE).write_text(
        json.dumps(
            {
                "kind": "autoencoder",
                "encoder": EncoderConfig().model_dump(mode="json"),
                "preprocess": PreprocessConfig().model_dump(mode="json"),
                "seed": 0,
            }
        )
    )
    marker = tmp_path / "code-ran"
    torch.save({"weight": _Payload(marker)}, folder / ENCODER_WEIGHTS_FILE)
    # Refused as a configuration problem (so never retried), with torch's reason.
    with pytest.raises(ConfigError, match=r"(?s)cannot be loaded \(UnpicklingError.*weights.only"):
        load_encoder(folder)
    assert not marker.exists()
    # The control: an unrestricted load of the same file does run the payload.
    torch.load(folder / ENCODER_WEIGHTS_FILE, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("contents", [[], [ENCODER_CONFIG_FILE], [ENCODER_WEIGHTS_FILE]])
def test_a_warm_start_folder_without_a_checkpoint_fails_before_any_step(
    tmp_path: Path, contents: list[str]
) -> None:
    folder = tmp_path / "encoder"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("{}")
    config = parse_config({"encoder": {"warm_start": str(folder)}})
    with pytest.raises(ConfigError, match=r"encoder\.warm_start .* is not an encoder checkpoint"):
        resolve_warm_start(config, None)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(run_id=st.text(alphabet=string.printable + "é/\\.\x00", max_size=20))
def test_property_any_accepted_run_id_stays_inside_the_output_root(run_id: str) -> None:
    output = Path("/srv/udl-output")
    try:
        RuntimeConfig(run_id=run_id)
    except ValueError:
        return
    if not run_id:
        return
    run_dir = RunLayout(output, run_id).run_dir
    assert os.path.normpath(run_dir).startswith(str(output / "runs") + os.sep)
    assert os.path.normpath(run_dir) != str(output / "runs")


def test_a_password_in_the_dask_address_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    address = "tcp://udl:hunter2@127.0.0.1:1"  # Dask cannot use it: it fails at once
    with (
        caplog.at_level(logging.DEBUG, logger="udl"),
        pytest.raises(ValueError),
        dask_client(RuntimeConfig(dask_address=address)),
    ):
        pass
    assert "hunter2" not in caplog.text
