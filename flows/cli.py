"""`udl` command line: run the clustering flow on a corpus and say where the outputs are."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from udl import __version__
from udl.config import PipelineConfig, load_config
from udl.errors import UdlError

OFFLINE_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def _k(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {value!r}") from None


def _eps(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udl",
        description="Batch embedding and clustering of text corpora (Prefect + Dask + PyTorch "
        "+ FAISS). Outputs go to DIR/runs/<run_id>/; DIR/latest points to the newest run.",
    )
    parser.add_argument("--version", action="version", version=f"udl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the whole pipeline on a corpus",
        description="Run ingest → preprocess → embed → cluster → report on INPUT. Options "
        "override the config file, which overrides the built-in defaults.",
    )
    run.add_argument("input", metavar="INPUT", help="corpus file, folder, glob or fsspec URL")
    run.add_argument("--output", "-o", metavar="DIR", required=True, help="output root folder")
    run.add_argument("--config", metavar="FILE", help="YAML file with a PipelineConfig")
    run.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "jsonl", "parquet", "text"],
        help="input format (default: from the extension)",
    )
    run.add_argument("--text-column", metavar="C", help="column with the text (default: text)")
    run.add_argument(
        "--id-column", metavar="C", help="column with unique ids ('' derives stable ids)"
    )
    run.add_argument(
        "--label-column", metavar="C", help="column with known classes, for evaluation only"
    )
    run.add_argument(
        "--metadata-column",
        metavar="C",
        action="append",
        dest="metadata_columns",
        help="extra column carried to the assignments (repeatable)",
    )
    run.add_argument(
        "--encoder", choices=["autoencoder", "attention"], help="encoder (default: autoencoder)"
    )
    run.add_argument(
        "--algorithm", choices=["kmeans", "dbscan"], help="clustering algorithm (default: kmeans)"
    )
    run.add_argument("--k", type=_k, metavar="N|auto", help="number of k-means clusters, or auto")
    run.add_argument("--eps", type=_eps, metavar="X|auto", help="DBSCAN radius, or auto")
    run.add_argument(
        "--min-samples", type=int, metavar="N", help="DBSCAN neighbours of a core point"
    )
    run.add_argument(
        "--metric", choices=["cosine", "l2"], help="embedding distance (default: cosine)"
    )
    run.add_argument("--seed", type=int, metavar="N", help="seed of every random step (default: 0)")
    run.add_argument(
        "--run-id", metavar="ID", help="run folder name; reuse one to resume a failed run"
    )
    run.add_argument(
        "--dask-address", metavar="ADDR", help="existing Dask scheduler (default: a local cluster)"
    )
    return parser


OVERRIDES = {
    "output": "runtime.output_dir",
    "format": "input.format",
    "text_column": "input.text_column",
    "id_column": "input.id_column",
    "label_column": "input.label_column",
    "metadata_columns": "input.metadata_columns",
    "encoder": "encoder.kind",
    "algorithm": "cluster.algorithm",
    "k": "cluster.k",
    "eps": "cluster.eps",
    "min_samples": "cluster.min_samples",
    "metric": "cluster.metric",
    "seed": "runtime.seed",
    "run_id": "runtime.run_id",
    "dask_address": "runtime.dask_address",
}


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The config file (or defaults) with the command-line options applied on top."""
    base = load_config(args.config) if args.config else PipelineConfig()
    overrides: dict[str, Any] = {"input.path": args.input}
    for option, dotted in OVERRIDES.items():
        value = getattr(args, option)
        if value is not None:
            overrides[dotted] = value
    return base.with_overrides(overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except UdlError as exc:
        print(f"udl: error: {exc}", file=sys.stderr)
        return 2
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from flows.pipeline import clustering_pipeline  # imports Prefect only when running

    try:
        run_dir = Path(clustering_pipeline(config))
    except UdlError as exc:
        print(f"udl: error: {exc}", file=sys.stderr)
        return 1
    print(f"run:         {run_dir}")
    print(f"assignments: {run_dir / 'assignments'}")
    print(f"rejects:     {run_dir / 'rejects'}")
    print(f"report:      {run_dir / 'report' / 'index.html'}")
    print(f"metrics:     {run_dir / 'report' / 'metrics.json'}")
    print(f"latest:      {run_dir.parent.parent / 'latest'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
