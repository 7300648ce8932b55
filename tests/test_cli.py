"""The `udl` command line: documented options, precedence, and clear errors before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import _print_run, build_parser, config_from_args, main
from flows.summary import summary_lines

DOCUMENTED = [
    "--output",
    "--config",
    "--text-column",
    "--id-column",
    "--label-column",
    "--encoder",
    "--algorithm",
    "--k",
    "--eps",
    "--min-samples",
    "--metric",
    "--seed",
    "--warm-start",
    "--embedding-column",
    "--run-id",
    "--dask-address",
    "--epochs",
    "--dim",
    "--device",
]


def test_console_script_documents_every_option() -> None:
    udl = Path(sys.executable).with_name("udl")
    top = subprocess.run([udl, "--help"], capture_output=True, text=True, check=True).stdout
    assert "run" in top
    run = subprocess.run([udl, "run", "--help"], capture_output=True, text=True, check=True)
    for option in DOCUMENTED:
        assert option in run.stdout, option
    assert "autoencoder,attention,pretrained" in run.stdout.replace(" ", "")
    # Trying another k must not cost a new embedding: the help says how.
    assert "udl recluster --output DIR --from RUN --k N" in " ".join(run.stdout.split())


def test_options_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cluster:\n  k: 7\n  metric: l2\nruntime:\n  seed: 3\n", encoding="utf-8")
    args = build_parser().parse_args(
        [
            "run",
            "corpus.csv",
            "--output",
            str(tmp_path / "out"),
            "--config",
            str(path),
            "--k",
            "auto",
            "--label-column",
            "topic",
            "--metadata-column",
            "a",
            "--metadata-column",
            "b",
        ]
    )
    config = config_from_args(args)
    assert config.input.path == "corpus.csv"
    assert config.cluster.k == "auto"
    assert config.cluster.metric == "l2"
    assert config.runtime.seed == 3
    assert config.runtime.output_dir == str(tmp_path / "out")
    assert config.input.label_column == "topic"
    assert config.input.metadata_columns == ["a", "b"]


def test_invalid_k_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "x.csv", "--output", "o", "--k", "ten"])
    assert exc.value.code == 2
    assert "expected an integer or 'auto'" in capsys.readouterr().err


def test_invalid_config_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    code = main(["run", "corpus.csv", "--output", str(output), "--k", "1"])
    assert code == 2
    assert "cluster.k" in capsys.readouterr().err
    assert not output.exists()


def test_common_encoder_options_22(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["run", "c.csv", "-o", str(tmp_path), "--epochs", "3", "--dim", "32", "--device", "cpu"]
    )
    encoder = config_from_args(args).encoder
    assert (encoder.epochs, encoder.dim, encoder.device) == (3, 32, "cpu")


def test_last_lines_name_clusters_scores_and_report_22(
    cli_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _print_run(cli_run)
    out = capsys.readouterr().out.splitlines()
    metrics = json.loads((cli_run / "report" / "metrics.json").read_text())
    assert "clusters:    k=4 (k-means)" in out
    [scores] = [line for line in out if line.startswith("scores:")]
    for name in ("silhouette", "nmi", "ari", "acc"):
        assert f"{name} {metrics[name]:.3f}" in scores
    assert out[-1] == f"report:      {cli_run / 'report' / 'index.html'}"


def test_dbscan_summary_names_eps_and_noise_and_skips_absent_labels_22() -> None:
    metrics = {
        "algorithm": "dbscan",
        "n_clusters": 7,
        "eps": 0.3125,
        "min_samples": 5,
        "n_noise": 34,
        "silhouette": None,
    }
    assert summary_lines(metrics) == [
        "clusters:    7 (DBSCAN, eps=0.3125, min_samples=5; 34 noise documents)",
        "scores:      silhouette –",
    ]


def test_warnings_are_printed_before_the_report_path_22(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "report").mkdir(parents=True)
    metrics = {"algorithm": "kmeans", "k": 5, "n_clusters": 5, "silhouette": 0.1}
    warning = "k=50 is the largest candidate of k_candidates; extend the grid"
    (run_dir / "report" / "metrics.json").write_text(
        json.dumps({**metrics, "warnings": [warning]}), encoding="utf-8"
    )
    _print_run(run_dir)
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"udl: warning: {warning}"]
    assert captured.out.splitlines()[-1].startswith("report:")
