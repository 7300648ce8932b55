"""Build the bundled demo corpus `data/sample/` from `../shared/data/wordnet_glosses`.

Ten lexicographer classes with clearly different topics, 400 glosses each, drawn with a
fixed seed so the sample is reproducible: ``python scripts/make_sample.py``.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", default="../shared/data/wordnet_glosses/wordnet_glosses.parquet"
    )
    parser.add_argument("--out", default="data/sample/wordnet_sample.parquet")
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


if __name__ == "__main__":
    main()
