"""Benchmark of udl clustering (issue 5): FAISS k-means and DBSCAN against scikit-learn.

Data (synthetic, with real structure, seeded, written once under `.bench/cluster/`):

* k-means: N x 64 float32 Gaussian blobs, k true centres drawn from N(0, 3^2 I) (centres
  ~34 apart, points ~11 from their centre), unit-variance noise around each.
* DBSCAN: N x 16 float32 clusters of 4,000 points each with low intrinsic dimension, as
  embeddings have: centre uniform in [-40, 40]^16, plus a 3-D Gaussian (std 3) in a random
  3-D subspace, plus isotropic noise (std 0.1); and 2% points uniform over the box (noise).
  (Full-dimensional 16-D Gaussian blobs are a poor DBSCAN case for any implementation: their
  distances concentrate, so any eps that connects a blob gives every point a large share of
  the blob as neighbours.) eps is udl's `estimate_eps` (knee of the 10-distance curve of a
  10,000-point sample against all points), min_samples=10, Euclidean metric.

Every method runs in a fresh Python process, so each peak RSS (`getrusage` ru_maxrss) is its
own; "base" is the RSS after the data is loaded, before the method runs. Threads: every
process gets the same `--threads` (default 1) through OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS, and sklearn DBSCAN n_jobs=threads. On a CPU shared with other work, OpenMP
with more threads than free cores spin-waits: FAISS k-means measured 14x slower with 2 threads
than with 1 on this 2-core machine under load, so 1 thread gives comparable, stable figures.

Fairness of the k-means comparison: every method starts from the SAME initial centroids
(k-means++ seeding, sklearn `kmeans_plusplus`, on 32 k points sampled with seed 1; random
points would leave several centroids in one blob, and then inertia measures which method
escapes that local minimum, not the method) and runs 20 iterations with no early stop
(sklearn tol=0; MiniBatchKMeans max_iter=20 epochs, tol=0, max_no_improvement=None,
batch_size=4096). Inertia is measured the same way for all: sum over ALL N points of the
squared distance to the nearest final centroid (exact FAISS search, float64 sum). udl trains
on a sample of 256 points per centroid (its default) and then assigns all N points (both in
the timing); "udl_128" and "udl_64" train on 128 and 64 points per centroid (the speed/quality
trade-off); "udl_full" trains on all N points for a like-for-like comparison of the iterations
themselves (udl's Lloyd iterations skip the points whose bounds prove their cluster unchanged,
with the same result as plain Lloyd; see udl/cluster/lloyd.py).

    .venv/bin/python tests/bench/bench_cluster.py           # 1M x 64 k=1000; 200k and 2M DBSCAN
    .venv/bin/python tests/bench/bench_cluster.py --quick   # 100k x 64 k=100; 20k and 200k
    .venv/bin/python tests/bench/bench_cluster.py --only kmeans   # rerun one part

Prints a table and writes `.bench/cluster.json`. Targets: udl k-means >= 10x faster than
sklearn KMeans with inertia within 1%; udl DBSCAN >= 10x faster than sklearn with identical
clusters; DBSCAN on 2M points within 24 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import kmeans_plusplus

REPO = Path(__file__).resolve().parents[2]
WORKDIR = REPO / ".bench" / "cluster"
RESULT = REPO / ".bench" / "cluster.json"
NITER = 20
MIN_SAMPLES = 10
BLOB_SIZE = 4000


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


# --- data -----------------------------------------------------------------------------------


def kmeans_data(n: int, k: int, dim: int = 64) -> tuple[Path, Path]:
    """Blobs for k-means and the shared initial centroids (reused when present)."""
    x_path, init_path = WORKDIR / f"kmeans_{n}_{k}.npy", WORKDIR / f"kmeans_{n}_{k}_init.npy"
    if not x_path.exists():
        rng = np.random.default_rng(0)
        centres = rng.normal(0, 3, (k, dim)).astype(np.float32)
        x = centres[rng.integers(0, k, n)]
        x += rng.standard_normal((n, dim), dtype=np.float32)
        sample = x[np.sort(np.random.default_rng(1).choice(n, 32 * k, replace=False))]
        np.save(init_path, kmeans_plusplus(sample, k, random_state=1)[0])
        np.save(x_path, x)
    return x_path, init_path


def dbscan_data(n: int, dim: int = 16) -> Path:
    """Blobs of BLOB_SIZE points plus 2% uniform noise (reused when present)."""
    path = WORKDIR / f"dbscan_{n}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        n_noise = n // 50
        n_clusters = max(1, (n - n_noise) // BLOB_SIZE)
        centres = rng.uniform(-40, 40, (n_clusters, dim))
        bases = np.linalg.qr(rng.standard_normal((n_clusters, dim, 3)))[0]  # (c, dim, 3)
        x = np.empty((n, dim), np.float32)
        for start in range(0, n - n_noise, 1_000_000):
            stop = min(start + 1_000_000, n - n_noise)
            c = rng.integers(0, n_clusters, stop - start)
            z = rng.normal(0, 3, (stop - start, 3))
            x[start:stop] = centres[c] + np.einsum("ndk,nk->nd", bases[c], z)
            x[start:stop] += rng.normal(0, 0.1, (stop - start, dim))
        x[n - n_noise :] = rng.uniform(-43, 43, (n_noise, dim))
        np.save(path, x[rng.permutation(n)])
    return path


# --- workers (each in its own process) ------------------------------------------------------


def _inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    total = 0.0
    for start in range(0, len(x), 262_144):
        sq, _ = index.search(x[start : start + 262_144], 1)
        total += float(np.maximum(sq, 0).sum(dtype=np.float64))
    return total


def worker_kmeans(method: str, x_path: str, init_path: str) -> dict[str, Any]:
    # Imports happen before the clock starts: they cost about a second and are no part of
    # the algorithms compared.
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from udl.cluster.kmeans import FaissKMeans

    x, init = np.load(x_path), np.load(init_path)
    k, base = len(init), _rss_mib()
    start = time.perf_counter()
    if method.startswith("udl"):
        per_centroid = {"udl": 256, "udl_128": 128, "udl_64": 64}.get(method, -(-len(x) // k))
        # As cluster_embeddings does: train on a seeded sample, then assign every point.
        size = min(len(x), per_centroid * k)
        train = x[np.sort(np.random.default_rng(0).choice(len(x), size, replace=False))]
        model = FaissKMeans(k, "l2", niter=NITER, max_points_per_centroid=per_centroid, seed=0)
        model.fit(train, init_centroids=init)
        model.predict(x)
        centroids = model.cluster_centers_
    elif method == "sklearn_kmeans":
        km = KMeans(k, init=init, n_init=1, max_iter=NITER, tol=0, algorithm="lloyd").fit(x)
        centroids = km.cluster_centers_
    else:
        km = MiniBatchKMeans(
            k,
            init=init,
            n_init=1,
            max_iter=NITER,
            batch_size=4096,
            tol=0,
            max_no_improvement=None,
            random_state=0,
        ).fit(x)
        centroids = km.cluster_centers_
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mib": _peak_mib(),
        "base_mib": base,
        "inertia": _inertia(x, centroids),
    }


def worker_dbscan(method: str, x_path: str, eps: float, labels_out: str) -> dict[str, Any]:
    from sklearn.cluster import DBSCAN

    from udl.cluster.dbscan import dbscan

    x = np.load(x_path)
    base = _rss_mib()
    start = time.perf_counter()
    if method == "udl":
        result = dbscan(x, eps, MIN_SAMPLES, "l2")
        labels, core, exact = result.labels, result.core_mask, result.exact
    else:
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        model = DBSCAN(eps=eps, min_samples=MIN_SAMPLES, n_jobs=threads).fit(x)
        labels, exact = model.labels_, True
        core = np.zeros(len(x), bool)
        core[model.core_sample_indices_] = True
    seconds = time.perf_counter() - start
    np.savez(labels_out, labels=labels, core=core)
    return {
        "seconds": seconds,
        "peak_mib": _peak_mib(),
        "base_mib": base,
        "exact": exact,
        "n_clusters": int(labels.max()) + 1,
        "n_noise": int((labels < 0).sum()),
    }


THREADS = 1


def _spawn(args: list[str]) -> dict[str, Any]:
    threads = str(THREADS)
    env = os.environ | {
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- driver ---------------------------------------------------------------------------------


def bench_kmeans(n: int, k: int) -> dict[str, Any]:
    x_path, init_path = kmeans_data(n, k)
    runs = {}
    for method in ("udl", "udl_128", "udl_64", "udl_full", "sklearn_kmeans", "sklearn_minibatch"):
        runs[method] = _spawn(["kmeans", method, str(x_path), str(init_path)])
        print(f"  kmeans {method}: {runs[method]['seconds']:.1f} s", flush=True)
    ref = runs["sklearn_kmeans"]
    for run in runs.values():
        run["speedup_vs_sklearn_kmeans"] = ref["seconds"] / run["seconds"]
        run["inertia_vs_sklearn_kmeans"] = run["inertia"] / ref["inertia"]
    return {"n": n, "dim": 64, "k": k, "niter": NITER, "runs": runs}


def bench_dbscan(n: int, compare: bool) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    from udl.cluster.selection import estimate_eps

    x_path = dbscan_data(n)
    eps = estimate_eps(np.load(x_path), MIN_SAMPLES, "l2", 10_000, seed=0)
    methods = ("udl", "sklearn") if compare else ("udl",)
    runs, labels = {}, {}
    for method in methods:
        out = WORKDIR / f"labels_{method}_{n}.npz"
        runs[method] = _spawn(["dbscan", method, str(x_path), repr(eps), str(out)])
        labels[method] = np.load(out)
        print(f"  dbscan {n} {method}: {runs[method]['seconds']:.1f} s", flush=True)
    record: dict[str, Any] = {
        "n": n,
        "dim": 16,
        "eps": eps,
        "min_samples": MIN_SAMPLES,
        "runs": runs,
    }
    if compare:
        ours, ref = labels["udl"], labels["sklearn"]
        core = ref["core"]
        record["same_core"] = bool((ours["core"] == core).all())
        record["same_noise"] = bool(((ours["labels"] < 0) == (ref["labels"] < 0)).all())
        record["ari_core"] = adjusted_rand_score(ref["labels"][core], ours["labels"][core])
        record["ari_all"] = adjusted_rand_score(ref["labels"], ours["labels"])
        record["speedup"] = runs["sklearn"]["seconds"] / runs["udl"]["seconds"]
    return record


def print_table(results: dict[str, Any]) -> None:
    km = results["kmeans"]
    print(f"threads per method: {results['threads']}")
    print(
        f"\nk-means: {km['n']:,} x {km['dim']} float32, k={km['k']}, {km['niter']} iterations,"
        " same initial centroids"
    )
    print(
        f"{'method':<20}{'seconds':>9}{'speedup':>9}{'inertia/ref':>13}{'peak MiB':>10}"
        f"{'base MiB':>10}"
    )
    for name, run in km["runs"].items():
        print(
            f"{name:<20}{run['seconds']:>9.1f}{run['speedup_vs_sklearn_kmeans']:>8.1f}x"
            f"{run['inertia_vs_sklearn_kmeans']:>13.5f}{run['peak_mib']:>10.0f}"
            f"{run['base_mib']:>10.0f}"
        )
    for key in ("dbscan", "dbscan_large"):
        db = results[key]
        print(
            f"\nDBSCAN: {db['n']:,} x {db['dim']} float32, eps={db['eps']:.4f}, "
            f"min_samples={db['min_samples']}, l2"
        )
        print(
            f"{'method':<20}{'seconds':>9}{'peak MiB':>10}{'base MiB':>10}{'clusters':>10}"
            f"{'noise':>9}{'exact':>7}"
        )
        for name, run in db["runs"].items():
            print(
                f"{name:<20}{run['seconds']:>9.1f}{run['peak_mib']:>10.0f}"
                f"{run['base_mib']:>10.0f}{run['n_clusters']:>10}{run['n_noise']:>9}"
                f"{run['exact']!s:>7}"
            )
        if "speedup" in db:
            print(
                f"udl vs sklearn: {db['speedup']:.1f}x faster; same core points: "
                f"{db['same_core']}, same noise set: {db['same_noise']}, ARI on core points "
                f"{db['ari_core']:.6f}, ARI on all points {db['ari_all']:.6f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        choices=["kmeans", "dbscan"],
        help="run one part; the other is kept from the last JSON",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of every method")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    if args.worker:
        kind, *rest = args.worker
        result = (
            worker_kmeans(*rest)
            if kind == "kmeans"
            else worker_dbscan(rest[0], rest[1], float(rest[2]), rest[3])
        )
        print(json.dumps(result))
        return
    WORKDIR.mkdir(parents=True, exist_ok=True)
    n_km, k, n_db, n_large = (
        (100_000, 100, 20_000, 200_000) if args.quick else (1_000_000, 1000, 200_000, 2_000_000)
    )
    results = json.loads(RESULT.read_text()) if args.only and RESULT.exists() else {}
    results |= {"quick": args.quick, "threads": args.threads}
    if args.only in (None, "kmeans"):
        results["kmeans"] = bench_kmeans(n_km, k)
    if args.only in (None, "dbscan"):
        results["dbscan"] = bench_dbscan(n_db, compare=True)
        results["dbscan_large"] = bench_dbscan(n_large, compare=False)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
