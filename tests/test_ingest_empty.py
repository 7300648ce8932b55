"""An empty corpus is a clear input error at ingest (issue 22): a header-only CSV used to pass
ingest with 0 rows, then fail in embed with scipy's ``blocks must be 2-D``, retried twice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udl import schema as S
from udl.config import InputConfig
from udl.corpus import ingest
from udl.errors import InputDataError, UdlError
from udl.storage import dataset_parts


def _rows(folder: Path) -> list[dict]:
    return pa.concat_tables(pq.read_table(p) for p in dataset_parts(folder)).to_pylist()


def test_header_only_csv_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    path.write_bytes(b"doc_id,text\r\n")
    config = InputConfig(path=str(path), id_column="doc_id")
    with pytest.raises(InputDataError) as caught:
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert str(caught.value).endswith("corpus.csv: no documents to cluster: 0 rows (header only)")
    assert isinstance(caught.value, UdlError)  # not retried by the step policy
    assert _rows(tmp_path / "rejects") == []  # written all the same


def test_every_row_rejected_names_the_reasons_and_keeps_the_rejects(tmp_path: Path) -> None:
    lines = ["id,text"] + [f"d{i}," for i in range(20)] + [",no id"] * 5
    path = tmp_path / "corpus.csv"
    path.write_text("\n".join(lines) + "\n")
    config = InputConfig(path=str(path), id_column="id")
    message = (
        r"corpus\.csv: no documents to cluster: all 25 rows rejected "
        r"\(empty_text: 20, missing_id: 5\); see .*rejects$"
    )
    with pytest.raises(InputDataError, match=message):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    rejects = _rows(tmp_path / "rejects")
    assert len(rejects) == 25 and all(r[S.DETAIL] for r in rejects)
    assert _rows(tmp_path / "corpus") == []


def test_a_folder_of_empty_files_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\n\n")
    (folder / "b.csv").write_bytes(b"id,text\n")
    with pytest.raises(InputDataError, match=r"in \(2 files\): no documents to cluster: 0 rows"):
        ingest(InputConfig(path=str(folder)), tmp_path / "corpus", tmp_path / "rejects")


def test_one_good_row_anywhere_is_enough(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"id,text\n")
    (folder / "b.jsonl").write_text(json.dumps({"id": "1", "text": "one"}) + "\n")
    result = ingest(InputConfig(path=str(folder)), tmp_path / "corpus", tmp_path / "rejects")
    assert result.rows_ingested == 1


def test_allow_empty_returns_the_empty_result(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    path.write_bytes(b"id,text\n")
    config = InputConfig(path=str(path))
    result = ingest(config, tmp_path / "corpus", tmp_path / "rejects", allow_empty=True)
    assert (result.rows_read, result.rows_ingested) == (0, 0)


@pytest.mark.usefixtures("prefect_harness")
def test_udl_run_on_a_header_only_csv_is_one_error_line_not_a_retried_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    path = tmp_path / "corpus.csv"
    path.write_bytes(b"doc_id,text\n")
    code = main(["run", str(path), "--output", str(tmp_path / "out"), "--id-column", "doc_id"])
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"udl: error: .*corpus\.csv: no documents to cluster: 0 rows", err), err
    assert "blocks must be 2-D" not in err
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert _rows(run / "rejects") == []
