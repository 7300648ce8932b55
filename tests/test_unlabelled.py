"""The everyday path: corpora without a label column, end to end through the CLI.

Each run here is what a new user types first (`udl run corpus.csv --output out`), on the
bundled fortunes sample written as a plain ``doc_id,text`` CSV, and on supplied vectors
without labels. Every row must end in the assignments or in rejects, and the report must be
written without any label metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from udl import schema as S

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[1]
FORTUNES = REPO / "tests" / "data" / "fortunes_sample.parquet"
LABEL_METRICS = {"nmi", "ari", "acc", "homogeneity", "completeness"}


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled fortunes sample as a CSV with only ``doc_id`` and ``text``."""
    path = tmp_path_factory.mktemp("unlabelled") / "corpus.csv"
    pd.read_parquet(FORTUNES)[["doc_id", "text"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config that keeps the encoder's training short; everything else is the default."""
    path = tmp_path_factory.mktemp("config") / "fast.yaml"
    path.write_text("encoder:\n  epochs: 3\n")
    return path


def _run(*argv: str) -> int:
    from flows.cli import main

    return main(list(argv))


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "metrics.json").read_text())


def _check_unlabelled_run(run_dir: Path, n_input: int) -> dict:
    """Every input row is assigned or rejected, and the report carries no label metric."""
    assignments = pq.read_table(run_dir / "assignments")
    rejects = pq.read_table(run_dir / "rejects")
    assert assignments.num_rows + rejects.num_rows == n_input
    assert S.LABEL not in assignments.schema.names
    metrics = _metrics(run_dir)
    assert metrics["n_docs"] == assignments.num_rows
    assert not LABEL_METRICS & metrics.keys()
    html = (run_dir / "report" / "index.html").read_text()
    assert "Clustering report" in html and ">nmi<" not in html
    return metrics


@pytest.fixture(scope="module")
def kmeans_run(corpus_csv: Path, fast_config: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("out")
    argv = ["run", str(corpus_csv), "-o", str(output), "--id-column", "doc_id"]
    assert _run(*argv, "--config", str(fast_config), "--k", "6", "--run-id", "km") == 0
    return output, output / "runs" / "km"


def test_kmeans_without_labels_reports_internal_metrics(kmeans_run: tuple[Path, Path]) -> None:
    _, run_dir = kmeans_run
    metrics = _check_unlabelled_run(run_dir, 1500)
    assert metrics["n_clusters"] == 6
    assert -1 <= metrics["silhouette"] <= 1
    assert metrics["calinski_harabasz"] > 0


def test_dbscan_without_labels(corpus_csv: Path, fast_config: Path, tmp_path: Path) -> None:
    argv = ["run", str(corpus_csv), "-o", str(tmp_path), "--id-column", "doc_id"]
    assert _run(*argv, "--config", str(fast_config), "--algorithm", "dbscan") == 0
    run_dir = next((tmp_path / "runs").iterdir())
    metrics = _check_unlabelled_run(run_dir, 1500)
    assert metrics["algorithm"] == "dbscan"
    sizes = sum(c["size"] for c in metrics["clusters"])
    assert sizes + metrics["n_noise"] + metrics.get("n_no_features", 0) == 1500


def test_recluster_and_rereport_without_labels(kmeans_run: tuple[Path, Path]) -> None:
    output, source = kmeans_run
    assert _run("recluster", "-o", str(output), "--from", "km", "--k", "3", "--run-id", "k3") == 0
    metrics = _check_unlabelled_run(output / "runs" / "k3", 1500)
    assert metrics["n_clusters"] == 3
    argv = ["recluster", "-o", str(output), "--from", "km", "--run-id", "db"]
    assert _run(*argv, "--algorithm", "dbscan") == 0
    _check_unlabelled_run(output / "runs" / "db", 1500)
    before = _metrics(source)
    assert _run("report", "-o", str(output), "--run", "km") == 0
    after = _check_unlabelled_run(source, 1500)
    assert after["n_clusters"] == before["n_clusters"] == 6


def test_supplied_vectors_without_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 60)
    vectors = np.eye(12, dtype=np.float32)[truth * 4] * 3 + rng.normal(0, 0.1, (180, 12))
    words = np.array(["fruit apple pear", "river lake shore", "violin cello harp"])
    frame = pd.DataFrame(
        {"id": [f"d{i}" for i in range(180)], "text": words[truth], "vec": list(vectors)}
    )
    corpus = tmp_path / "vectors.parquet"
    frame.to_parquet(corpus, index=False)
    argv = ["run", str(corpus), "-o", str(tmp_path / "out"), "--id-column", "id"]
    assert _run(*argv, "--embedding-column", "vec", "--k", "3", "--run-id", "v") == 0
    run_dir = tmp_path / "out" / "runs" / "v"
    _check_unlabelled_run(run_dir, 180)
    assigned = pd.read_parquet(run_dir / "assignments").set_index(S.DOC_ID)
    found = assigned.loc[frame["id"], S.CLUSTER_ID].to_numpy()
    assert adjusted_rand_score(truth, found) == 1.0
