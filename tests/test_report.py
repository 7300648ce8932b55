"""The report of a run (issue 6): keywords, representatives, streamed equals in-memory,
comparison with the previous run, artifacts' content, and the HTML in a real headless browser.

Runs are synthesised: a corpus with obvious topics goes through the real TF-IDF step
(`compute_features`), and embeddings/assignments are written in the real schemas, so these
tests take seconds and need no encoder training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pytest
from jinja2 import StrictUndefined
from matplotlib.image import imread
from sklearn import metrics as skm

from udl import schema as S
from udl.config import PipelineConfig, PreprocessConfig, ReportConfig
from udl.datasets import RunLayout, mark_latest
from udl.features import compute_features
from udl.report import build_report
from udl.storage import write_json_atomic, write_part

REPO = Path(__file__).resolve().parents[1]
_WORDS = {
    "cooking": "flour oven bake recipe butter sugar dough knead whisk simmer",
    "astronomy": "galaxy telescope orbit planet comet nebula stellar asteroid eclipse quasar",
    "football": "goal striker referee penalty midfield tackle stadium league keeper offside",
    "gardening": "compost seedling prune mulch trowel hedge tulip weeding soil greenhouse",
}
TOPICS = {topic: words.split() for topic, words in _WORDS.items()}
# Where each topic sits in embedding space, fixed per topic so that two runs agree.
CENTERS = {name: np.eye(8, dtype=np.float32)[i] * 6 for i, name in enumerate(TOPICS)}
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)> flour oven bake'
CONFIG = PipelineConfig(
    preprocess=PreprocessConfig(n_features=2**12),
    report=ReportConfig(metrics_sample=10_000, map_sample=100, n_examples=3, outlier_fraction=0.05),
)
STEPS = {
    "ingest": {"rows_rejected": 2, "seconds": 0.5},
    "cluster": {
        "algorithm": "kmeans",
        "metric": "l2",
        "k": 3,
        "eps": None,
        "min_samples": None,
        "selection": {},
        "seconds": 0.25,
    },
}


# Cluster marker of the synthetic documents without features (written as cluster -1).
NO_FEATURES = -2


def _documents(
    topics: list[str], seed: int, n_no_features: int = 0
) -> list[tuple[str, str, str | None, int]]:
    """(doc_id, text, label, cluster): 40 documents per topic, 6 noise documents, then
    `n_no_features` one-word documents whose word no other document has (min_df prunes it)."""
    rng = np.random.default_rng(seed)
    docs = []
    for cluster, topic in enumerate(topics):
        for i in range(40):
            words = [*rng.choice(TOPICS[topic], 6, replace=False), *(["report"] * (i % 3 == 0))]
            label = None if i == 39 else topic  # one unlabelled document per topic
            docs.append((f"{topic}-{i}", " ".join(words), label, cluster))
    docs[0] = (docs[0][0], HOSTILE, docs[0][2], docs[0][3])
    everything = [w for t in topics for w in TOPICS[t]]
    docs += [(f"noise-{i}", " ".join(rng.choice(everything, 5)), "mixed", -1) for i in range(6)]
    docs += [(f"empty-{i}", f"hapax{i}", "mixed", NO_FEATURES) for i in range(n_no_features)]
    return [docs[i] for i in rng.permutation(len(docs))]


def _status(cluster: int) -> str:
    return {NO_FEATURES: "no_features", -1: "noise"}.get(cluster, "clustered")


def write_run(
    output_dir: Path,
    run_id: str,
    topics: list[str],
    n_parts: int,
    seed: int = 0,
    *,
    n_no_features: int = 0,
    labelled: bool = True,
    legacy: bool = False,
):
    """A completed run (corpus, features, embeddings, assignments, centroids) in `n_parts`.

    Documents without features get what the embed step gives them (one shared vector, the
    highest anomaly score) and cluster -1 with status ``no_features``. `legacy` writes the
    datasets as runs did before ``has_features`` and ``status`` existed.
    """
    layout = RunLayout(output_dir, run_id)
    docs = _documents(topics, seed, n_no_features)
    rng = np.random.default_rng(seed + 1)
    marked = np.array([d[3] for d in docs], np.int32)
    clusters = np.maximum(marked, -1)
    centers = np.stack([CENTERS[t] for t in topics])
    x = rng.normal(scale=0.5, size=(len(docs), 8)).astype(np.float32)
    x[clusters >= 0] += centers[clusters[clusters >= 0]]
    x[marked == NO_FEATURES] = 0.25
    distance = np.linalg.norm(x - centers[np.maximum(clusters, 0)], axis=1).astype(np.float32)
    distance[marked == NO_FEATURES] = np.nan
    anomaly = rng.random(len(docs)).astype(np.float32) * 0.9
    anomaly[marked == NO_FEATURES] = 1.0
    label_field = [pa.field(S.LABEL, pa.string())] if labelled else []
    new_fields = {S.HAS_FEATURES, S.STATUS} if legacy else set()
    emb_schema = pa.schema([f for f in S.embeddings_schema(8) if f.name not in new_fields])
    assign_schema = pa.schema(
        [f for f in S.ASSIGNMENTS_SCHEMA if f.name not in new_fields] + label_field
    )
    for folder in (layout.corpus, layout.embeddings, layout.assignments):
        folder.mkdir(parents=True)
    for index, rows in enumerate(np.array_split(np.arange(len(docs)), n_parts)):
        ids = [docs[i][0] for i in rows]
        labels = {S.LABEL: [docs[i][2] for i in rows]} if labelled else {}
        corpus = {
            S.DOC_ID: ids,
            S.TEXT: [docs[i][1] for i in rows],
            S.SOURCE: ["synthetic"] * len(rows),
            S.ROW: rows,
            S.TRUNCATED: [False] * len(rows),
            **labels,
        }
        corpus_schema = pa.schema([*S.CORPUS_FIELDS, *label_field])
        write_part(pa.table(corpus, schema=corpus_schema), layout.corpus, index)
        embeddings = {
            S.DOC_ID: ids,
            S.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), 8),
            S.ANOMALY: anomaly[rows],
            S.HAS_FEATURES: marked[rows] != NO_FEATURES,
        }
        write_part(_table(embeddings, emb_schema), layout.embeddings, index)
        assignments = {
            S.DOC_ID: ids,
            S.CLUSTER_ID: clusters[rows],
            S.DISTANCE: distance[rows],
            S.CONFIDENCE: np.where(marked[rows] == NO_FEATURES, 0, 1).astype(np.float32),
            S.RUN_ID: [run_id] * len(rows),
            S.STATUS: [_status(c) for c in marked[rows]],
            **labels,
        }
        write_part(_table(assignments, assign_schema), layout.assignments, index)
    # Dask bags default to a process pool; a synchronous scheduler keeps tiny runs fast.
    with dask.config.set(scheduler="synchronous"):
        compute_features(layout.corpus, layout.features, layout.models, CONFIG.preprocess)
    np.save(layout.models / "centroids.npy", centers)
    return layout, docs, distance


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    """The columns that `schema` names, in its order and types."""
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    """A first run (cooking, astronomy, football) reported, marked latest, then a second run
    (cooking, astronomy, gardening) reported against it."""
    output = tmp_path_factory.mktemp("runs")
    first, _, _ = write_run(output, "run-1", ["cooking", "astronomy", "football"], n_parts=1)
    build_report(first, CONFIG, STEPS, undefined=StrictUndefined)
    mark_latest(first)
    second, docs, distance = write_run(
        output, "run-2", ["cooking", "astronomy", "gardening"], n_parts=3, seed=1
    )
    result = build_report(second, CONFIG, STEPS, previous=first, undefined=StrictUndefined)
    return result, second, docs, distance


def test_keywords_are_the_topic_words_6(report) -> None:
    result, _, _, _ = report
    by_topic = {c.keywords[0]: c for c in result.description.clusters}
    for cluster in result.description.clusters:
        topic = next(t for t, words in TOPICS.items() if cluster.keywords[0] in words)
        assert set(cluster.keywords[:5]) <= set(TOPICS[topic]), cluster.keywords
        assert not any(k.isdigit() for k in cluster.keywords)  # words, never hash ids
    # "report" is in a third of every topic's documents: class-based IDF keeps it out.
    assert all("report" not in c.keywords[:5] for c in by_topic.values())


def test_sizes_representatives_and_noise_6(report) -> None:
    result, _, docs, distance = report
    clusters = np.array([d[3] for d in docs])
    for summary in result.description.clusters:
        members = np.flatnonzero(clusters == summary.cluster_id)
        assert summary.size == len(members) == 40
        assert summary.share == pytest.approx(40 / len(docs))
        nearest = members[np.argsort(distance[members], kind="stable")[:3]]
        assert [e.doc_id for e in summary.examples] == [docs[i][0] for i in nearest]
    assert result.description.noise is not None and result.description.noise.size == 6
    # The anomaly threshold comes from a sample that here is the whole corpus: exact top 5%.
    assert result.description.n_outliers_flagged == round(0.05 * len(docs))


def test_metrics_json_contract_and_label_scores_6(report) -> None:
    result, _, docs, _ = report
    written = json.loads(result.metrics_path.read_text())
    contract = [
        "n_docs",
        "n_clusters",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "nmi",
        "ari",
        "acc",
        "timings",
    ]
    assert set(contract) <= set(written)
    assert (written["n_docs"], written["n_clusters"], written["n_noise"]) == (126, 3, 6)
    labelled = [(d[2], d[3]) for d in docs if d[2] is not None]
    truth, pred = np.array([t for t, _ in labelled]), np.array([p for _, p in labelled])
    assert written["nmi"] == pytest.approx(skm.normalized_mutual_info_score(truth, pred))
    assert written["ari"] == pytest.approx(skm.adjusted_rand_score(truth, pred))
    assert written["homogeneity"] == pytest.approx(skm.homogeneity_score(truth, pred))
    assert written["n_labelled"] == len(labelled)
    assert written["sample_sizes"]["internal_metrics"] == len(docs)
    assert written["sample_sizes"]["internal_metrics_clustered"] == len(docs) - 6
    # The report times itself too (issue 22: the timings table omitted the report step).
    report_seconds = written["timings"].pop("report")
    assert written["timings"] == {"ingest": 0.5, "cluster": 0.25} and report_seconds > 0
    assert [c["size"] for c in written["clusters"]] == [40, 40, 40]


def test_runs_in_different_spaces_are_compared_by_metrics_only(tmp_path: Path) -> None:
    first, _, _ = write_run(tmp_path, "run-1", ["cooking", "astronomy", "football"], n_parts=1)
    write_json_atomic(first.step_record("embed"), {"space": "trained:embed-aaa"})
    build_report(first, CONFIG, STEPS)
    second, _, _ = write_run(tmp_path, "run-2", ["cooking", "astronomy", "football"], n_parts=1)
    write_json_atomic(second.step_record("embed"), {"space": "trained:embed-bbb"})
    comparison = build_report(second, CONFIG, STEPS, previous=first).metrics["comparison"]
    assert comparison["matched_by"] == "none" and comparison["n_matched"] == 0
    assert "different spaces" in comparison["note"]
    assert comparison["metric_deltas"]["silhouette"]["delta"] == pytest.approx(0.0, abs=0.05)


def test_streamed_parts_equal_one_part_6(report, tmp_path: Path) -> None:
    """The same run in 3 parts (fixture) and in 1 part gives the same report content."""
    result, _, _, _ = report
    one, _, _ = write_run(tmp_path, "one-part", ["cooking", "astronomy", "gardening"], 1, seed=1)
    single = build_report(one, CONFIG, STEPS, previous=None)
    assert single.description == result.description
    for name in ["silhouette", "calinski_harabasz", "davies_bouldin", "nmi", "ari", "acc"]:
        assert single.metrics[name] == pytest.approx(result.metrics[name])


def test_comparison_with_previous_run_6(report) -> None:
    result, _, _, _ = report
    comparison = result.metrics["comparison"]
    assert comparison["previous_run_id"] == "run-1"
    assert comparison["matched_by"] == "centroids"
    assert [c["keywords"][0] in TOPICS["gardening"] for c in comparison["appeared"]] == [True]
    assert [c["keywords"][0] in TOPICS["football"] for c in comparison["vanished"]] == [True]
    assert comparison["n_matched"] == 2 and comparison["moved"] == []
    assert set(comparison["metric_deltas"]) >= {"silhouette", "nmi", "ari", "acc"}
    markdown = result.summary_markdown()
    assert "Compared with run `run-1`: 1 clusters appeared, 1 vanished, 0 moved." in markdown
    assert result.html_path.resolve().as_uri() in markdown
    assert [row["size"] for row in result.cluster_rows()] == [40, 40, 40]


def test_a_previous_run_without_a_report_is_not_compared_and_says_so(tmp_path: Path) -> None:
    first, _, _ = write_run(tmp_path, "run-1", ["cooking", "astronomy", "football"], n_parts=1)
    second, _, _ = write_run(tmp_path, "run-2", ["cooking", "astronomy", "football"], n_parts=1)
    metrics = build_report(second, CONFIG, STEPS, previous=first).metrics
    assert "comparison" not in metrics
    assert any("Not compared with the previous run run-1" in w for w in metrics["warnings"])


def _copy_runs(report, tmp_path: Path) -> RunLayout:
    """The fixture's output folder copied, so a test can rewrite a report without side effects."""
    _, layout, _, _ = report
    shutil.copytree(layout.output_dir, tmp_path / "output", symlinks=True)
    return RunLayout(tmp_path / "output", layout.run_id)


