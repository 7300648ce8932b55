"""Benchmark of `build_report` (issue 6): time and peak memory at growing corpus sizes.

Synthesises complete run folders (corpus, features, embeddings, assignments, models) in the
real schemas, N documents in parts of `--part-rows`, with topic structure so keywords, labels
and clusters mean something; then runs `build_report` on each in a fresh Python process and
reads that process's peak RSS. The report must scale with its samples, not with N, so the
peak RSS should barely move between sizes.

    .venv/bin/python tests/bench/bench_report.py                 # 100k and 1M documents
    .venv/bin/python tests/bench/bench_report.py --sizes 20000   # a quick look

Prints a table and writes `.bench/report.json`. Synthetic runs are cached under `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from udl import schema as S
from udl.config import PipelineConfig
from udl.datasets import TFIDF_FILE, VOCABULARY_FILE, WIDTH_KEY, RunLayout, tfidf_table
from udl.storage import write_part
from udl.tokens import hash_tokens

REPO = Path(__file__).resolve().parents[2]
DIM = 64
N_CLUSTERS = 50
N_FEATURES = PipelineConfig().preprocess.n_features
N_CLASSES = 20
WORDS_PER_TOPIC = 40
TOPIC_WORDS, COMMON_WORDS = 9, 3  # words drawn per document from its topic / the shared pool
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "ta",
    "vo",
    "shi",
    "pa",
    "de",
    "go",
    "zu",
    "bi",
    "fe",
    "hu",
    "ja",
]


def _vocabulary(rng: np.random.Generator) -> list[str]:
    """Pronounceable made-up words: N_CLUSTERS topics of WORDS_PER_TOPIC, then 200 shared."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < N_CLUSTERS * WORDS_PER_TOPIC + 200:
        word = "".join(rng.choice(SYLLABLES, rng.integers(3, 5)))  # 16^3 + 16^4 possible
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _part(
    index: int, rows: int, start: int, vocab: pa.Array, feature_ids: np.ndarray, seed: int
) -> dict[str, pa.Table]:
    """One aligned part of every dataset, `rows` documents from global row `start`."""
    rng = np.random.default_rng([seed, index])
    cluster = rng.integers(0, N_CLUSTERS, rows)
    topic = (
        rng.integers(0, WORDS_PER_TOPIC, (rows, TOPIC_WORDS)) + cluster[:, None] * WORDS_PER_TOPIC
    )
    common = rng.integers(N_CLUSTERS * WORDS_PER_TOPIC, len(vocab), (rows, COMMON_WORDS))
    words = np.concatenate([topic, common], axis=1)
    # One Arrow kernel joins the words of every document: no Python loop per document.
    text = pc.binary_join_element_wise(
        *(vocab.take(pa.array(words[:, j])) for j in range(words.shape[1])), " "
    )
    doc_id = pc.binary_join_element_wise(
        "doc", pc.cast(pa.array(np.arange(start, start + rows)), pa.string()), "-"
    )
    label = pa.array(
        np.char.add(
            "class-",
            np.where(
                rng.random(rows) < 0.1, rng.integers(0, N_CLASSES, rows), cluster % N_CLASSES
            ).astype(str),
        )
    )
    corpus = pa.Table.from_arrays(
        [
            doc_id,
            text,
            pa.array(np.full(rows, "bench.parquet")),
            pa.array(np.arange(start, start + rows)),
            pa.array(np.zeros(rows, bool)),
            label,
        ],
        schema=pa.schema([*S.CORPUS_FIELDS, pa.field(S.LABEL, pa.string())]),
    )
    values = rng.random(words.size).astype(np.float32)
    features = pa.Table.from_arrays(
        [
            doc_id,
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, words.size + 1, words.shape[1], dtype=np.int32)),
                pa.array(feature_ids[words].ravel().astype(np.int32)),
            ),
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, words.size + 1, words.shape[1], dtype=np.int32)),
                pa.array(values),
            ),
        ],
        schema=S.FEATURES_SCHEMA,
    ).replace_schema_metadata({WIDTH_KEY: str(N_FEATURES).encode()})
    centers = np.random.default_rng(seed).normal(size=(N_CLUSTERS, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[cluster] + rng.normal(scale=0.08, size=(rows, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    embeddings = pa.Table.from_arrays(
        [
            doc_id,
            pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
            pa.array(rng.gamma(2.0, 0.2, rows).astype(np.float32)),
            pa.array(np.ones(rows, bool)),
        ],
        schema=S.embeddings_schema(DIM),
    )
    distance = 1.0 - np.einsum("ij,ij->i", x, centers[cluster])
    assignments = pa.Table.from_arrays(
        [
            doc_id,
            pa.array(cluster.astype(np.int32)),
            pa.array(distance.astype(np.float32)),
            pa.array(np.ones(rows, np.float32)),
            pa.array(np.full(rows, "bench")),
            pa.array(np.full(rows, "clustered")),
            label,
        ],
        schema=S.ASSIGNMENTS_SCHEMA.append(pa.field(S.LABEL, pa.string())),
    )
    return {
        "corpus": corpus,
        "features": features,
        "embeddings": embeddings,
        "assignments": assignments,
    }


def synthesise(layout: RunLayout, n_docs: int, part_rows: int, seed: int = 0) -> None:
    """Write a complete run of `n_docs` documents (skipped when one is already there)."""
    if layout.centroids.exists():
        return
    rng = np.random.default_rng(seed)
    words = _vocabulary(rng)
    feature_ids = hash_tokens(words, N_FEATURES)
    for name in ("corpus", "features", "embeddings", "assignments"):
        (layout.run_dir / name).mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, n_docs, part_rows)):
        tables = _part(
            index, min(part_rows, n_docs - start), start, pa.array(words), feature_ids, seed
        )
        for name, table in tables.items():
            write_part(table, layout.run_dir / name, index)
    layout.models.mkdir(parents=True, exist_ok=True)
    features, first = np.unique(feature_ids, return_index=True)
    pq.write_table(
        pa.table(
            {
                "feature": features.astype(np.int32),
                "token": pa.array([words[i] for i in first]),
                "df": np.ones(len(features), np.int64),
            }
        ),
        layout.models / VOCABULARY_FILE,
    )
    idf = np.zeros(N_FEATURES, np.float32)
    idf[features] = 1.0
    pq.write_table(
        tfidf_table(np.ones(N_FEATURES, np.int64), idf, features), layout.models / TFIDF_FILE
    )
    centers = np.random.default_rng(seed).normal(size=(N_CLUSTERS, DIM)).astype(np.float32)
    np.save(layout.centroids, centers / np.linalg.norm(centers, axis=1, keepdims=True))


def measure(run_dir: Path) -> dict[str, float]:
    """Run `build_report` once in this process; seconds and peak RSS (MiB), before and after."""
    from udl.report import build_report

    layout = RunLayout(run_dir.parent.parent, run_dir.name)
    steps = {
        "ingest": {"rows_rejected": 0, "seconds": 0.0},
        "cluster": {
            "algorithm": "kmeans",
            "metric": "cosine",
            "k": N_CLUSTERS,
            "eps": None,
            "min_samples": None,
            "seconds": 0.0,
        },
    }
    # ru_maxrss is the peak so far (KiB on Linux): after imports it is the baseline.
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    result = build_report(layout, PipelineConfig(), steps, previous=None)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "peak_rss_mib": peak,
        "baseline_rss_mib": baseline,
        "n_docs": result.metrics["n_docs"],
        "n_clusters": result.metrics["n_clusters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--part-rows", type=int, default=50_000, help="rows per part (ingest's default)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/udl-bench-report"))
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "report.json")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    rows = []
    for n_docs in args.sizes:
        layout = RunLayout(args.workdir / f"n{n_docs}-p{args.part_rows}", "bench")
        started = time.perf_counter()
        synthesise(layout, n_docs, args.part_rows)
        synth_seconds = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(layout.run_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(
            {
                **json.loads(child.stdout.splitlines()[-1]),
                "synthesis_seconds": synth_seconds,
                "part_rows": args.part_rows,
            }
        )
    print(
        f"{'docs':>10} {'report s':>9} {'µs/doc':>7} {'peak RSS MiB':>13} {'after imports':>14} {'growth':>7}"
    )
    for r in rows:
        print(
            f"{r['n_docs']:>10} {r['seconds']:>9.2f} {1e6 * r['seconds'] / r['n_docs']:>7.1f} {r['peak_rss_mib']:>13.0f} {r['baseline_rss_mib']:>14.0f} {r['peak_rss_mib'] - r['baseline_rss_mib']:>7.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "build_report", "runs": rows}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
