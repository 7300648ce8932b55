"""Nightly runs that cost only what changed (`update.policy` refresh and frozen).

One first night on 1,000 labelled documents; the next night's corpus has 1% new documents,
0.5% changed (same id, another text) and 0.5% deleted. Only the new and changed texts are
embedded; every other row of features and embeddings is the first night's, and the whole
equals a recompute of all documents with the first night's IDF and encoder, byte for byte.
Under `frozen` no document's cluster changes; an unchanged corpus gives the same assignments.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from udl import schema as S
from udl.config import PipelineConfig
from udl.storage import read_json

N_NEW, N_CHANGED, N_DELETED = 10, 5, 5


def _config(corpus: Path, output: Path, run_id: str, **update: object) -> PipelineConfig:
    overrides = {
        "input.path": str(corpus),
        "input.id_column": "doc_id",
        "input.label_column": "label",
        "cluster.k": 4,
        "runtime.output_dir": str(output),
        "runtime.run_id": run_id,
    }
    return PipelineConfig().with_overrides(
        overrides | {f"update.{name}": value for name, value in update.items()}
    )


@pytest.fixture(scope="module")
def nights(
    prefect_harness: None,
    small_corpus: Path,
    sample_frame: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The first night's output folder (run "night1") and the second night's corpus."""
    from flows.pipeline import clustering_pipeline

    root = tmp_path_factory.mktemp("incremental")
    first = pd.read_parquet(small_corpus)
    clustering_pipeline(_config(small_corpus, root / "out", "night1"))

    unused = sample_frame[~sample_frame["text"].isin(first["text"])].reset_index(drop=True)
    second = first.iloc[N_DELETED:].copy()  # the first five are deleted
    changed = second.index[:N_CHANGED]
    second.loc[changed, "text"] = unused["text"].iloc[:N_CHANGED].to_numpy()
    new = unused.iloc[N_CHANGED : N_CHANGED + N_NEW].copy()
    new["doc_id"] = [f"new-{i}" for i in range(N_NEW)]
    # New documents arrive in the middle of the corpus as well as at its end.
    second = pd.concat([second.iloc[:400], new.iloc[:5], second.iloc[400:], new.iloc[5:]])
    second.to_parquet(root / "night2.parquet", index=False)
    return {"output": root / "out", "night2": root / "night2.parquet", "root": root}


def _copy_output(nights: dict[str, Path], name: str) -> Path:
    """A copy of the first night's output folder, so each policy follows the same night."""
    copy = nights["root"] / name
    if not copy.exists():
        shutil.copytree(nights["output"], copy, symlinks=True)
    return copy


def _second_night(nights: dict[str, Path], policy: str) -> tuple[Path, Path, dict]:
    """Night 2 under `policy`, following night 1 in a copy of its output folder: the output
    folder, the run folder and its ``update.json``."""
    from flows.pipeline import clustering_pipeline

    output = _copy_output(nights, policy)
    config = _config(nights["night2"], output, "night2", policy=policy)
    run_dir = Path(clustering_pipeline(config))
    return output, run_dir, read_json(run_dir / "update.json")


def _assignments(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "assignments").set_index(S.DOC_ID)


def test_refresh_embeds_only_new_and_changed_texts_as_a_full_recompute_would(
    nights: dict[str, Path], tmp_path: Path
) -> None:
    from flows.pipeline import clustering_pipeline
    from udl.embed import embed_with_checkpoint
    from udl.features import transform_features

    output, run_dir, update = _second_night(nights, "refresh")
    assert update["policy"] == "refresh" and update["clusters"] == "fitted"
    assert update["changes"] == {
        "matched_by": "id",
        "new": N_NEW,
        "changed": N_CHANGED,
        "deleted": N_DELETED,
        "unchanged": 1000 - N_DELETED - N_CHANGED,
        "computed": N_NEW + N_CHANGED,
        "reused": 1000 - N_DELETED - N_CHANGED,
    }
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["steps"]["embed"]["computed"] == N_NEW + N_CHANGED
    assert manifest["update"] == update

    # The same documents through the first night's IDF and encoder, all computed.
    first = output / "runs" / "night1"
    config = PipelineConfig()
    transform_features(
        run_dir / "corpus", tmp_path / "features", first / "models", config.preprocess
    )
    embed_with_checkpoint(
        run_dir / "corpus",
        tmp_path / "features",
        tmp_path / "embeddings",
        first / "models" / "encoder",
        config.encoder,
    )
    for dataset in ("features", "embeddings"):
        reused, recomputed = pq.read_table(run_dir / dataset), pq.read_table(tmp_path / dataset)
        assert reused.num_rows == 1000 - N_DELETED + N_NEW
        assert reused.equals(recomputed), dataset

    html = (run_dir / "report" / "index.html").read_text()
    assert "What changed" in html and "Update policy <b>refresh</b>" in html
    metrics = read_json(run_dir / "report" / "metrics.json")
    assert metrics["update"]["changes"] == update["changes"]
    moves = metrics["update"]["moves"]
    reasons = ("text_changed", "cluster_vanished", "refitted")
    assert moves["n_moved"] == sum(moves[f"n_moved_{why}"] for why in reasons)

    # The same run id again with other update settings would mix both policies' outputs.
    from udl.errors import ConfigError

    with pytest.raises(ConfigError, match="started with update settings"):
        clustering_pipeline(_config(nights["night2"], output, "night2", policy="frozen"))

    before, after = _assignments(first), _assignments(run_dir)
    assert len(after) == 1000 - N_DELETED + N_NEW and after.index.is_unique
    kept = before.index.intersection(after.index)
    same = (before.loc[kept, "cluster_id"] == after.loc[kept, "cluster_id"]).mean()
    # k-means warm-started from the first night's centroids: the clusters continue, and
    # documents keep their ids unless a boundary moved under them.
    assert same >= 0.97