def _recluster(layout: RunLayout, previous_models: Path) -> None:
    """Cluster the run's embeddings again with the real clustering step, following
    `previous_models`, so that ``models/alignment.json`` is what that step writes."""
    from udl.cluster.assign import cluster_embeddings
    from udl.config import ClusterConfig

    shutil.rmtree(layout.assignments)
    config = ClusterConfig(k=3, metric="l2", spherical=False)
    cluster_embeddings(
        layout.embeddings,
        layout.corpus,
        layout.assignments,
        layout.models,
        config,
        layout.run_id,
        0,
        previous_models,
    )


def test_alignment_json_decides_the_pairs_6(report, tmp_path: Path) -> None:
    layout = _copy_runs(report, tmp_path)
    first = RunLayout(layout.output_dir, "run-1")
    _recluster(layout, first.models)
    assert json.loads((layout.models / "alignment.json").read_text())["status"] == "aligned"
    result = build_report(layout, CONFIG, STEPS, previous=first)
    comparison = result.metrics["comparison"]
    assert comparison["matched_by"] == "alignment"
    assert [c["keywords"][0] in TOPICS["gardening"] for c in comparison["appeared"]] == [True]
    assert [c["keywords"][0] in TOPICS["football"] for c in comparison["vanished"]] == [True]


