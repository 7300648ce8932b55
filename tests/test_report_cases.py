"""The report in every shape a run can take (issue 22): unlabelled, DBSCAN with noise and a
single cluster, warnings from the steps, documents without features, rejected rows by
reason, and runs written before the `status`/`has_features` columns existed.

Every report here is rendered with `jinja2.StrictUndefined`, so a template key that a kind of
run lacks fails here rather than in front of a user. Runs are synthesised as in
`tests/test_report.py` (real TF-IDF step, real schemas).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jinja2 import StrictUndefined

from tests.test_report import CONFIG, STEPS, write_run
from udl import schema as S
from udl.datasets import RunLayout
from udl.report import build_report
from udl.storage import write_part

TOPICS = ["cooking", "astronomy", "football"]
DBSCAN = {
    "algorithm": "dbscan",
    "metric": "l2",
    "k": None,
    "eps": 0.31,
    "min_samples": 5,
    "selection": {"rule": "k-distance knee", "eps": 0.31, "min_samples": 5, "sample_size": 126},
    "seconds": 0.5,
    "warnings": [],
}


def _report(layout: RunLayout, steps: dict = STEPS):
    return build_report(layout, CONFIG, steps, previous=None, undefined=StrictUndefined)


def test_unlabelled_run_has_no_label_scores_22(tmp_path: Path) -> None:
    layout, _, _ = write_run(tmp_path, "plain", TOPICS, n_parts=2, labelled=False)
    result = _report(layout)
    assert not {"nmi", "ari", "acc", "n_labelled"} & set(result.metrics)
    html = result.html_path.read_text()
    assert "Labels × clusters" not in html and "silhouette" in html
    assert "| nmi |" not in result.summary_markdown()


def test_dbscan_run_with_noise_and_candidate_scan_22(tmp_path: Path) -> None:
    layout, _, _ = write_run(tmp_path, "dbscan", TOPICS, n_parts=2)
    candidates = [
        {"eps": 0.2, "n_clusters": 5, "noise_share": 0.3, "silhouette": 0.41},
        {"eps": 0.31, "n_clusters": 3, "noise_share": 0.05, "silhouette": 0.62},
    ]
    steps = {
        **STEPS,
        "cluster": {
            **DBSCAN,
            "selection": {"chosen": 0.31, "rule": "scan", "candidates": candidates},
        },
    }
    result = _report(layout, steps)
    assert result.metrics["n_noise"] == 6 and result.metrics["eps"] == 0.31
    html = result.html_path.read_text()
    assert "<h3>Choice of eps</h3>" in html
    assert '<tr style="font-weight:bold"><td class="num">0.3100</td>' in html


def test_missing_internal_scores_say_why_22(tmp_path: Path) -> None:
    """One cluster plus noise: silhouette, CH and DB are undefined, and the report says why."""
    layout, _, _ = write_run(tmp_path, "one", ["cooking"], n_parts=1)
    result = _report(layout, {**STEPS, "cluster": DBSCAN})
    reason = result.metrics["internal_metrics_reason"]
    assert result.metrics["silhouette"] is None
    assert reason.startswith("the sample of 46 documents has 40 outside noise, in 1 cluster")
    html = result.html_path.read_text()
    assert html.count(f'<td class="muted">not computed: {reason}') == 3  # sil., CH, DB
    assert result.metrics["warnings"] == [f"Internal scores are not computed: {reason}."]


def test_step_warnings_shown_in_a_banner_22(tmp_path: Path) -> None:
    layout, _, _ = write_run(tmp_path, "warned", TOPICS, n_parts=1)
    degenerate = "DBSCAN: one cluster holds 97.6% of the documents; try a smaller --eps"
    steps = {
        "ingest": {**STEPS["ingest"], "warnings": ["2 rows rejected"]},
        "cluster": {**STEPS["cluster"], "warnings": [degenerate, "2 rows rejected"]},
    }
    result = _report(layout, steps)
    assert result.metrics["warnings"] == ["2 rows rejected", degenerate]
    written = json.loads(result.metrics_path.read_text())
    assert written["warnings"] == result.metrics["warnings"]
    html = result.html_path.read_text()
    banner = html.split('<div class="warnings" id="warnings" role="alert">')[1].split("</div>")[0]
    assert "2 warnings" in banner and "one cluster holds 97.6%" in banner
    # The banner sits at the top, before the metrics.
    assert html.index('id="warnings"') < html.index('id="metrics"')
    assert f"- {degenerate}" in result.summary_markdown()


def test_no_warning_no_banner_22(tmp_path: Path) -> None:
    layout, _, _ = write_run(tmp_path, "quiet", TOPICS, n_parts=1)
    result = _report(layout)
    assert result.metrics["warnings"] == []
    assert 'id="warnings"' not in result.html_path.read_text()


def test_documents_without_features_are_set_apart_22(tmp_path: Path) -> None:
    """They share one vector and the highest anomaly score: without the status they would be
    every top outlier and a cluster's representatives."""
    layout, _, _ = write_run(tmp_path, "empty", TOPICS, n_parts=3, n_no_features=12)
    result = _report(layout)
    description = result.description
    shown = [e.doc_id for e in description.outliers]
    shown += [e.doc_id for c in description.clusters for e in c.examples]
    shown += [e.doc_id for e in description.noise.examples] if description.noise else []
    assert shown and not [doc_id for doc_id in shown if doc_id.startswith("empty-")]
    assert result.metrics["n_no_features"] == description.n_no_features == 12
    assert (result.metrics["n_docs"], result.metrics["n_noise"]) == (138, 6)
    assert result.metrics["sample_sizes"]["internal_metrics"] == 126
    # The anomaly threshold is the top 5% of the documents with features.
    assert description.n_outliers_flagged == round(0.05 * 126)
    assert [e.doc_id.startswith("empty-") for e in description.no_features_examples] == [True] * 3
    html = result.html_path.read_text()
    assert "12 documents have no features: every token of the text was dropped" in html
    assert '<td class="id">empty-' in html


