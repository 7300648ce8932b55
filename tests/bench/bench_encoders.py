"""Encoder quality and speed on the labelled corpora (issue 4), through the product's own code.

For each corpus: ingest and hashed TF-IDF (`udl.corpus.ingest`, `udl.features.compute_features`),
then for each method embed every document and cluster with FAISS spherical k-means, k = number
of labels, and score against the labels (NMI, ARI, Hungarian accuracy; `udl.evaluate`; means over
`--kmeans-seeds` k-means seeds, NMI with its standard deviation):

- tfidf+svd: TF-IDF → TruncatedSVD(100) → L2 normalise (the classic baseline, same run);
- autoencoder, autoencoder+dec, attention, two_view (the default), two_view+dec, pretrained
  (MiniLM): `udl.embed.embed_corpus`,
  which trains on a sample of at most --max-train-docs and streams inference over all parts.

`autoencoder+dec` starts from exactly the `autoencoder` row's model (same seed and sample, CPU
determinism), so comparing the two rows measures what DEC adds to its own initialisation.

Usage:
    nice -n 5 .venv/bin/python tests/bench/bench_encoders.py            # full (CPU: ~30-60 min)
    .venv/bin/python tests/bench/bench_encoders.py --quick              # ~5 min smoke run
Writes .bench/encoders.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from sklearn.decomposition import TruncatedSVD

from udl.cluster.kmeans import FaissKMeans
from udl.config import DECConfig, EncoderConfig, InputConfig, PreprocessConfig
from udl.corpus import ingest
from udl.datasets import read_embeddings
from udl.embed import embed_corpus, read_documents
from udl.evaluate import label_metrics
from udl.features import compute_features
from udl.storage import dataset_parts

REPO = Path(__file__).resolve().parents[2]
CORPORA = {
    "wordnet": REPO.parent / "shared" / "data" / "wordnet_glosses" / "wordnet_glosses.parquet",
    "fortunes": REPO.parent / "shared" / "data" / "fortunes" / "fortunes.parquet",
    "pydoc_dev": REPO.parent / "shared" / "data" / "pydoc_dev" / "pydoc_dev.parquet",
}
METHODS = [
    "tfidf+svd",
    "autoencoder",
    "autoencoder+dec",
    "attention",
    "two_view",
    "two_view+dec",
    "pretrained",
]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small caps for a smoke run")
    parser.add_argument("--corpora", nargs="+", choices=sorted(CORPORA), default=list(CORPORA))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument(
        "--max-docs", type=int, help="seeded sample of at most this many docs per corpus"
    )
    parser.add_argument("--max-train-docs", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=15, help="autoencoder epochs")
    parser.add_argument("--attention-epochs", type=int, default=8)
    parser.add_argument("--dec-iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kmeans-seeds", type=int, default=5, help="scores are means over this many k-means seeds"
    )
    parser.add_argument("--output", type=Path, default=REPO / ".bench" / "encoders.json")
    args = parser.parse_args()
    if args.quick:
        args.max_docs = min(args.max_docs or 4000, 4000)
        args.max_train_docs = min(args.max_train_docs, 2000)
        args.epochs, args.attention_epochs = min(args.epochs, 4), min(args.attention_epochs, 3)
        args.dec_iterations = min(args.dec_iterations, 100)
    return args


def _prepare(name: str, work: Path, max_docs: int | None, seed: int) -> dict[str, Any]:
    """Ingest and featurise one corpus (optionally a seeded sample of it) into `work`."""
    source = CORPORA[name]
    if max_docs is not None:
        frame = pd.read_parquet(source)
        if len(frame) > max_docs:
            frame = frame.sample(n=max_docs, random_state=seed)
        source = work / f"{name}.parquet"
        frame.to_parquet(source, index=False)
    started = time.perf_counter()
    ingest(
        InputConfig(path=str(source), id_column="doc_id", label_column="label"),
        work / "corpus",
        work / "rejects",
    )
    result = compute_features(
        work / "corpus", work / "features", work / "models", PreprocessConfig()
    )
    labels = np.concatenate(
        [
            pq.read_table(p, columns=["label"]).column("label").to_numpy(zero_copy_only=False)
            for p in dataset_parts(work / "corpus")
        ]
    )
    return {
        "n_docs": result.n_docs,
        "n_classes": len(set(labels)),
        "features_seconds": time.perf_counter() - started,
        "labels": labels,
    }


def _scores(labels: np.ndarray, vectors: np.ndarray, k: int, seeds: int) -> dict[str, float]:
    """Spherical k-means (as the cluster step with metric=cosine) scored against labels: mean
    and standard deviation over k-means seeds 0..seeds-1, since one seed moves NMI by up to
    0.03 on a corpus of a few thousand documents."""
    runs = []
    for seed in range(seeds):
        kmeans = FaissKMeans(k, metric="cosine", nredo=3, seed=seed).fit(vectors)
        runs.append(label_metrics(labels, kmeans.predict(vectors)[0]))
    scores = {key: float(np.mean([r[key] for r in runs])) for key in ("nmi", "ari", "acc")}
    scores["nmi_sd"] = float(np.std([r["nmi"] for r in runs]))
    return scores


def _baseline(
    work: Path, labels: np.ndarray, k: int, seed: int, kmeans_seeds: int
) -> dict[str, Any]:
    started = time.perf_counter()
    parts = zip(dataset_parts(work / "corpus"), dataset_parts(work / "features"), strict=True)
    tfidf = sp.vstack([read_documents(c, f)[1].tfidf for c, f in parts], format="csr")
    svd = TruncatedSVD(100, random_state=seed)
    vectors = svd.fit_transform(tfidf).astype(np.float32)
    seconds = time.perf_counter() - started
    return {
        **_scores(labels, vectors, k, kmeans_seeds),
        "train_docs_per_s": None,
        "infer_docs_per_s": len(labels) / seconds,
        "embed_step_docs_per_s": len(labels) / seconds,
        "n_parameters": int(svd.components_.size),
        "seconds": seconds,
    }


def _encoder_config(method: str, args: argparse.Namespace, k: int) -> EncoderConfig:
    kind = method.removesuffix("+dec")
    dec = DECConfig(
        method="dec" if method.endswith("+dec") else "none",
        n_clusters=k,
        max_iterations=args.dec_iterations,
    )
    if kind in ("two_view", "pretrained"):
        # The default encoder is measured exactly as a user gets it (--quick included).
        return EncoderConfig(kind=kind, dec=dec, device="cpu")
    epochs = args.attention_epochs if kind == "attention" else args.epochs
    return EncoderConfig(
        kind=kind, epochs=epochs, max_train_docs=args.max_train_docs, dec=dec, device="cpu"
    )


def _encoder_run(
    method: str, work: Path, labels: np.ndarray, k: int, args: argparse.Namespace
) -> dict[str, Any]:
    config = _encoder_config(method, args, k)
    out = work / method
    result = embed_corpus(
        work / "corpus",
        work / "features",
        out / "embeddings",
        _models_for(work, out),
        config,
        PreprocessConfig(),
        args.seed,
    )
    _, vectors, anomaly = read_embeddings(out / "embeddings")
    passes = result.n_train * max(result.epochs_run, 1)
    return {
        **_scores(labels, vectors, k, args.kmeans_seeds),
        "train_docs_per_s": passes / result.train_seconds,
        "infer_docs_per_s": result.n_docs / result.embed_seconds,
        "n_parameters": result.n_parameters,
        "seconds": result.train_seconds + result.embed_seconds,
        "embed_step_docs_per_s": result.n_docs / (result.train_seconds + result.embed_seconds),
        "teacher": result.teacher,
        "teacher_sample": result.teacher_sample,
        "teacher_seconds": result.teacher_seconds,
        "n_train": result.n_train,
        "epochs_run": result.epochs_run,
        "dec_iterations": result.dec_iterations,
        "dec_converged": result.dec_converged,
        "anomaly_score_finite": bool(np.isfinite(anomaly).all()),
    }


def _models_for(work: Path, out: Path) -> Path:
    """Each method writes its checkpoint next to a copy of the shared TF-IDF tables."""
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    for table in (work / "models").glob("*.parquet"):
        (models / table.name).write_bytes(table.read_bytes())
    return models


def _print_table(corpus: str, info: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{corpus}: {info['n_docs']} docs, k = {info['n_classes']} labels")
    print(
        f"{'method':<16} {'NMI':>6} {'±sd':>5} {'ARI':>6} {'ACC':>6} {'train doc/s':>11} "
        f"{'infer doc/s':>11} {'step doc/s':>10} {'params':>10} {'seconds':>8}"
    )
    for method, r in rows.items():
        train = f"{r['train_docs_per_s']:.0f}" if r["train_docs_per_s"] else "-"
        print(
            f"{method:<16} {r['nmi']:6.3f} {r['nmi_sd']:5.3f} {r['ari']:6.3f} {r['acc']:6.3f} {train:>11} "
            f"{r['infer_docs_per_s']:11.0f} {r['embed_step_docs_per_s']:10.0f} "
            f"{r['n_parameters']:10d} {r['seconds']:8.0f}"
        )
    teacher, student = rows.get("pretrained"), rows.get("two_view")
    if teacher and student:
        print(
            "two_view / pretrained (MiniLM): whole embed step "
            f"{student['embed_step_docs_per_s'] / teacher['embed_step_docs_per_s']:.1f}x, "
            f"inference {student['infer_docs_per_s'] / teacher['infer_docs_per_s']:.1f}x docs/s; "
            f"teacher sample {student['teacher_sample']} docs, {student['teacher_seconds']:.1f} s"
        )


def main() -> None:
    args = _args()
    dask.config.set(scheduler="synchronous")  # the CPU is shared; keep one core for torch
    report: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_average_start": os.getloadavg(),
        },
        "corpora": {},
    }
    for corpus in args.corpora:
        with tempfile.TemporaryDirectory(prefix=f"bench-{corpus}-") as tmp:
            work = Path(tmp)
            info = _prepare(corpus, work, args.max_docs, args.seed)
            labels, k = info.pop("labels"), info["n_classes"]
            rows: dict[str, dict[str, Any]] = {}
            for method in args.methods:
                if method == "tfidf+svd":
                    rows[method] = _baseline(work, labels, k, args.seed, args.kmeans_seeds)
                else:
                    rows[method] = _encoder_run(method, work, labels, k, args)
                print(f"  {corpus} {method}: {json.dumps(rows[method])}", flush=True)
                report["corpora"][corpus] = {**info, "methods": rows}
                _write(report, args.output)  # partial results survive an interrupted run
            _print_table(corpus, info, rows)
    _write(report, args.output)
    print(f"\nwrote {args.output}")


def _write(report: dict[str, Any], path: Path) -> None:
    report["machine"]["load_average_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
