"""Build the bundled corpora from `../shared/data`: ``python scripts/make_sample.py``.

- `data/sample/wordnet_sample.parquet`, the demo corpus: ten lexicographer classes with clearly
  different topics, 400 glosses each, drawn with a fixed seed.
- `tests/data/fortunes_sample.parquet`: every 10th fortune (1,500), real multi-line text with
  tabs, quotes and commas for the reader and tokenizer tests, so a clean clone needs no
  `../shared`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = [
    "noun.animal",
    "noun.plant",
    "noun.food",
    "noun.body",
    "noun.location",
    "noun.person",
    "noun.artifact",
    "noun.substance",
    "verb.motion",
    "verb.communication",
]
PER_CLASS = 400
FORTUNE_STRIDE = 10
FORTUNE_ROWS = 1500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", default="../shared/data/wordnet_glosses/wordnet_glosses.parquet"
    )
    parser.add_argument("--out", default="data/sample/wordnet_sample.parquet")
    parser.add_argument("--fortunes", default="../shared/data/fortunes/fortunes.parquet")
    parser.add_argument("--fortunes-out", default="tests/data/fortunes_sample.parquet")
    args = parser.parse_args()
    frame = pq.read_table(args.source).to_pandas()
    frame = frame[frame["label"].isin(CLASSES)]
    sample = (
        frame.groupby("label", group_keys=False)
        .sample(n=PER_CLASS, random_state=0)
        .sort_values("doc_id")
        .reset_index(drop=True)
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(sample, preserve_index=False), args.out, compression="zstd")

    fortunes = pq.read_table(args.fortunes)
    rows = list(range(0, fortunes.num_rows, FORTUNE_STRIDE))[:FORTUNE_ROWS]
    Path(args.fortunes_out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(fortunes.take(rows), args.fortunes_out, compression="zstd")


if __name__ == "__main__":
    main()