def test_frozen_keeps_every_cluster_and_joins_new_texts_to_the_nearest(
    nights: dict[str, Path],
) -> None:
    from udl.cluster.kmeans import NearestCentroids
    from udl.datasets import read_embeddings

    output, run_dir, update = _second_night(nights, "frozen")
    assert update["policy"] == "frozen" and update["clusters"] == "kept"
    before, after = _assignments(output / "runs" / "night1"), _assignments(run_dir)
    unchanged = [i for i in after.index if i in before.index][N_CHANGED:]
    columns = ["cluster_id", "distance", "confidence", S.STATUS]
    pd.testing.assert_frame_equal(after.loc[unchanged, columns], before.loc[unchanged, columns])
    assert set(after["run_id"]) == {"night2"}

    fresh = [i for i in after.index if i not in unchanged]
    assert len(fresh) == N_NEW + N_CHANGED
    ids, vectors, _ = read_embeddings(run_dir / "embeddings")
    rows = [ids.index(i) for i in fresh]
    centroids = np.load(output / "runs" / "night1" / "models" / "centroids.npy")
    nearest = NearestCentroids(centroids, "cosine").predict(vectors[rows])[0]
    assert after.loc[fresh, "cluster_id"].tolist() == nearest.tolist()


def test_an_unchanged_corpus_embeds_nothing_and_gives_the_same_assignments(
    nights: dict[str, Path],
) -> None:
    from flows.pipeline import clustering_pipeline

    output = _copy_output(nights, "unchanged")
    first = output / "runs" / "night1"
    run_dir = Path(
        clustering_pipeline(_config(first / "corpus", output, "again", policy="refresh"))
    )
    update = read_json(run_dir / "update.json")
    assert update["changes"]["computed"] == 0 and update["clusters"] == "kept"
    assert read_json(run_dir / "manifest.json")["steps"]["embed"]["computed"] == 0
    for dataset in ("features", "embeddings"):
        assert pq.read_table(run_dir / dataset).equals(pq.read_table(first / dataset))
    before = pq.read_table(first / "assignments").drop_columns(["run_id"])
    assert pq.read_table(run_dir / "assignments").drop_columns(["run_id"]).equals(before)


def test_drift_past_the_threshold_escalates_the_policy(
    nights: dict[str, Path], sample_frame: pd.DataFrame
) -> None:
    from flows.pipeline import clustering_pipeline

    output = _copy_output(nights, "drift")
    first = pd.read_parquet(output / "runs" / "night1" / "corpus")
    # A night of documents from classes the first night never saw.
    other = sample_frame[~sample_frame["label"].isin(first["label"])].head(300)
    corpus = nights["root"] / "drifted.parquet"
    pd.concat([first[["doc_id", "text", "label"]], other]).to_parquet(corpus, index=False)
    config = _config(corpus, output, "drifted", policy="frozen", drift_threshold=0.2)
    run_dir = Path(clustering_pipeline(config.with_overrides({"update.on_drift": "refresh"})))
    update = read_json(run_dir / "update.json")
    assert update["drift"]["n_checked"] == 300 and update["drift"]["exceeded"]
    assert update["drift"]["far_share"] > 0.2
    assert update["policy"] == "refresh" and update["clusters"] == "fitted"


def test_changed_settings_run_in_full(nights: dict[str, Path]) -> None:
    from flows.pipeline import clustering_pipeline

    output = _copy_output(nights, "settings")
    config = _config(nights["night2"], output, "wider", policy="refresh")
    run_dir = Path(clustering_pipeline(config.with_overrides({"preprocess.min_df": 3})))
    update = read_json(run_dir / "update.json")
    assert update["policy"] == "full" and "preprocess settings differ" in update["reason"]
    assert read_json(run_dir / "manifest.json")["steps"]["embed"]["n_train"] > 0


