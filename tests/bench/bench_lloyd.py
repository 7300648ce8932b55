"""Benchmark of udl's bounded Lloyd iterations against ``faiss.Kmeans`` on the same start.

Both run the same number of Lloyd iterations from the same initial centroids (k random points
of the data, seed 2) on 1 thread, and both objectives are measured the same way (exact FAISS
search of every point against the final centroids). udl stops early once no point moves; that
is part of what is timed. Data:

* blobs: 256,000 x 64 Gaussian blobs around 1,000 centres (the sample udl's default trains on
  for the 1M x 64, k=1000 benchmark of bench_cluster.py): strong structure.
* embeddings (when ``--embeddings DIR`` names an embeddings dataset of a udl run, e.g.
  ``.bench/scale/out/1000000/latest/embeddings``): a 256,000-row sample, L2-normalised,
  spherical k-means, k=1000.
* gaussian: 200,000 x 128 from one standard normal, k=500: no structure.
* uniform: 200,000 x 32 uniform in the unit cube, k=200: no structure.

    .venv/bin/python tests/bench/bench_lloyd.py [--embeddings DIR]

Prints seconds, the ratio faiss / udl (above 1: udl faster) and the objective ratio.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.dataset as ds
from numpy.typing import NDArray

from udl.cluster.lloyd import lloyd

NITER = 20


def _objective(x: NDArray[np.float32], centroids: NDArray[np.float32]) -> float:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return float(np.maximum(index.search(x, 1)[0], 0).sum(dtype=np.float64))


def _datasets(embeddings: Path | None) -> list[tuple[str, NDArray[np.float32], int, bool]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (1000, 64)).astype(np.float32)
    blobs = centres[rng.integers(0, 1000, 256_000)]
    blobs += rng.standard_normal(blobs.shape, dtype=np.float32)
    data = [("blobs 256k x 64", blobs, 1000, False)]
    if embeddings is not None:
        table = ds.dataset(embeddings, format="parquet").to_table(columns=["embedding"])
        column = table.column("embedding").combine_chunks()
        vectors = column.values.to_numpy().reshape(len(column), -1).astype(np.float32)
        sample = vectors[np.sort(rng.choice(len(vectors), min(256_000, len(vectors)), False))]
        sample = np.ascontiguousarray(sample)
        faiss.normalize_L2(sample)
        data.append((f"embeddings {len(sample) // 1000}k x {sample.shape[1]}", sample, 1000, True))
    data.append(
        ("gaussian 200k x 128", rng.standard_normal((200_000, 128), np.float32), 500, False)
    )
    data.append(("uniform 200k x 32", rng.random((200_000, 32), np.float32), 200, False))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embeddings", type=Path, help="embeddings dataset of a udl run")
    args = parser.parse_args()
    print(
        f"{'data':26}{'k':>6}{'faiss s':>9}{'udl s':>8}{'speed-up':>10}{'iters':>7}{'obj ratio':>11}"
    )
    for name, x, k, spherical in _datasets(args.embeddings):
        start = x[np.random.default_rng(2).choice(len(x), k, replace=False)].copy()
        began = time.perf_counter()
        result = lloyd(x, start, NITER, spherical)
        udl_s = time.perf_counter() - began
        kmeans = faiss.Kmeans(
            x.shape[1], k, niter=NITER, spherical=spherical, max_points_per_centroid=len(x)
        )
        began = time.perf_counter()
        kmeans.train(x, init_centroids=start)
        faiss_s = time.perf_counter() - began
        ratio = _objective(x, result.centroids) / _objective(x, kmeans.centroids)
        print(
            f"{name:26}{k:>6}{faiss_s:>9.2f}{udl_s:>8.2f}{faiss_s / udl_s:>9.2f}x"
            f"{result.n_iter:>7}{ratio:>11.5f}"
        )


if __name__ == "__main__":
    main()
