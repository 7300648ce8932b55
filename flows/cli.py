"""`udl` command line: run the clustering flow on a corpus and say where the outputs are."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from flows.runtime import (
    STARTUP_TIMEOUT_SETTING,
    Interrupted,
    close_interrupted_dask,
    interruptible,
    prefect_api,
    short_udl_errors,
)
from flows.summary import assigned_line, summary_lines, update_line
from udl import __version__
from udl.config import UPDATE_POLICIES, PipelineConfig, load_config
from udl.datasets import RunLayout
from udl.errors import ConfigError, UdlError
from udl.lineage import config_of
from udl.preflight import (
    check_assign,
    check_output,
    check_recluster,
    check_run_inputs,
    existing_run,
    reusable_run,
)
from udl.storage import read_json

# Offline Prefect, and a temporary server that may take long to start on a busy machine (its
# first start creates the database); a value the user set wins.
ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    STARTUP_TIMEOUT_SETTING: "120",
}


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


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file with a PipelineConfig")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed of every random step (default: 0)"
    )
    parser.add_argument(
        "--run-id", metavar="ID", help="run folder name; reuse one to resume a failed run"
    )


def _add_update_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--update",
        choices=UPDATE_POLICIES,
        help="what a run takes from the previous one: full (retrain the encoder), refresh "
        "(embed only new or changed texts, re-cluster all) or frozen (embed only those, keep "
        f"the clusters); default: {default}",
    )


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("clustering")
    group.add_argument(
        "--algorithm", choices=["kmeans", "dbscan"], help="clustering algorithm (default: kmeans)"
    )
    group.add_argument("--k", type=_k, metavar="N|auto", help="number of k-means clusters, or auto")
    group.add_argument("--eps", type=_eps, metavar="X|auto", help="DBSCAN radius, or auto")
    group.add_argument(
        "--min-samples", type=int, metavar="N", help="DBSCAN neighbours of a core point"
    )
    group.add_argument(
        "--metric", choices=["cosine", "l2"], help="embedding distance (default: cosine)"
    )


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input")
    group.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "jsonl", "parquet", "text"],
        help="input format (default: from the extension)",
    )
    group.add_argument("--text-column", metavar="C", help="column with the text (default: text)")
    group.add_argument(
        "--id-column", metavar="C", help="column with unique ids ('' derives stable ids)"
    )
    group.add_argument(
        "--label-column", metavar="C", help="column with known classes, for evaluation only"
    )
    group.add_argument(
        "--metadata-column",
        metavar="C",
        action="append",
        dest="metadata_columns",
        help="extra column carried to the assignments (repeatable)",
    )
    group.add_argument(
        "--embedding-column",
        metavar="C",
        help="column of precomputed vectors (Parquet or JSON Lines lists of numbers): they are "
        "clustered directly and no encoder is trained; bad vectors go to rejects/",
    )
    parser.add_argument(
        "--dask-address", metavar="ADDR", help="existing Dask scheduler (default: a local cluster)"
    )


def _add_encoder_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--encoder",
        choices=["two_view", "autoencoder", "attention", "pretrained"],
        help="encoder (default: two_view, the teacher's semantics and the corpus's words; "
        "its teacher and pretrained need the 'pretrained' extra)",
    )
    group.add_argument(
        "--dim",
        type=int,
        metavar="N",
        help="embedding dimension of the autoencoder and attention encoder (default: 64)",
    )
    group.add_argument(
        "--epochs", type=int, metavar="N", help="maximum training epochs (default: 15)"
    )
    group.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="torch device (default: auto, CUDA when present)",
    )
    group.add_argument(
        "--warm-start",
        metavar="previous|DIR",
        help="continue training the encoder of the previous run (keeps cluster ids stable "
        "night after night) or of a checkpoint folder",
    )


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
        epilog="To try another k or algorithm on the same embeddings without embedding again: "
        "udl recluster --output DIR --from RUN --k N (or --algorithm dbscan).",
    )
    run.add_argument("input", metavar="INPUT", help="corpus file, folder, glob or fsspec URL")
    run.add_argument("--output", "-o", metavar="DIR", required=True, help="output root folder")
    _add_config_options(run)
    _add_update_option(run, "the config's update.policy, full")
    _add_input_options(run)
    _add_encoder_options(run)
    _add_cluster_options(run)
    run.add_argument(
        "--neighbours",
        action="store_true",
        default=None,
        help="also index the embeddings for `udl similar` and write each document's nearest "
        "neighbours to neighbours/ (neighbours.enabled)",
    )

    ingest = commands.add_parser(
        "ingest",
        help="ingest a corpus into a run folder and stop",
        description="Ingest INPUT into DIR/runs/<run_id>/corpus and rejects; `udl run` with the "
        "same --run-id continues from there.",
    )
    ingest.add_argument("input", metavar="INPUT", help="corpus file, folder, glob or fsspec URL")
    ingest.add_argument("--output", "-o", metavar="DIR", required=True, help="output root folder")
    _add_config_options(ingest)
    _add_input_options(ingest)

    recluster = commands.add_parser(
        "recluster",
        help="cluster an existing run's embeddings again, into a new run",
        description="Reuse the corpus, features and embeddings of run FROM (default: latest) "
        "and cluster them with other settings into a new run.",
    )
    recluster.add_argument(
        "--output", "-o", metavar="DIR", required=True, help="output root folder"
    )
    recluster.add_argument(
        "--from", dest="source_run", default="latest", metavar="RUN", help="source run id"
    )
    _add_config_options(recluster)
    _add_cluster_options(recluster)

    assign = commands.add_parser(
        "assign",
        help="assign new documents to an existing run's clusters (nothing is trained)",
        description="Embed the documents of INPUT with the encoder of run FROM (default: latest) "
        "and assign each to the nearest of its k-means clusters, into a new run. The input "
        "columns are FROM's unless given here (labels only with --label-column).",
    )
    assign.add_argument("input", metavar="INPUT", help="file, folder, glob or fsspec URL")
    assign.add_argument("--output", "-o", metavar="DIR", required=True, help="output root folder")
    assign.add_argument(
        "--from", dest="source_run", default="latest", metavar="RUN", help="run to join"
    )
    assign.add_argument("--run-id", metavar="ID", help="run folder name (default: a new id)")
    assign.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device")
    _add_input_options(assign)

    similar = commands.add_parser(
        "similar",
        help="print the documents of a run most similar to one of its documents or to a text",
        description="Search the similar-documents index of run RUN (default: latest; made by "
        "`udl run --neighbours`) for the documents closest to document ID (itself first) or "
        "to TEXT, embedded with the run's encoder. Prints rank, cosine similarity, cluster, "
        "document id and the start of its text.",
    )
    similar.add_argument("--output", "-o", metavar="DIR", required=True, help="output root folder")
    similar.add_argument(
        "--run", dest="similar_run", default="latest", metavar="RUN", help="run id"
    )
    query = similar.add_mutually_exclusive_group(required=True)
    query.add_argument("--doc-id", metavar="ID", help="a document of the run")
    query.add_argument("--text", metavar="TEXT", help="a new text")
    similar.add_argument(
        "--k",
        dest="n_similar",
        type=int,
        default=10,
        metavar="N",
        help="documents to print (default: 10)",
    )

    report = commands.add_parser(
        "report",
        help="rebuild the report of an existing run",
        description="Rebuild the report "
        "of run RUN (default: latest) with the report settings of --config.",
    )
    report.add_argument("--output", "-o", metavar="DIR", required=True, help="output root folder")
    report.add_argument("--run", dest="report_run", default="latest", metavar="RUN", help="run id")
    report.add_argument("--config", metavar="FILE", help="YAML file whose report section is used")

    serve = commands.add_parser(
        "serve",
        help="serve the pipeline on a schedule from this machine (no server setup needed)",
        description="Register a deployment running the pipeline on a cron schedule and keep "
        "executing its runs (scheduled ones and those triggered from the Prefect UI) until "
        "stopped. Needs PREFECT_API_URL pointing at a Prefect server for the UI.",
    )
    serve.add_argument("--config", metavar="FILE", help="YAML file with the run's PipelineConfig")
    _add_update_option(serve, "the config's update.policy if it sets one, else refresh")
    serve.add_argument("--name", default="nightly-clustering", help="deployment name")
    serve.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: 02:00 daily)")
    serve.add_argument("--timezone", default="UTC", help="timezone of the schedule (IANA name)")
    serve.add_argument(
        "--pause-on-shutdown",
        action="store_true",
        help="pause the schedule when serve stops (default: it stays active, and runs due "
        "while serve is down start when it is back)",
    )
    return parser


OVERRIDES = {
    "output": "runtime.output_dir",
    "format": "input.format",
    "text_column": "input.text_column",
    "id_column": "input.id_column",
    "label_column": "input.label_column",
    "metadata_columns": "input.metadata_columns",
    "embedding_column": "input.embedding_column",
    "encoder": "encoder.kind",
    "dim": "encoder.dim",
    "epochs": "encoder.epochs",
    "device": "encoder.device",
    "warm_start": "encoder.warm_start",
    "update": "update.policy",
    "neighbours": "neighbours.enabled",
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
    """The config file (or defaults) with the command-line options applied on top; for
    `assign`, the joined run's config instead of the file."""
    if args.command == "assign":
        joined = config_of(existing_run(args.output, args.source_run))
        base = joined.with_overrides(
            {
                "input.label_column": None,
                "runtime.run_id": None,
                "runtime.dask_address": None,
                "encoder.device": "auto",
            }
        )
    else:
        base = load_config(args.config) if getattr(args, "config", None) else PipelineConfig()
    overrides: dict[str, Any] = {}
    if getattr(args, "input", None) is not None:
        overrides["input.path"] = args.input
    for option, dotted in OVERRIDES.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides[dotted] = value
    if (
        args.command == "serve"
        and args.update is None
        and "policy" not in base.update.model_fields_set
    ):
        # Nightly runs cost only what changed unless the config says otherwise.
        overrides["update.policy"] = "refresh"
    return base.with_overrides(overrides)


