"""The `udl` command line: documented options, precedence, and clear errors before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser, config_from_args, main

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
]


def test_console_script_documents_every_option() -> None:
    udl = Path(sys.executable).with_name("udl")
    top = subprocess.run([udl, "--help"], capture_output=True, text=True, check=True).stdout
    assert "run" in top
    run = subprocess.run([udl, "run", "--help"], capture_output=True, text=True, check=True)
    for option in DOCUMENTED:
        assert option in run.stdout, option
    assert "autoencoder,attention,pretrained" in run.stdout.replace(" ", "")


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