def test_runs_without_status_columns_still_report_22(tmp_path: Path) -> None:
    layout, _, _ = write_run(tmp_path, "old", TOPICS, n_parts=2, legacy=True)
    assert "status" not in pq.read_schema(next(layout.assignments.iterdir())).names
    result = _report(layout)
    assert (result.metrics["n_noise"], result.metrics["n_no_features"]) == (6, 0)
    assert "Documents without features" not in result.html_path.read_text()


def _write_rejects(layout: RunLayout) -> None:
    rows = [
        ("bad_row", 3, 4, "expected 3 fields, got 4"),
        ("duplicate_id", 9, 12, "doc_id a-1 already at record 2 (line 2)"),
        ("bad_row", 7, 10, "expected 3 fields, got 2"),
        ("empty_text", 8, 11, "text is empty after stripping"),
    ]
    table = pa.table(
        {
            S.SOURCE: ["in.csv"] * len(rows),
            S.ROW: [r[1] for r in rows],
            S.LINE: [r[2] for r in rows],
            S.DOC_ID: ["x"] * len(rows),
            S.REASON: [r[0] for r in rows],
            S.DETAIL: [r[3] for r in rows],
            S.RAW: ["raw"] * len(rows),
        },
        schema=S.REJECTS_SCHEMA,
    )
    layout.rejects.mkdir(parents=True, exist_ok=True)
    write_part(table.slice(0, 2), layout.rejects, 0)
    write_part(table.slice(2), layout.rejects, 1)


@pytest.mark.parametrize("recorded", [True, False], ids=["step-record", "old-run"])
def test_rejects_by_reason_22(tmp_path: Path, recorded: bool) -> None:
    layout, _, _ = write_run(tmp_path, "rejects", TOPICS, n_parts=1)
    _write_rejects(layout)
    by_reason = {"bad_row": 2, "duplicate_id": 1, "empty_text": 1}
    ingest = {"rows_rejected": 4, "seconds": 0.1}
    if recorded:
        ingest["rejected_by_reason"] = by_reason
    result = _report(layout, {**STEPS, "ingest": ingest})
    table = result.metrics["rejects_by_reason"]
    assert [(r["reason"], r["count"]) for r in table] == list(by_reason.items())
    assert table[0] == {
        "reason": "bad_row",
        "count": 2,
        "example_detail": "expected 3 fields, got 4",
        "example_row": 3,
        "example_line": 4,
    }
    html = result.html_path.read_text()
    assert "record 9, line 12: doc_id a-1 already at record 2 (line 2)" in html


def test_no_rejects_22(tmp_path: Path) -> None:
    layout, _, _ = write_run(tmp_path, "clean", TOPICS, n_parts=1)
    result = _report(layout, {**STEPS, "ingest": {"rows_rejected": 0, "seconds": 0.1}})
    assert result.metrics["rejects_by_reason"] == []
    assert "No row was rejected at ingest." in result.html_path.read_text()
