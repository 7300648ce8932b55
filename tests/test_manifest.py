"""The run manifest: its status follows the flow that writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from udl.config import PipelineConfig
from udl.datasets import RunLayout
from udl.manifest import recording
from udl.storage import read_json


def test_the_manifest_records_how_a_run_ended(tmp_path: Path) -> None:
    config = PipelineConfig()
    layout = RunLayout(tmp_path, "a")
    with recording(layout, config, None):
        assert read_json(layout.manifest)["status"] == "running"
    assert read_json(layout.manifest)["status"] == "completed"
    with recording(layout, config, None, done="ingested"):
        pass
    assert read_json(layout.manifest)["status"] == "ingested"
    with pytest.raises(KeyboardInterrupt), recording(layout, config, None):
        raise KeyboardInterrupt
    assert read_json(layout.manifest)["status"] == "failed"
