# `make train` and `make test` each create .venv when needed, install purejaxppo into it (`make test`
# with the optional env families' extras), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test test-all install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# the tests also cover the optional env families and the ONNX export, so they install their extras
$(BIN)/.installed-extras: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,playground,craftax,jumanji,xminigrid,export]"
	touch $@

install: $(BIN)/.installed

train: $(BIN)/.installed
	$(BIN)/purejaxppo train

# every test but the GPU script's CPU dry run (about 3 minutes), which test-all adds
test: $(BIN)/.installed-extras
	$(BIN)/python -m pytest -q -m "not gpu_script"

test-all: $(BIN)/.installed-extras
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
