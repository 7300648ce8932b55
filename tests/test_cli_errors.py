"""What a user sees when something is wrong: one `udl: error:` line, before any engine starts
when the problem is visible up front (issue 22), and no retries of udl's own checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tasks._common import retry_on_transient
from udl.config import EncoderConfig
from udl.encoders.pretrained import PretrainedEncoder
from udl.errors import NotFittedError, UdlError

REPO = Path(__file__).resolve().parents[1]
FORTUNES = REPO / "tests" / "data" / "fortunes_sample.parquet"
UDL = Path(sys.executable).with_name("udl")

# Runs the CLI in a fresh interpreter and reports whether Prefect was ever imported: a check
# that fails before Prefect is imported has started no server, no Dask, no flow.
PROBE = (
    "import sys\n"
    "from flows.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('prefect imported' if 'prefect' in sys.modules else 'prefect not imported')\n"
    "sys.exit(code)\n"
)


def _udl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def _assert_one_error_line(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("udl: error: ")
    for fragment in fragments:
        assert fragment in line
    assert done.stdout.strip() == "prefect not imported"


def test_missing_input_fails_before_any_engine_22(tmp_path: Path) -> None:
    output = tmp_path / "out"
    done = _udl("run", str(tmp_path / "nowhere.csv"), "--output", str(output), cwd=tmp_path)
    _assert_one_error_line(done, "nowhere.csv", "no such file or folder")
    assert not output.exists()


def test_missing_text_column_fails_before_any_engine_22(tmp_path: Path) -> None:
    output = tmp_path / "out"
    done = _udl(
        "run", str(FORTUNES), "--output", str(output), "--text-column", "body", cwd=tmp_path
    )
    _assert_one_error_line(done, "missing column 'body'", "'doc_id', 'text', 'label'")
    assert not output.exists()


def test_missing_column_of_a_csv_is_found_in_its_header_22(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.csv"
    pd.read_parquet(FORTUNES).head(50).to_csv(corpus, index=False)
    done = _udl(
        "ingest",
        str(corpus),
        "--output",
        str(tmp_path / "out"),
        "--label-column",
        "topic",
        cwd=tmp_path,
    )
    _assert_one_error_line(done, "corpus.csv", "missing column 'topic'")


def test_output_that_is_a_file_is_a_clear_error_22(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder", encoding="utf-8")
    done = _udl("run", str(FORTUNES), "--output", str(taken / "out"), cwd=tmp_path)
    _assert_one_error_line(done, str(taken), "is a file, not a folder")
    assert taken.read_text(encoding="utf-8") == "not a folder"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["recluster", "--from", "20260101T000000Z-abcdef", "--k", "3"], "no run"),
        (["recluster", "--k", "3"], "no completed run"),
        (["report", "--run", "20260101T000000Z-abcdef"], "no run"),
    ],
)
def test_missing_source_run_fails_before_any_engine_22(
    tmp_path: Path, command: list[str], expected: str
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    done = _udl(*command, "--output", str(output), cwd=tmp_path)
    _assert_one_error_line(done, expected)
    assert list(output.iterdir()) == []


def test_run_without_embeddings_cannot_be_reclustered_22(tmp_path: Path) -> None:
    # An ingest-only run: a manifest, but no embed step to reuse.
    run = tmp_path / "out" / "runs" / "ingested"
    (run / "steps").mkdir(parents=True)
    (run / "manifest.json").write_text("{}", encoding="utf-8")
    (run / "steps" / "ingest.json").write_text("{}", encoding="utf-8")
    done = _udl("recluster", "--output", str(tmp_path / "out"), "--from", "ingested", cwd=tmp_path)
    _assert_one_error_line(done, "run ingested has no completed preprocess step")


def test_use_before_fit_is_not_retried_22() -> None:
    # Bypass __init__: the check must not depend on loading the model.
    encoder = PretrainedEncoder.__new__(PretrainedEncoder)
    encoder.config, encoder.mean_, encoder.components_ = EncoderConfig(), None, None
    with pytest.raises(NotFittedError, match="before fit") as raised:
        encoder.save(Path("unused"))
    assert isinstance(raised.value, UdlError)

    def result() -> None:
        raise raised.value

    assert retry_on_transient(None, None, SimpleNamespace(result=result)) is False


def test_slow_prefect_start_names_the_setting_to_raise_22(
    small_corpus: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        # No server is ready within a second: the case of a busy machine, made certain.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [UDL, "run", str(small_corpus), "--output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("udl: error: the temporary Prefect server was not ready within 1 s")
    assert "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in last
    assert "Traceback" not in done.stderr
    assert not output.exists()


def test_data_error_inside_a_task_ends_in_one_line_without_traceback_22(tmp_path: Path) -> None:
    # Found only while ingesting (not by the pre-flight check): a repeated id under
    # duplicate_ids=error. Before, Prefect's logs added two full tracebacks (~100 lines).
    corpus = tmp_path / "dup.csv"
    corpus.write_text("doc_id,text\n1,hello world\n2,foo bar\n1,again\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text("input:\n  duplicate_ids: error\n", encoding="utf-8")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    command = [UDL, "run", str(corpus), "-o", str(tmp_path / "out"), "--config", str(config)]
    done = subprocess.run(
        [*command, "--id-column", "doc_id"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"udl: error: file://{corpus}:3: duplicate doc_id '1'")
    assert "Traceback (most recent call last)" not in done.stderr
