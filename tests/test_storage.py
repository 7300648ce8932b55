"""Background part I/O: reads ahead come back in order, and a failed read or write surfaces at
the caller instead of leaving a dataset with a missing part."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udl.storage import BackgroundWriter, dataset_parts, read_ahead


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


def test_background_writer_writes_every_part(tmp_path: Path) -> None:
    with BackgroundWriter() as writer:
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
