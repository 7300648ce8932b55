"""Checks that run before any engine starts: a wrong path, a missing column or an output
folder that is a file fails in a second with one message, not after a Prefect server and a
Dask cluster have started and a run folder has been written.

Everything here only reads: the input's file listing and the first source's header (or first
block), and the output folder's manifests. The readers stay the authority on the data itself;
a check here is skipped whenever it would need more than a cheap read.
"""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path

from pydantic import ValidationError

from udl.config import LATEST_RUN, PipelineConfig, RuntimeConfig
from udl.datasets import RunLayout
from udl.errors import ConfigError
from udl.lineage import RECLUSTER_REUSES, config_of
from udl.readers import read_source
from udl.sources import Source, resolve_sources
from udl.storage import read_json

__all__ = [
    "check_assign",
    "check_output",
    "check_recluster",
    "check_run_inputs",
    "existing_run",
    "reusable_run",
]


def _header_is_cheap(source: Source) -> bool:
    """Whether the reader finds the configured columns within its first block.

    CSV/TSV and text files are checked on their first block or file; uncompressed Parquet on
    its footer and first row group. A compressed Parquet file would be spooled whole and JSON
    Lines keys are only known after the last record, so those are left to ingest.
    """
    if source.format == "parquet":
        return source.compression is None
    return source.format in ("csv", "tsv", "text")


def check_output(output_dir: str) -> None:
    """The output root is a folder, or can become one.

    Raises:
        ConfigError: the path (or one of its parents) is an existing file.
    """
    if "://" in output_dir:
        return
    path = Path(output_dir).expanduser().absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(
                    f"runtime.output_dir {path}: {folder} is a file, not a folder; choose an "
                    "output folder (it is created if missing)"
                )
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"runtime.output_dir {path}: cannot write in {folder} (permission denied)"
                )
            return


def check_run_inputs(config: PipelineConfig) -> None:
    """The input resolves to readable files and the first one has the configured columns.

    Raises:
        InputDataError: nothing readable at `input.path`, or the first source lacks a
            configured column or cannot be read at all.
        ConfigError: the output folder cannot be created.
    """
    check_output(config.runtime.output_dir)
    first = resolve_sources(config.input)[0]
    if _header_is_cheap(first):
        with closing(read_source(first, config.input)) as batches:
            next(batches, None)


def existing_run(output_dir: str, run_id: str) -> RunLayout:
    """An existing run by id, or the newest completed one for ``latest``.

    The id is checked like `RuntimeConfig.run_id`, so it names a folder inside
    ``<output_dir>/runs`` (no ``..``, no absolute path).

    Raises:
        ConfigError: no such run, or no completed run for ``latest``.
    """
    check_output(output_dir)
    output = Path(output_dir).expanduser().resolve()
    if run_id == LATEST_RUN:
        latest = output / LATEST_RUN
        if not latest.exists():
            raise ConfigError(f"no completed run in {output} (no 'latest' link)")
        run_id = latest.resolve().name
    try:
        RuntimeConfig(run_id=run_id)
    except ValidationError as exc:
        raise ConfigError.from_validation_error(exc, "RuntimeConfig") from None
    layout = RunLayout(output, run_id)
    if not layout.manifest.exists():
        raise ConfigError(f"no run {run_id!r} in {output / 'runs'}")
    return layout


def reusable_run(output_dir: str, run_id: str, steps: tuple[str, ...]) -> RunLayout:
    """An existing run (see `existing_run`) in which every one of `steps` has completed.

    Raises:
        ConfigError: no such run, or one of `steps` has no record in it.
    """
    layout = existing_run(output_dir, run_id)
    manifest = read_json(layout.manifest)
    if manifest.get("status") == "assigned":
        raise ConfigError(
            f"run {layout.run_id} holds documents assigned to the clusters of run "
            f"{manifest.get('previous_run_id')} (udl assign), not a clustering run; choose that run"
        )
    for step in steps:
        if not layout.step_record(step).exists():
            raise ConfigError(
                f"run {layout.run_id} has no completed {step} step (see its manifest.json); "
                "choose another run with --from/--run, or rerun it with --run-id "
                f"{layout.run_id}"
            )
    return layout


def check_recluster(config: PipelineConfig, source_run: str) -> RunLayout:
    """The source run of a re-clustering: embedded, and not the run being written.

    Raises:
        ConfigError: no such run, it has no embeddings, or `config` names it as the new run.
    """
    source = reusable_run(config.runtime.output_dir, source_run, RECLUSTER_REUSES)
    if config.runtime.run_id == source.run_id:
        raise ConfigError("recluster needs a new run id, not the source run's")
    return source


def check_assign(config: PipelineConfig, source_run: str) -> RunLayout:
    """The run whose clusters new documents join: clustered with k-means (the only clusters
    that place a new point without refitting), and not the run being written; and the new
    documents' input (see `check_run_inputs`).

    Raises:
        ConfigError: no such run, it has not clustered, it ran DBSCAN or another kind of
            input (supplied vectors or text), or `config` names it or another existing run
            (not an earlier assign into it) as the new run.
        InputDataError: see `check_run_inputs`.
    """
    source = reusable_run(config.runtime.output_dir, source_run, ("cluster",))
    if config.runtime.run_id == source.run_id:
        raise ConfigError("assign needs a new run id, not the id of the run it joins")
    # Rerunning an assign run resumes it; any other existing run is not to be overwritten.
    target = RunLayout(source.output_dir, config.runtime.run_id or "")
    if config.runtime.run_id and target.manifest.exists():
        joined = read_json(target.manifest).get("previous_run_id")
        if target.step_record("report").exists() or joined != source.run_id:
            raise ConfigError(
                f"run {target.run_id} exists and is not an assign run into run "
                f"{source.run_id}; choose a new run id"
            )
    supplied = config_of(source).input.embedding_column is not None
    if (config.input.embedding_column is not None) != supplied:
        how = "embedded supplied vectors" if supplied else "trained an encoder"
        raise ConfigError(
            f"run {source.run_id} {how}: new documents must come the same way "
            "(input.embedding_column set for both or for neither)"
        )
    algorithm = read_json(source.step_record("cluster")).get("algorithm")
    if algorithm != "kmeans":
        raise ConfigError(
            f"run {source.run_id} clustered with {algorithm}: new documents can only join "
            "k-means clusters (a DBSCAN cluster is defined by its members' density); "
            f"`udl recluster --from {source.run_id} --algorithm kmeans` makes such a run"
        )
    check_run_inputs(config)
    return source