def test_alignment_with_another_run_is_ignored_22(report, tmp_path: Path) -> None:
    """alignment.json names the run it followed by ``previous_models``; one made against
    another run must not decide this comparison's pairs."""
    layout = _copy_runs(report, tmp_path)
    other = RunLayout(layout.output_dir, "run-0")
    other.models.mkdir(parents=True)
    shutil.copyfile(layout.models / "centroids.npy", other.models / "centroids.npy")
    _recluster(layout, other.models)
    result = build_report(layout, CONFIG, STEPS, previous=RunLayout(layout.output_dir, "run-1"))
    assert result.metrics["comparison"]["matched_by"] == "centroids"


def test_skipped_alignment_falls_back_to_centroids_22(report, tmp_path: Path) -> None:
    """The clustering step records a skipped alignment (no mapping) when the previous run's
    centroids cannot be used, e.g. another embedding dimension."""
    layout = _copy_runs(report, tmp_path)
    first = RunLayout(layout.output_dir, "run-1")
    np.save(first.models / "centroids.npy", np.eye(3, 4, dtype=np.float32))
    _recluster(layout, first.models)
    record = json.loads((layout.models / "alignment.json").read_text())
    assert record["status"] == "skipped" and "mapping" not in record
    result = build_report(layout, CONFIG, STEPS, previous=first)
    assert result.metrics["comparison"]["matched_by"] == "none"
    assert "Clusters not compared" in result.html_path.read_text()


