"""Background part I/O: reads ahead come back in order, and a failed read or write surfaces at
the caller instead of leaving a dataset with a missing part."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udl.storage import (
    BackgroundWriter,
    PartRows,
    atomic_dir,
    contiguous_runs,
    dataset_parts,
    read_ahead,
    write_part,
)


def test_read_ahead_yields_every_item_in_order_reading_on_another_thread() -> None:
    readers: set[str] = set()

    def read(item: int) -> int:
        readers.add(threading.current_thread().name)
        return item * 10

    assert list(read_ahead(read, [3, 1, 2])) == [30, 10, 20]
    assert list(read_ahead(read, [])) == []
    assert threading.current_thread().name not in readers


def test_read_ahead_raises_the_failed_read_at_its_item() -> None:
    def read(item: int) -> int:
        if item == 2:
            raise OSError(f"part {item} unreadable")
        return item

    values = read_ahead(read, [0, 1, 2, 3])
    assert [next(values), next(values)] == [0, 1]
    with pytest.raises(OSError, match="part 2 unreadable"):
        next(values)


@pytest.mark.parametrize("threads", [1, 2])
def test_background_writer_writes_every_part(tmp_path: Path, threads: int) -> None:
    with BackgroundWriter(threads) as writer:
        for index in range(3):
            writer.write(pa.table({"x": [index] * (index + 1)}), tmp_path, index)
    parts = dataset_parts(tmp_path)
    assert [pq.read_table(p).column("x").to_pylist() for p in parts] == [[0], [1, 1], [2, 2, 2]]


def test_background_writer_surfaces_a_failed_write(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(OSError), BackgroundWriter() as writer:
        writer.write(pa.table({"x": [1]}), missing, 0)
    with BackgroundWriter() as writer:
        writer.write(pa.table({"x": [1]}), missing, 0)
        with pytest.raises(OSError):
            writer.write(pa.table({"x": [2]}), tmp_path, 1)
    # With two threads the failed write is still pending at the second; the block's end waits.
    with pytest.raises(OSError), BackgroundWriter(2) as writer:
        writer.write(pa.table({"x": [1]}), missing, 0)
        writer.write(pa.table({"x": [2]}), tmp_path, 1)


def test_float_vectors_are_stored_plain_and_every_other_column_zstd(tmp_path: Path) -> None:
    table = pa.table(
        {
            "doc_id": ["a", "b"],
            "indices": pa.array([[1, 2], [3]], pa.list_(pa.int32())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array([0.5] * 8, pa.float32()), 4),
            "label": ["x", "y"],
        }
    )
    row_group = pq.ParquetFile(write_part(table, tmp_path, 0)).metadata.row_group(0)
    codecs = {
        row_group.column(i).path_in_schema: row_group.column(i).compression
        for i in range(row_group.num_columns)
    }
    assert codecs == {
        "doc_id": "ZSTD",
        "indices.list.element": "ZSTD",
        "embedding.list.element": "UNCOMPRESSED",
        "label": "ZSTD",
    }
    assert pq.read_table(tmp_path / "part-00000.parquet").equals(table)


def test_part_rows_slices_across_parts_and_takes_in_any_order(tmp_path: Path) -> None:
    write_part(pa.table({"x": [0, 1, 2]}), tmp_path, 0)
    write_part(pa.table({"x": [3, 4]}), tmp_path, 1)
    rows = PartRows(tmp_path)
    assert pa.concat_tables(rows.slices(1, 4))["x"].to_pylist() == [1, 2, 3, 4]
    assert rows.take(np.array([4, 0, 1, 3]))["x"].to_pylist() == [4, 0, 1, 3]
    assert contiguous_runs(np.array([5, 6, 7, 2, 3, 9])) == [(0, 3), (3, 2), (5, 1)]


def test_a_part_whose_writer_died_leaves_no_temporary_file_in_the_dataset(
    tmp_path: Path,
) -> None:
    """A killed writer's half-written temporary part (a lost Dask worker's) is dropped when the
    dataset is committed; the part rewritten under its own name stays."""
    table = pa.table({"doc_id": ["a", "b"]})
    with atomic_dir(tmp_path / "data") as out:
        (out / ".part-00000.parquet.tmp-0123456789ab").write_bytes(b"PAR1 half")
        write_part(table, out, 0)
        assert {p.name for p in out.iterdir()} == {
            ".part-00000.parquet.tmp-0123456789ab",
            "part-00000.parquet",
        }
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["part-00000.parquet"]
    assert pq.read_table(tmp_path / "data").equals(table)
