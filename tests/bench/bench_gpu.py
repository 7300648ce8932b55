"""GPU check benchmark (issue 21), run by `tests/bench/gpu_check.sh` on a machine with a GPU.

On SIZE documents made from the bundled sample (each text made distinct by a suffix), ingested
and featurised in this process, the default two-view encoder is trained once; then the same
checkpoint embeds every part

- in this process on the CPU, and on CUDA when torch sees a GPU;
- on a local Dask cluster of one worker per visible GPU (`CUDA_VISIBLE_DEVICES` set per
  worker), through `write_embeddings_on_workers` as a run with `runtime.dask_inference` does,
  when there is one;

and the nearest-centroid assignment (`NearestCentroids`, k=100) runs on the CPU and, with
FAISS GPU installed, on the GPU. Prints documents per second and how far the GPU vectors are
from the CPU ones; writes `.bench/gpu.json` (and a copy under $OUT when set).

    .venv/bin/python tests/bench/bench_gpu.py                 # 200,000 documents
    .venv/bin/python tests/bench/bench_gpu.py --size 20000    # a smoke run (CPU only here)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dask
import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[2]

from udl import schema as S
from udl.cluster.kmeans import NearestCentroids
from udl.config import EncoderConfig, InputConfig, PreprocessConfig
from udl.corpus import ingest
from udl.datasets import ENCODER_DIR, Embeddings, decode_vectors
from udl.embed import embed_corpus, write_embeddings, write_embeddings_on_workers
from udl.encoders.registry import load_encoder
from udl.features import compute_features

WORKDIR = REPO / ".bench" / "gpu"
RESULT = REPO / ".bench" / "gpu.json"
SAMPLE = REPO / "data" / "sample" / "wordnet_sample.parquet"
PREPROCESS = PreprocessConfig()


def _corpus(size: int) -> Path:
    """SIZE documents: the bundled sample repeated, each copy's texts given a distinct suffix."""
    frame = pd.read_parquet(SAMPLE)
    copies = -(-size // len(frame))
    texts = [f"{t} (copy {c})" for c in range(copies) for t in frame["text"]][:size]
    path = WORKDIR / "input" / f"{size}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"doc_id": [f"d{i:08d}" for i in range(size)], "text": texts}).to_parquet(path)
    return path


def _vectors(folder: Path) -> np.ndarray:
    return decode_vectors(pq.read_table(folder).column(S.EMBEDDING))


def _timed(label: str, n_docs: int, embed: Callable[[], object]) -> dict:
    started = time.perf_counter()
    embed()
    seconds = time.perf_counter() - started
    print(f"{label:<28} {seconds:7.1f} s  {n_docs / seconds:10,.0f} docs/s", flush=True)
    return {"seconds": seconds, "docs_per_second": n_docs / seconds}


def _on_gpu_workers(checkpoint: Path, root: Path, out: Path) -> None:
    """Embed on a cluster of one single-threaded worker per GPU, each seeing only its own
    device (as `dask cuda worker` starts them)."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(gpu)}},
        }
        for gpu in range(torch.cuda.device_count())
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with (
        SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        Client(cluster) as client,
        client.as_current(),
    ):
        write_embeddings_on_workers(checkpoint, "cuda", root / "corpus", root / "features", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=200_000)
    args = parser.parse_args()
    root = WORKDIR / str(args.size)
    shutil.rmtree(root, ignore_errors=True)
    config = InputConfig(path=str(_corpus(args.size)), id_column="doc_id", partition_rows=50_000)
    ingest(config, root / "corpus", root / "rejects")
    with dask.config.set(scheduler="synchronous"):
        compute_features(root / "corpus", root / "features", root / "models", PREPROCESS)
    cuda = torch.cuda.is_available()
    figures: dict = {
        "size": args.size,
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "gpus": torch.cuda.device_count(),
    }
    started = time.perf_counter()
    embed_corpus(
        root / "corpus",
        root / "features",
        root / "trained",
        root / "models",
        EncoderConfig(),
        PREPROCESS,
        0,
    )
    figures["train_and_embed_seconds"] = time.perf_counter() - started
    checkpoint = root / "models" / ENCODER_DIR
    paths = (root / "corpus", root / "features")
    cpu = load_encoder(checkpoint, "cpu")
    figures["cpu"] = _timed(
        "inference, CPU", args.size, lambda: write_embeddings(cpu, *paths, root / "cpu")
    )
    if cuda:
        gpu = load_encoder(checkpoint, "cuda")
        figures["cuda"] = _timed(
            "inference, CUDA", args.size, lambda: write_embeddings(gpu, *paths, root / "cuda")
        )
        figures["cuda_workers"] = _timed(
            f"inference, {torch.cuda.device_count()} GPU worker(s)",
            args.size,
            lambda: _on_gpu_workers(checkpoint, root, root / "cuda-workers"),
        )
        reference = _vectors(root / "cpu")
        for name in ("cuda", "cuda-workers"):
            cosine = np.sum(reference * _vectors(root / name), axis=1)
            figures[f"{name}_min_cosine_to_cpu"] = float(cosine.min())
            print(f"{name}: smallest cosine to the CPU vector {cosine.min():.5f}")
    else:
        print("CUDA: torch sees no GPU; the GPU figures are not measured")
    x = Embeddings(root / "cpu").featured()
    centroids = x[np.random.default_rng(0).choice(len(x), 100, replace=False)]
    faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    for on_gpu in (False, True) if faiss_gpu else (False,):
        nearest = NearestCentroids(centroids, "cosine", gpu=on_gpu)
        figures[f"assign_{'gpu' if on_gpu else 'cpu'}"] = _timed(
            f"assignment, k=100, FAISS {'GPU' if on_gpu else 'CPU'}",
            len(x),
            lambda n=nearest: n.predict(x),
        )
    if not faiss_gpu:
        print("FAISS: no GPU (faiss-cpu installed, or no device); assignment on the CPU only")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(figures, indent=1))
    if os.environ.get("OUT"):
        shutil.copy(RESULT, Path(os.environ["OUT"]) / RESULT.name)
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
