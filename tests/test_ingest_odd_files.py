"""Odd files are input errors naming the file, never a codec's or the csv module's bare
exception (which names no file and which the step policy would retry as transient), and
never a silent choice (issue 22, the same class of fault as the empty corpus)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from udl import schema as S
from udl.config import InputConfig
from udl.corpus import ingest
from udl.errors import InputDataError
from udl.storage import dataset_parts

CODECS: dict[str, Callable[[bytes], bytes]] = {
    "gz": lambda b: gzip.compress(b, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


def _body(rows: int = 2000) -> bytes:
    rng = random.Random(0)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(8)) for _ in range(rows)]
    return b"id,text\n" + b"".join(b"%d,%s\n" % (i, w) for i, w in enumerate(words))


# A truncated zstd frame decodes to nothing, without an error (the file then reads as
# empty, which is an input error too, but not this one).
CORRUPT = [(c, k) for c in CODECS for k in ("truncated", "not compressed")]
CORRUPT.remove(("zst", "truncated"))


@pytest.mark.parametrize(("codec", "kind"), CORRUPT)
def test_a_corrupt_compressed_file_is_an_input_error_naming_it(
    tmp_path: Path, codec: str, kind: str
) -> None:
    body = _body()
    data = CODECS[codec](body)[:3000] if kind == "truncated" else body
    for name in (f"c.csv.{codec}", f"c.jsonl.{codec}", f"c.txt.{codec}"):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputDataError, match=rf"{name}: cannot be decompressed as "):
            ingest(InputConfig(path=str(path)), tmp_path / "corpus", tmp_path / "rejects")
        path.unlink()


def test_a_gzipped_parquet_that_is_not_gzip_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet.gz"
    path.write_bytes(b"PAR1 not gzip")
    with pytest.raises(InputDataError, match=r"c\.parquet\.gz: cannot be decompressed as gzip"):
        ingest(InputConfig(path=str(path)), tmp_path / "corpus", tmp_path / "rejects")


def test_a_csv_with_old_mac_line_ends_reads_every_record(tmp_path: Path) -> None:
    """CR alone ends a line for pyarrow; the header used to go through the csv module line by
    line, which raised ``new-line character seen in unquoted field``."""
    path = tmp_path / "c.csv"
    path.write_bytes(b'id,text\r1,one\r2,"two\rlines"\r3,\r')
    result = ingest(
        InputConfig(path=str(path), id_column="id"), tmp_path / "corpus", tmp_path / "rejects"
    )
    assert (result.rows_ingested, result.rows_rejected) == (2, 1)
    (reject,) = pq.read_table(dataset_parts(tmp_path / "rejects")[0]).to_pylist()
    assert (reject[S.ROW], reject[S.LINE], reject[S.REASON]) == (3, 5, "empty_text")


def test_a_column_named_twice_is_an_error_not_a_silent_pick(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,text,text\n1,first,second\n")
    with pytest.raises(InputDataError, match=r"c\.csv: column 'text' appears 2 times"):
        ingest(InputConfig(path=str(path)), tmp_path / "corpus", tmp_path / "rejects")
    table = pa.table([pa.array(["a"]), pa.array(["x"])], names=["text", "text"])
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(InputDataError, match=r"p\.parquet: column 'text' appears 2 times"):
        ingest(
            InputConfig(path=str(tmp_path / "p.parquet")),
            tmp_path / "corpus",
            tmp_path / "rejects",
        )


def test_a_header_with_a_quoted_line_break_lists_the_real_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b'id,"te\nxt"\n1,a\n')
    with pytest.raises(InputDataError, match=r"columns present: \['id', 'te\\nxt'\]"):
        ingest(InputConfig(path=str(path)), tmp_path / "corpus", tmp_path / "rejects")


def test_files_left_out_for_their_format_are_a_warning_not_silence(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"id,text\n1,one\n")
    (folder / "notes.md").write_bytes(b"# not data")
    (folder / "b.xlsx").write_bytes(b"PK")
    (folder / ".hidden.csv").write_bytes(b"id,text\n2,two\n")
    result = ingest(InputConfig(path=str(folder)), tmp_path / "corpus", tmp_path / "rejects")
    assert result.rows_ingested == 1
    (warning,) = result.warnings
    assert warning == (
        f"ingest: skipped 2 file(s) in {folder} with no known format (b.xlsx, notes.md); "
        "rename them (*.csv, *.tsv, *.jsonl, *.parquet, *.txt) or set input.format to read them"
    )


@pytest.mark.parametrize(("bad", "good", "warned"), [(2, 8, True), (1, 199, False), (0, 5, False)])
def test_a_share_of_rejected_rows_is_a_warning_in_the_step_record(
    tmp_path: Path, bad: int, good: int, warned: bool
) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,text\n" + "".join(f"g{i},text\n" for i in range(good)) + "x,\n" * bad)
    result = ingest(
        InputConfig(path=str(path), id_column="id"), tmp_path / "corpus", tmp_path / "rejects"
    )
    expected = (
        f"ingest: rejected {bad} of {bad + good} rows ({bad / (bad + good):.1%}; "
        f"empty_text: {bad}); see {tmp_path / 'rejects'} for each one's row, line and reason"
    )
    assert result.warnings == ([expected] if warned else [])