def test_a_night_that_adds_a_file_links_the_parts_of_the_others(
    prefect_harness: None, small_corpus: Path, sample_frame: pd.DataFrame, tmp_path: Path
) -> None:
    """Parts of 250 documents: the second night's input folder holds the first night's file
    and a new one, so its first four corpus parts are the first night's, and so are its
    features and embeddings parts (the same files, hard-linked); only the new file's
    documents are computed and written."""
    from flows.pipeline import clustering_pipeline
    from udl.storage import dataset_parts

    first = pd.read_parquet(small_corpus)
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    first.to_parquet(inputs / "a.parquet", index=False)

    def night(run_id: str, **update: object) -> Path:
        config = _config(inputs, output, run_id, **update)
        return Path(clustering_pipeline(config.with_overrides({"input.partition_rows": 250})))

    night1 = night("night1")
    new = sample_frame[~sample_frame["text"].isin(first["text"])].head(20).copy()
    new["doc_id"] = [f"new-{i}" for i in range(len(new))]
    new.to_parquet(inputs / "b.parquet", index=False)
    night2 = night("night2", policy="frozen")

    assert read_json(night2 / "update.json")["changes"]["computed"] == 20
    for step, dataset in (("preprocess", "features"), ("embed", "embeddings")):
        assert read_json(night2 / "steps" / f"{step}.json")["parts_linked"] == 4
        before, after = dataset_parts(night1 / dataset), dataset_parts(night2 / dataset)
        assert [p.stat().st_ino for p in after[:4]] == [p.stat().st_ino for p in before]
        assert len(after) == 5 and pq.read_table(after[4]).num_rows == 20
    ids = pq.read_table(night2 / "assignments", columns=[S.DOC_ID]).column(S.DOC_ID)
    assert ids.to_pylist() == [*first["doc_id"], *new["doc_id"]]


def test_a_nights_report_sample_comes_from_the_last_sample_and_its_computed_texts(
    nights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's sample of 100 documents of 1,010: the 100 with features whose seeded id
    hashes are smallest. Night 2 takes their vectors from night 1's kept sample (110 rows)
    and from its own computed texts, never from its embeddings parts, and gets the sample
    that reading the parts gives, whatever the seed. With part of the kept sample lost, the
    parts give the rest; a kept sample of other embeddings, or an empty one, is not used."""
    from flows.pipeline import clustering_pipeline
    from udl import report_sample
    from udl.datasets import RunLayout, no_features_mask, read_embeddings
    from udl.lineage import recorded_key

    output = _copy_output(nights, "sample")
    clustering_pipeline(_config(nights["night2"], output, "night2", policy="frozen"))
    first, second = RunLayout(output, "night1"), RunLayout(output, "night2")
    embed = read_json(second.step_record("embed"))
    assert embed["reused_key"] == recorded_key(first, "embed")
    written = pq.read_schema(second.report_sample).metadata[report_sample.EMBED_KEY]
    assert written == embed["key"].encode()  # the pipeline's report kept its sample
    reused = report_sample.Reused(first, embed["reused_key"])

    opened: list[Path] = []

    class Recorded(report_sample.PartRows):
        def __init__(self, folder: Path, *args: object, **kwargs: object) -> None:
            opened.append(folder)
            super().__init__(folder, *args, **kwargs)

    def check(size: int, seed: int, parts_read: bool) -> report_sample.Sample:
        opened.clear()
        taken = report_sample.read_sample(second, size, seed, reused)
        assert (second.embeddings in opened) == parts_read, seed
        opened.clear()
        read = report_sample.read_sample(second, size, seed)
        assert second.embeddings in opened
        for got, expected in zip(
            (taken.x, taken.clusters, taken.anomaly),
            (read.x, read.clusters, read.anomaly),
            strict=True,
        ):
            np.testing.assert_array_equal(got, expected)
        return read

    monkeypatch.setattr(report_sample, "PartRows", Recorded)
    size = 100
    for seed in range(8):
        report_sample.read_sample(first, size, seed)  # night 1's report, at this size
        assert pq.read_metadata(first.report_sample).num_rows == 110
        read = check(size, seed, parts_read=False)

    # Brute force over every document: the sample is the `size` smallest keys.
    assignments = pq.read_table(second.assignments)
    eligible = np.flatnonzero(~no_features_mask(assignments))
    keys = report_sample._keys(assignments.column(S.DOC_ID).take(eligible), seed)
    rows = np.sort(eligible[np.argsort(keys, kind="stable")[:size]])
    _, vectors, anomaly = read_embeddings(second.embeddings)
    np.testing.assert_array_equal(read.x, vectors[rows])
    np.testing.assert_array_equal(read.anomaly, anomaly[rows])
    clusters = assignments.column(S.CLUSTER_ID).to_numpy()[rows]
    np.testing.assert_array_equal(read.clusters, clusters)

    # Half the kept rows lost: the other half still comes from them, the rest from the parts.
    report_sample.read_sample(first, size, seed)
    kept = pq.read_table(first.report_sample)
    pq.write_table(kept.slice(0, 55), first.report_sample)
    check(size, seed, parts_read=True)
    for stale in (kept.replace_schema_metadata({report_sample.EMBED_KEY: b"other"}), kept[:0]):
        pq.write_table(stale, first.report_sample)
        check(size, seed, parts_read=True)
