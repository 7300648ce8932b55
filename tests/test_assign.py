"""`udl assign`: new documents join a finished run's k-means clusters with nothing trained.

The run's own corpus, assigned again, comes back with the run's cluster ids, distances and
confidences; bad rows go to rejects and documents without a known word are flagged, as in a
run; a DBSCAN run or the run's own id are refused before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from udl import schema as S
from udl.config import PipelineConfig
from udl.datasets import RunLayout
from udl.errors import ConfigError
from udl.preflight import check_assign
from udl.storage import read_json, write_json_atomic


def _assignments(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "assignments").sort_values(S.DOC_ID, ignore_index=True)


def test_a_runs_own_corpus_joins_its_clusters_as_it_was_clustered(
    cli_run: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = cli_run.parent.parent
    latest = os.readlink(output / "latest") if (output / "latest").is_symlink() else None
    command = ["assign", str(small_corpus), "--output", str(output), "--from", "first"]
    assert main([*command, "--run-id", "joined"]) == 0
    joined = output / "runs" / "joined"
    assert "1,000 documents joined 4 of the 4 clusters of run first" in capsys.readouterr().out
    before, after = _assignments(cli_run), _assignments(joined)
    assert after[S.DOC_ID].tolist() == before[S.DOC_ID].tolist()
    assert after["cluster_id"].tolist() == before["cluster_id"].tolist()
    assert after[S.STATUS].tolist() == before[S.STATUS].tolist()
    np.testing.assert_allclose(after["distance"], before["distance"], atol=1e-5)
    np.testing.assert_allclose(after["confidence"], before["confidence"], atol=1e-5)
    assert set(after["run_id"]) == {"first"}  # the run whose cluster ids these are
    assert "label" not in after.columns  # labels only on request
    manifest = read_json(joined / "manifest.json")
    assert manifest["status"] == "assigned" and manifest["previous_run_id"] == "first"
    assert manifest["steps"]["embed"]["n_train"] == 0
    assert not (joined / "models" / "encoder").exists()
    now = os.readlink(output / "latest") if (output / "latest").is_symlink() else None
    assert now == latest


def test_new_documents_keep_every_row(cli_run: Path, tmp_path: Path) -> None:
    from flows.pipeline import assign_documents

    frame = pd.read_parquet(cli_run / "corpus")
    new = pd.DataFrame(
        {
            "doc_id": ["n1", "n2", "n3", "n4"],
            # n3: no word any view knows (a few emoji), so no features.
            "text": [frame["text"].iloc[0], "", "\U0001f642\U0001f642", frame["text"].iloc[-1]],
            "label": ["a", "b", "c", "d"],
        }
    )
    new.to_csv(tmp_path / "new.csv", index=False)
    output = cli_run.parent.parent
    config = PipelineConfig().with_overrides(
        {
            "input.path": str(tmp_path / "new.csv"),
            "input.id_column": "doc_id",
            "input.label_column": "label",
            "runtime.output_dir": str(output),
            "runtime.run_id": "new-docs",
        }
    )
    run_dir = Path(assign_documents(config, "first"))
    assigned = _assignments(run_dir)
    rejects = pd.read_parquet(run_dir / "rejects")
    assert sorted([*assigned[S.DOC_ID], *rejects[S.DOC_ID]]) == ["n1", "n2", "n3", "n4"]
    assert rejects[S.DOC_ID].tolist() == ["n2"]
    by_id = assigned.set_index(S.DOC_ID)
    assert by_id.loc["n3", S.STATUS] == S.NO_FEATURES and by_id.loc["n3", "cluster_id"] == -1
    first = _assignments(cli_run).set_index(S.DOC_ID)
    for new_id, old_id in (("n1", frame["doc_id"].iloc[0]), ("n4", frame["doc_id"].iloc[-1])):
        assert by_id.loc[new_id, "cluster_id"] == first.loc[old_id, "cluster_id"]
    assert by_id["label"].tolist() == ["a", "c", "d"]


def _clustered_run(output: Path, run_id: str, algorithm: str) -> RunLayout:
    layout = RunLayout(output, run_id)
    write_json_atomic(layout.manifest, {"config": PipelineConfig().model_dump(mode="json")})
    write_json_atomic(layout.step_record("cluster"), {"algorithm": algorithm})
    return layout


def test_only_a_kmeans_run_can_be_joined(tmp_path: Path, small_corpus: Path) -> None:
    _clustered_run(tmp_path, "dense", "dbscan")
    _clustered_run(tmp_path, "kmeans", "kmeans")
    config = PipelineConfig().with_overrides(
        {"input.path": str(small_corpus), "runtime.output_dir": str(tmp_path)}
    )
    with pytest.raises(ConfigError, match=r"run dense clustered with dbscan.*--algorithm kmeans"):
        check_assign(config, "dense")
    with pytest.raises(ConfigError, match="new run id"):
        check_assign(config.with_overrides({"runtime.run_id": "kmeans"}), "kmeans")
    with pytest.raises(ConfigError, match="run dense exists and is not an assign run"):
        check_assign(config.with_overrides({"runtime.run_id": "dense"}), "kmeans")
    vectors = config.with_overrides({"input.embedding_column": "vec"})
    with pytest.raises(ConfigError, match="trained an encoder: new documents must come"):
        check_assign(vectors, "kmeans")
    assigned = RunLayout(tmp_path, "joined")
    write_json_atomic(assigned.manifest, {"status": "assigned", "previous_run_id": "kmeans"})
    write_json_atomic(assigned.step_record("cluster"), {"algorithm": None})
    with pytest.raises(ConfigError, match="documents assigned to the clusters of run kmeans"):
        check_assign(config, "joined")
    resumed = config.with_overrides({"runtime.run_id": "joined"})
    assert check_assign(resumed, "kmeans").run_id == "kmeans"
    assert check_assign(config, "kmeans") == RunLayout(tmp_path.resolve(), "kmeans")