def test_map_uses_umap_when_installed_6(
    report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _copy_runs(report, tmp_path)
    calls = []

    class FakeUMAP:
        def __init__(self, **params) -> None:
            calls.append(params)

        def fit_transform(self, x):
            return np.asarray(x)[:, :2]

    fake = types.ModuleType("umap")
    fake.__spec__ = ModuleSpec("umap", None)
    fake.UMAP = FakeUMAP
    monkeypatch.setitem(sys.modules, "umap", fake)
    build_report(layout, CONFIG, STEPS, previous=None)
    assert calls == [{"n_components": 2, "metric": "euclidean", "random_state": 0}]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "The report test renders the HTML in a real headless browser and found none on PATH. "
        "Install Chromium: `apt-get install -y chromium` (Debian/Ubuntu, as root; "
        "`make install` does it), then rerun."
    )


def _browse(html: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Host rules make any network request fail, so the page is proven self-contained.
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args,
        html.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_html_renders_in_headless_browser_6(report, tmp_path: Path) -> None:
    result, _, _, _ = report
    html = result.html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing remote
    dom = _browse(result.html_path, tmp_path / "profile", "--dump-dom").stdout
    for section in ["summary", "metrics", "comparison", "figures", "clusters", "outliers"]:
        assert f'id="{section}"' in dom, section
    assert dom.count('src="data:image/png;base64,') == 4  # sizes, map, silhouette, confusion
    for text in [
        "2-D map of a sample of embeddings",
        "Silhouette per cluster",
        "Labels × clusters",
        "Appeared",
        "Vanished",
        "noise (cluster -1)",
    ]:
        assert text in dom, text
    # Untrusted text is shown as text: no script element ran or was created.
    assert "<script" not in dom and "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    assert "&lt;script&gt;document.title" in dom

    shot = tmp_path / "report.png"
    _browse(
        result.html_path, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000"
    )
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    # The size bars' colour (#4a7ab5) is painted only if the embedded PNGs decoded.
    assert np.all(np.abs(pixels - [0x4A, 0x7A, 0xB5]) <= 2, axis=-1).sum() > 2000
    target = Path(
        os.environ.get("UDL_REPORT_SCREENSHOT", REPO / ".bench" / "report-screenshot.png")
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, target)