def _layout(run_dir: Path) -> RunLayout:
    """The layout of ``<output_dir>/runs/<run_id>``."""
    return RunLayout(run_dir.parent.parent, run_dir.name)


def _print_run(run_dir: Path) -> None:
    layout = _layout(run_dir)
    print(f"run:         {run_dir}")
    print(f"assignments: {layout.assignments}")
    print(f"rejects:     {layout.rejects}")
    print(f"metrics:     {layout.metrics}")
    print(f"latest:      {layout.latest}")
    metrics = read_json(layout.metrics)
    update = update_line(read_json(layout.update)) if layout.update.exists() else None
    for line in [*summary_lines(metrics), *([update] if update else [])]:
        print(line)
    # Contract with the report: metrics.json lists every step's warnings (udl.report).
    for warning in metrics.get("warnings", []):
        print(f"udl: warning: {warning}", file=sys.stderr)
    sys.stderr.flush()
    print(f"report:      {layout.report_html}")


def _print_assigned(run_dir: Path) -> None:
    layout = _layout(run_dir)
    ingested, assigned = (read_json(layout.step_record(s)) for s in ("ingest", "cluster"))
    print(f"run:         {run_dir}")
    print(f"assignments: {layout.assignments}")
    print(f"rejects:     {layout.rejects}")
    print(assigned_line(ingested, assigned))


