"""The report at realistic k, in a real browser (issue 22): runs with 50 and 150 clusters are
synthesised (real TF-IDF step, real schemas), reported, and opened in headless Chromium.

Readability is measured in the rendered page, by a probe script added to a copy of the HTML
(the report itself carries no script): the page needs no horizontal scrolling, every figure is
shown at its natural size (so its text is never scaled below what `udl.figures` measured as
non-overlapping), and no document id wraps. A screenshot of each is kept for people to look
at (``$UDL_REPORT_SCREENSHOT_DIR``, default ``.bench/``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pytest
from jinja2 import StrictUndefined
from matplotlib.image import imread

from tests.test_report import CONFIG, _browse
from udl import schema as S
from udl.config import PipelineConfig, ReportConfig
from udl.datasets import RunLayout
from udl.features import compute_features
from udl.report import build_report
from udl.storage import write_part

REPO = Path(__file__).resolve().parents[1]
SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vos", "shi", "dar", "bel", "qui", "zor", "pam"]
# The default map sample, so that the map shows every cluster as it would in a real run.
REPORT_CONFIG = PipelineConfig(preprocess=CONFIG.preprocess, report=ReportConfig(map_sample=5000))
PROBE = """<script>
window.addEventListener("load", () => {
  const lines = (e) => { const r = document.createRange(); r.selectNodeContents(e);
    return new Set([...r.getClientRects()].map((b) => Math.round(b.top))).size; };
  const probe = {
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    images: [...document.images].map((i) => [i.alt, i.naturalWidth, i.getBoundingClientRect().width]),
    idLines: [...document.querySelectorAll(".id")].map((e) => [e.textContent, lines(e)]),
  };
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify(probe); document.body.appendChild(out);
});
</script>"""


def _word(i: int) -> str:
    """A distinct pronounceable word for every i (three syllables)."""
    n = len(SYLLABLES)
    return SYLLABLES[i % n] + SYLLABLES[i // n % n] + SYLLABLES[i // n // n % n]


def _write_run(output: Path, k: int, seed: int = 0) -> tuple[RunLayout, dict]:
    """k topic clusters of skewed sizes (6 own words each, plus common words), labels one per
    three clusters, long doc ids; embeddings in 16-d around one centre per cluster."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.2, k) + 1
    ids = np.concatenate([np.arange(k), rng.choice(k, 30 * k, p=weights / weights.sum())])
    n = len(ids)
    common = [_word(1000 + i) for i in range(20)]
    texts = [
        " ".join([*(_word(6 * c + j) for j in rng.choice(6, 4)), *rng.choice(common, 3)])
        for c in ids
    ]
    centres = rng.normal(scale=3, size=(k, 16)).astype(np.float32)
    x = centres[ids] + rng.normal(size=(n, 16)).astype(np.float32)
    layout = RunLayout(output, f"k{k}")
    columns = {
        S.DOC_ID: [f"collection-{c:04d}/document-{i:06d}.txt" for i, c in enumerate(ids)],
        S.LABEL: [f"class-{c // 3:03d}" for c in ids],
    }
    corpus = {
        **columns,
        S.TEXT: texts,
        S.SOURCE: ["synthetic"] * n,
        S.ROW: np.arange(n),
        S.TRUNCATED: [False] * n,
    }
    embeddings = {
        S.DOC_ID: columns[S.DOC_ID],
        S.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16),
        S.ANOMALY: rng.random(n).astype(np.float32),
        S.HAS_FEATURES: [True] * n,
    }
    assignments = {
        **columns,
        S.CLUSTER_ID: ids.astype(np.int32),
        S.DISTANCE: np.linalg.norm(x - centres[ids], axis=1),
        S.CONFIDENCE: np.ones(n, np.float32),
        S.RUN_ID: [layout.run_id] * n,
        S.STATUS: ["clustered"] * n,
    }
    label = pa.field(S.LABEL, pa.string())
    for folder, data, schema in [
        (layout.corpus, corpus, pa.schema([*S.CORPUS_FIELDS, label])),
        (layout.embeddings, embeddings, S.embeddings_schema(16)),
        (layout.assignments, assignments, S.ASSIGNMENTS_SCHEMA.append(label)),
    ]:
        folder.mkdir(parents=True)
        write_part(pa.table({f.name: data[f.name] for f in schema}, schema=schema), folder, 0)
    with dask.config.set(scheduler="synchronous"):
        compute_features(layout.corpus, layout.features, layout.models, REPORT_CONFIG.preprocess)
    steps = {
        "ingest": {"rows_rejected": 0, "seconds": 1.0, "warnings": []},
        "cluster": {"algorithm": "kmeans", "metric": "l2", "k": k, "seconds": 2.0},
    }
    return layout, steps


def _probe(html: Path, profile: Path) -> dict:
    probed = html.with_name("probed.html")
    probed.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    dom = _browse(
        probed, profile, "--dump-dom", "--virtual-time-budget=10000", "--window-size=1280,4000"
    )
    return json.loads(dom.stdout.split('<pre id="probe">')[1].split("</pre>")[0])


@pytest.mark.parametrize("k", [50, 150])
def test_report_readable_in_browser_22(k: int, tmp_path: Path) -> None:
    layout, steps = _write_run(tmp_path / "out", k)
    result = build_report(layout, REPORT_CONFIG, steps, previous=None, undefined=StrictUndefined)
    assert result.metrics["n_clusters"] == k

    probe = _probe(result.html_path, tmp_path / "profile")
    assert probe["scrollWidth"] <= probe["innerWidth"], "the page scrolls sideways"
    assert len(probe["images"]) == 4
    for alt, natural, shown in probe["images"]:
        assert natural > 0 and shown >= 0.98 * natural, f"{alt} shrunk to {shown}/{natural} px"
    assert probe["idLines"] and all(lines == 1 for _, lines in probe["idLines"])

    shot = tmp_path / f"report-k{k}.png"
    _browse(
        result.html_path, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,5200"
    )
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    # The size bars' colour (#4a7ab5) is painted only if the embedded PNGs decoded.
    assert np.all(np.abs(pixels - [0x4A, 0x7A, 0xB5]) <= 2, axis=-1).sum() > 2000
    target = Path(os.environ.get("UDL_REPORT_SCREENSHOT_DIR", REPO / ".bench"))
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, target / shot.name)
