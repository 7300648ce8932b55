"""Shared fixtures: the bundled sample corpus, small labelled corpora, and a Prefect harness.

Unit tests of `udl` never touch Prefect. Tests that run flows request `prefect_harness`, a
session-wide temporary Prefect server (started once, ~10 s), with flow heartbeats off so each
flow run does not wait a second for its heartbeat thread.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The teacher's distilled vocabulary (~1 min to make) is shared by test sessions on a machine,
# outside the user's own cache.
os.environ.setdefault("UDL_CACHE_DIR", str(Path(tempfile.gettempdir()) / "udl-test-cache"))

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "wordnet_sample.parquet"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """The bundled demo corpus: 4,000 WordNet glosses in 10 labelled classes."""
    return SAMPLE


@pytest.fixture(scope="session")
def sample_frame() -> pd.DataFrame:
    return pd.read_parquet(SAMPLE)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory, sample_frame: pd.DataFrame) -> Path:
    """1,000 labelled sample documents (4 classes x 250) as Parquet, for fast end-to-end runs."""
    classes = sorted(sample_frame["label"].unique())[:4]
    frame = (
        sample_frame[sample_frame["label"].isin(classes)]
        .groupby("label", group_keys=False)
        .head(250)
        .reset_index(drop=True)
    )
    path = tmp_path_factory.mktemp("small") / "small.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A temporary Prefect server for the whole session, shared by every flow test."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def cli_run(
    prefect_harness: None, small_corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The pipeline run once through the CLI on `small_corpus` (k=4); its run folder."""
    from flows.cli import main

    output = tmp_path_factory.mktemp("pipeline") / "out"
    code = main(
        [
            "run",
            str(small_corpus),
            "--output",
            str(output),
            "--id-column",
            "doc_id",
            "--label-column",
            "label",
            "--k",
            "4",
            "--run-id",
            "first",
        ]
    )
    assert code == 0
    return output / "runs" / "first"