def _preflight(args: argparse.Namespace, config: PipelineConfig) -> None:
    """Fail on a wrong input, output or run before Prefect, Dask or any folder is started."""
    if args.command in ("run", "ingest"):
        check_run_inputs(config)
    elif args.command == "recluster":
        check_recluster(config, args.source_run)
    elif args.command == "assign":
        check_assign(config, args.source_run)
    elif args.command == "report":
        reusable_run(args.output, args.report_run, ("cluster",))
    elif args.command == "similar":
        layout = reusable_run(args.output, args.similar_run, ("cluster",))
        if not layout.step_record("neighbours").exists():
            raise ConfigError(
                f"run {layout.run_id} has no similar-documents index; make one with "
                "`udl run --neighbours` (neighbours.enabled: true)"
            )
        if args.n_similar < 1:
            raise ConfigError(f"--k must be at least 1, got {args.n_similar}")
    else:
        check_output(config.runtime.output_dir)


def _similar(args: argparse.Namespace) -> None:
    """Print the documents most similar to --doc-id or --text (no Prefect: a lookup)."""
    from flows.lookup import similar_lines

    layout = existing_run(args.output, args.similar_run)
    config = config_of(layout).with_overrides({"encoder.device": "auto"})
    for line in similar_lines(layout, config, args.n_similar, args.doc_id, args.text):
        print(line)


def _serve(args: argparse.Namespace, config: PipelineConfig) -> None:
    from prefect.schedules import Cron

    from flows import pipeline

    with prefect_api(full=True) as address:
        if address:
            print(f"Prefect UI of this serve (stops with it): {address}")
        # Runs of one deployment never overlap: a nightly run that overruns delays the next.
        pipeline.clustering_pipeline.serve(
            name=args.name,
            schedules=[Cron(args.cron, timezone=args.timezone)],
            parameters={"config": config.model_dump(mode="json")},
            global_limit=1,
            pause_on_shutdown=args.pause_on_shutdown,
        )


def _import_flows() -> ModuleType:
    """The flows' module: Prefect, torch and the steps, imported only once the arguments are
    valid (a wrong option fails at once)."""
    from flows import pipeline

    return pipeline


def _dispatch(args: argparse.Namespace, config: PipelineConfig) -> None:
    with interruptible(), short_udl_errors(), prefect_api(while_starting=_import_flows):
        pipeline = _import_flows()
        if args.command == "run":
            run_dir = Path(pipeline.clustering_pipeline(config))
        elif args.command == "ingest":
            run_dir = Path(pipeline.ingest_only(config))
        elif args.command == "recluster":
            run_dir = Path(pipeline.recluster(config, args.source_run))
        elif args.command == "assign":
            run_dir = Path(pipeline.assign_documents(config, args.source_run))
        else:
            run_dir = Path(pipeline.rereport(args.output, args.report_run, config.report))
    if args.command in ("run", "recluster"):
        _print_run(run_dir)
    elif args.command == "ingest":
        layout = _layout(run_dir)
        print(f"run:     {run_dir}\ncorpus:  {layout.corpus}\nrejects: {layout.rejects}")
    elif args.command == "assign":
        _print_assigned(run_dir)
    else:
        print(f"report:  {_layout(run_dir).report_html}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        _preflight(args, config)
    except UdlError as exc:
        print(f"udl: error: {exc}", file=sys.stderr)
        return 2
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        if args.command == "serve":
            _serve(args, config)
        elif args.command == "similar":
            _similar(args)
        else:
            _dispatch(args, config)
    except UdlError as exc:
        print(f"udl: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        close_interrupted_dask()
        print(f"udl: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
