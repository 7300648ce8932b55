"""Every flow accepts its parameters in a fresh process however Prefect hands it over
(issue 22), without starting a server.

`udl serve` (`Flow.serve`) cloudpickles the flow object into each run's subprocess; a worker
of a `prefect.yaml` deployment loads the flow from its entrypoint instead. Served runs failed
in 0 s with "Clustering_PipelineModel is not fully defined": the function travelled by value
with only the globals its body uses, and `from __future__ import annotations` had turned its
annotations into names it no longer had. tests/integration/test_serve.py runs the real thing.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle

from flows import pipeline
from udl.config import PipelineConfig, ReportConfig

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = {
    "clustering_pipeline": {"config": PipelineConfig().model_dump(mode="json")},
    "ingest_only": {"config": PipelineConfig().model_dump(mode="json")},
    "recluster": {"config": PipelineConfig().model_dump(mode="json"), "source_run": "latest"},
    "rereport": {"output_dir": "out", "run_id": "latest", "report": ReportConfig().model_dump()},
}

# In a fresh interpreter: validate each flow's parameters as the run's engine does.
CHECK = """
import json, pickle, sys
from prefect.flows import load_flow_from_entrypoint
parameters = json.loads(sys.argv[1])
flows = pickle.loads(sys.stdin.buffer.read())
for name, pickled in flows.items():
    for how, loaded in (("pickled", pickle.loads(pickled)), ("entrypoint", None)):
        loaded = loaded or load_flow_from_entrypoint(f"flows/pipeline.py:{name}")
        validated = loaded.validate_parameters(parameters[name])
        print(name, how, sorted(validated))
"""


def test_flows_validate_parameters_after_pickling_and_from_entrypoint_22() -> None:
    # One pickle per flow, as serve sends them: flows pickled together share their globals.
    flows = {name: cloudpickle.dumps(getattr(pipeline, name)) for name in PARAMETERS}
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(PARAMETERS)],
        input=pickle.dumps(flows),
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = done.stdout.decode().splitlines()
    assert lines == [
        f"{name} {how} {sorted(PARAMETERS[name])}"
        for name in PARAMETERS
        for how in ("pickled", "entrypoint")
    ]
