# The two commands of the README: `make repro` (set up, then run the pipeline) and `make test`.
# Each creates .venv on first use. Set MNIST_MIRROR (an absolute path or URL) on machines without internet.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: setup repro test exp-show clean-venv

$(BIN)/.ganpipe-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: anything unpinned would resolve to a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(BIN)/.ganpipe-installed

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest -q

# The experiments on one screen: model, dataset, seed, replicas, iterations, collapse rate and interval, FLD.
exp-show: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" ganpipe exp-show

clean-venv:
	rm -rf $(VENV)
