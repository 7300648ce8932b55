"""Every reject reason has a specific detail (issue 22: `detail` was empty for 20 of 25
rejects). The reasons are enumerated from the code, so a new reason needs a case here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udl import corpus as corpus_module
from udl import schema as S
from udl.config import InputConfig
from udl.corpus import ingest
from udl.raw import READER_REASONS
from udl.storage import dataset_parts
from udl.validation import REASONS

# What each reason's detail must say, beyond being non-empty.
EXPECTED = {
    "malformed_row": r"^expected 3 fields, got [14]$",
    "malformed_json": r"^(Expecting|a JSON list, not an object)",
    "invalid_utf8": r"^(column '(text|label|id)': 'utf-8' codec can't decode byte 0x[0-9a-f]{2} "
    r"in position \d+|column 'text': lone surrogate|the file: 'utf-8' codec)",
    "invalid_vector": r"^expected an array of numbers, got \"no\"$",
    "empty_text": r"^(column 'text' (is empty|is null or absent|holds only whitespace \(3 "
    r"characters\))|the file is empty)$",
    "missing_id": r"^column 'id' (is empty|is null or absent)$",
    "duplicate_id": r"^doc_id '(a1|j1)' repeats row 1 \(line (2|1)\)( of a\.csv)?$",
    "null_vector": r"^the vector is null$",
    "wrong_length": r"^2 values, expected 3$",
    "null_value": r"^a value is null$",
    "non_finite": r"^a value is NaN or infinite \(as float32\)$",
}


def _rejects(folder: Path) -> list[dict[str, Any]]:
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder)).to_pylist()


def _text_inputs(folder: Path) -> InputConfig:
    """CSV, JSON Lines and text files holding one of each text-side fault."""
    (folder / "docs").mkdir(parents=True)
    (folder / "a.csv").write_bytes(
        b"id,text,label\n"
        b"a1,fine,x\n"
        b"a2,too,many,fields\n"  # malformed_row
        b"a3\n"  # malformed_row
        b"a4,caf\xe9,x\n"  # invalid_utf8 (text)
        b"a5,fine,lab\xe9l\n"  # invalid_utf8 (label)
        b"\xff,fine,x\n"  # invalid_utf8 (id)
        b"a7,,x\n"  # empty_text
        b'a8," \t ",x\n'  # empty_text: whitespace
        b",no id,x\n"  # missing_id
        b"a1,again,x\n"  # duplicate_id
    )
    (folder / "b.jsonl").write_bytes(
        b'{"id": "j1", "text": "fine", "label": "x"}\n'
        b'{"id": "j2", "text": \n'  # malformed_json
        b"[1]\n"  # malformed_json: not an object
        b'{"id": "j4", "text": "\\ud800", "label": "x"}\n'  # invalid_utf8: lone surrogate
        b'{"id": "j5", "label": "x"}\n'  # empty_text: absent
        b'{"id": null, "text": "no id", "label": "x"}\n'  # missing_id: null
        b'{"id": "j1", "text": "again", "label": "x"}\n'  # duplicate_id
        b'{"id": "a1", "text": "across files", "label": "x"}\n'  # duplicate_id of a.csv
    )
    (folder / "docs" / "empty.txt").write_bytes(b"")
    (folder / "docs" / "bad.txt").write_bytes(b"\xff")
    return InputConfig(path=str(folder), id_column="id", label_column="label")


def _vector_inputs(folder: Path) -> InputConfig:
    """JSON Lines with one of each vector fault (the first valid vector sets the length, 3)."""
    records = [
        {"id": "v1", "text": "fine", "vec": [1, 2, 3]},
        {"id": "v2", "text": "null vector", "vec": None},
        {"id": "v3", "text": "short", "vec": [1, 2]},
        {"id": "v4", "text": "null value", "vec": [1, None, 3]},
        {"id": "v5", "text": "infinite", "vec": [1, 10**400, 3]},
        {"id": "v6", "text": "not a vector", "vec": "no"},
    ]
    folder.mkdir(parents=True)
    (folder / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return InputConfig(path=str(folder), id_column="id", embedding_column="vec")


@pytest.mark.parametrize("chunking", ["one chunk", "chunk per file"])
def test_every_reason_the_code_can_produce_has_a_specific_detail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunking: str
) -> None:
    if chunking == "chunk per file":  # repeated ids across files are then found across chunks
        monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1)
    rejects = []
    for name, config in [
        ("text", _text_inputs(tmp_path / "text")),
        ("vectors", _vector_inputs(tmp_path / "vectors")),
    ]:
        ingest(config, tmp_path / name / "corpus", tmp_path / name / "rejects")
        rejects += _rejects(tmp_path / name / "rejects")
    every_reason = set(REASONS) | set(READER_REASONS)
    assert set(EXPECTED) == every_reason, "a reason without a case here"
    assert {r[S.REASON] for r in rejects} == every_reason
    for reject in rejects:
        assert re.search(EXPECTED[reject[S.REASON]], reject[S.DETAIL] or ""), reject
    assert len(rejects) == 23


def test_duplicate_id_under_error_names_both_places(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b'id,text\nc1,"one\nline two"\nc1,again\n')
    config = InputConfig(path=str(path), id_column="id", duplicate_ids="error")
    with pytest.raises(
        Exception, match=r"c\.csv:2: duplicate doc_id 'c1' \(line 4\) repeats row 1 \(line 2\);"
    ):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
