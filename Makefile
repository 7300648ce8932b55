# udl: `make demo` installs and runs the pipeline on the bundled sample; `make test` installs
# and runs the test suite. Everything lives in .venv; nothing is installed system-wide
# except the Debian packages the browser tests need (see .ci/system-deps).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline-safe Prefect: no telemetry, state kept inside the project.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_HOME ?= $(CURDIR)/.prefect

DEMO_OUTPUT ?= udl-output

.PHONY: install demo test lint format bench check clean

install: $(STAMP)

# torch is pinned before the project so pip takes that build (the CPU wheel on CPU-only
# hosts with a local wheel, the CUDA build from PyPI elsewhere) instead of resolving its own.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,pretrained]'
	touch $@

demo: install
	$(BIN)/udl run data/sample/wordnet_sample.parquet --output $(DEMO_OUTPUT) \
		--id-column doc_id --label-column label

test: install
	./.ci/system-deps
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check --output-format concise .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	for script in tests/bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

check: lint test

clean:
	rm -rf $(VENV) .prefect .bench $(DEMO_OUTPUT) *.egg-info
