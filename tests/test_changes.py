"""`udl.changes` and `udl.incremental` without Prefect: what counts as new, changed, deleted
and reusable, and the merge of reused and computed rows; the `--update` option."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flows.cli import build_parser, config_from_args
from flows.summary import update_line
from udl import schema as S
from udl.changes import content_hashes, find_changes, read_changes, record_hashes
from udl.datasets import RunLayout
from udl.incremental import merge_rows
from udl.storage import link_part, write_part


def _corpus(layout: RunLayout, parts: list[list[tuple[str, str]]]) -> None:
    layout.corpus.mkdir(parents=True)
    for index, rows in enumerate(parts):
        ids, texts = zip(*rows, strict=True) if rows else ((), ())
        table = pa.table(
            {S.DOC_ID: pa.array(ids, pa.string()), S.TEXT: pa.array(texts, pa.string())}
        )
        write_part(table, layout.corpus, index)


def test_hashes_tell_texts_apart_and_agree_across_calls() -> None:
    texts = pa.array(["a", "b", "a", "", "A"])
    hashes = content_hashes(texts)
    assert hashes.shape == (5, 2) and hashes.dtype == np.uint64
    assert (hashes[0] == hashes[2]).all()
    assert len({tuple(h) for h in hashes}) == 4
    np.testing.assert_array_equal(content_hashes(pa.chunked_array([texts])), hashes)


def test_changes_count_by_id_and_reuse_by_text(tmp_path: Path) -> None:
    before, now = RunLayout(tmp_path, "before"), RunLayout(tmp_path, "now")
    _corpus(before, [[("1", "one"), ("2", "two")], [("3", "three"), ("4", "four")]])
    # 1 unchanged; 2 changed (to 4's old text); 3 deleted; 4 unchanged; 5 new (3's old text);
    # 6 new with a text nobody had.
    _corpus(now, [[("4", "four"), ("1", "one")], [("2", "four"), ("5", "three"), ("6", "six")]])
    changes = find_changes(now, before)
    assert changes.record() == {
        "matched_by": "id",
        "new": 2,
        "changed": 1,
        "deleted": 1,
        "unchanged": 2,
        "computed": 1,
        "reused": 4,
    }
    # Rows in the earlier run's corpus order: one=0, two=1, three=2, four=3.
    assert changes.sources.tolist() == [3, 0, 3, 2, -1]
    np.testing.assert_array_equal(read_changes(now), changes.sources)
    assert (now.run_dir / "content.npz").is_file()  # the next run reads them back

    # Without an id column (ids derived from file, row and text) documents match by text.
    by_text = find_changes(now, before, by_id=False)
    assert by_text.record() == {
        "matched_by": "text",
        "new": 1,  # "six"
        "changed": 0,
        "deleted": 1,  # "two"
        "unchanged": 4,
        "computed": 1,
        "reused": 4,
    }
    np.testing.assert_array_equal(by_text.sources, changes.sources)


def test_merge_puts_reused_and_computed_rows_in_corpus_order_under_corpus_ids(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    write_part(pa.table({"doc_id": ["a", "b"], "x": [1, 2]}), old, 0)
    write_part(pa.table({"doc_id": ["c"], "x": [3]}), old, 1)
    # The new corpus: c's text under id "z" (ids derived from shifted rows), two new texts.
    layout = RunLayout(tmp_path, "now")
    _corpus(layout, [[("z", "t3"), ("n1", "t"), ("a", "t1")], [("n2", "t"), ("b", "t2")]])
    computed = pa.table({"doc_id": ["n1", "n2"], "x": [10, 20]})
    sources = np.array([2, -1, 0, -1, 1])
    schema = pq.read_schema(old / "part-00000.parquet")
    merge_rows(layout.corpus, sources, old, computed, tmp_path / "new", schema)
    parts = [pq.read_table(p) for p in sorted((tmp_path / "new").glob("part-*.parquet"))]
    assert [p["x"].to_pylist() for p in parts] == [[3, 10, 1], [20, 2]]
    assert [p["doc_id"].to_pylist() for p in parts] == [["z", "n1", "a"], ["n2", "b"]]
    with pytest.raises(ValueError, match="1 computed rows for 2 documents"):
        merge_rows(layout.corpus, sources, old, computed.slice(0, 1), tmp_path / "x", schema)
    # Rows wanted in an order unrelated to the parts: the same result.
    shuffled = np.array([1, -1, 2, -1, 0])
    merge_rows(layout.corpus, shuffled, old, computed, tmp_path / "mixed", schema)
    mixed = [pq.read_table(p) for p in sorted((tmp_path / "mixed").glob("part-*.parquet"))]
    assert [p["x"].to_pylist() for p in mixed] == [[2, 10, 3], [20, 1]]


def test_an_unchanged_document_reuses_its_own_row_even_when_its_text_repeats(
    tmp_path: Path,
) -> None:
    before, now = RunLayout(tmp_path, "before"), RunLayout(tmp_path, "now")
    rows = [[("a", "t1"), ("b", "t2")], [("c", "t1"), ("d", "t3")]]
    _corpus(before, rows)
    _corpus(now, [*rows, [("n", "t4")]])
    np.testing.assert_array_equal(find_changes(now, before).sources, [0, 1, 2, 3, -1])


def test_link_part_copies_where_the_file_system_cannot_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_part(pa.table({"x": [1, 2]}), tmp_path, 0)
    (tmp_path / "out").mkdir()

    def refuse(*args: object) -> None:
        raise OSError("Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    copied = link_part(source, tmp_path / "out", 3)
    assert copied.name == "part-00003.parquet" and copied.read_bytes() == source.read_bytes()
    assert copied.stat().st_ino != source.stat().st_ino
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-00003.parquet"]


def test_ingest_hashes_are_the_corpus_texts_hashes_in_order(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "now")
    _corpus(layout, [[("a", "t1"), ("b", "t2")], [], [("c", "t1")]])
    record_hashes(layout, "ingest-key")
    with np.load(layout.run_dir / "content.npz") as saved:
        np.testing.assert_array_equal(saved["hashes"], content_hashes(pa.array(["t1", "t2", "t1"])))
        assert str(saved["ingest_key"]) == "ingest-key"


def test_merge_links_a_whole_unchanged_part_and_writes_the_others(tmp_path: Path) -> None:
    """A night that appended a file: the parts of the unchanged files are the previous run's
    files (hard links, the bytes a rewrite would give); a part with one reused row moved, or
    one text under another id, is written."""
    old = tmp_path / "old"
    old.mkdir()
    write_part(pa.table({"doc_id": ["a", "b"], "x": [1, 2]}), old, 0)
    write_part(pa.table({"doc_id": ["c", "d"], "x": [3, 4]}), old, 1)
    write_part(pa.table({"doc_id": ["e", "f"], "x": [5, 6]}), old, 2)
    layout = RunLayout(tmp_path, "now")
    corpus = [[("a", "t1"), ("b", "t2")], [("c", "t3"), ("n", "t")], [("e", "t5"), ("g", "t6")]]
    _corpus(layout, [*corpus, [("h", "t7")]])
    sources = np.array([0, 1, 2, -1, 4, 5, -1])
    computed = pa.table({"doc_id": ["n", "h"], "x": [10, 20]})
    schema = pq.read_schema(old / "part-00000.parquet")
    new = tmp_path / "new"
    assert merge_rows(layout.corpus, sources, old, computed, new, schema) == 1
    parts = sorted(new.glob("part-*.parquet"))
    assert [pq.read_table(p)["x"].to_pylist() for p in parts] == [[1, 2], [3, 10], [5, 6], [20]]
    assert [pq.read_table(p)["doc_id"].to_pylist() for p in parts][2] == ["e", "g"]
    inodes = [p.stat().st_ino for p in parts]
    assert inodes[0] == (old / "part-00000.parquet").stat().st_ino
    assert (old / "part-00002.parquet").stat().st_ino not in inodes  # "f" is now "g"
    rewritten = write_part(pq.read_table(parts[0]), tmp_path, 9)
    assert rewritten.read_bytes() == parts[0].read_bytes()
    # The previous run's part is untouched by anything written into the new dataset.
    assert pq.read_table(old / "part-00000.parquet")["x"].to_pylist() == [1, 2]


def test_serve_refreshes_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args(["serve"])).update.policy == "refresh"
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text(yaml.safe_dump({"update": {"policy": "full"}}))
    args = parser.parse_args(["serve", "--config", str(frozen)])
    assert config_from_args(args).update.policy == "full"
    args = parser.parse_args(["run", "c.csv", "--output", str(tmp_path), "--update", "frozen"])
    assert config_from_args(args).update.policy == "frozen"
    assert config_from_args(parser.parse_args(["run", "c.csv", "-o", "o"])).update.policy == "full"


def test_update_line_says_what_was_embedded_and_reused() -> None:
    changes = {
        "new": 10,
        "changed": 5,
        "deleted": 5,
        "unchanged": 985,
        "computed": 15,
        "reused": 990,
    }
    update = {"asked": "refresh", "policy": "refresh", "reason": None, "clusters": "fitted"}
    assert update_line({**update, "changes": changes}) == (
        "update:      refresh: 15 texts embedded, 990 reused (10 new, 5 changed, 5 deleted); "
        "clusters fitted again"
    )
    full = {"asked": "refresh", "policy": "full", "reason": "there is no previous run"}
    assert update_line(full) == "update:      full (there is no previous run)"
    assert update_line({"asked": "full", "policy": "full", "reason": None}) is None
