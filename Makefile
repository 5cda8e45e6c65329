# `make train` and `make test` each create .venv when needed, install purejaxppo into it (`make test`
# with the optional env families' extras), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test test-all docs install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# the tests also cover the optional env families, the ONNX export, videos and the docs build, so they install their
# extras, and the EGL library MuJoCo draws with, headless, where the system lacks it (Debian and Ubuntu, as root)
$(BIN)/.installed-extras: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,playground,craftax,jumanji,xminigrid,export,tune,video,docs]"
	@if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq libegl1 libgl1 >/dev/null; \
		else echo "note: no libEGL.so.1; install libegl1 for MuJoCo's headless drawing (the render tests need it)"; fi; \
	fi
	touch $@

$(BIN)/.installed-docs: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

install: $(BIN)/.installed

train: $(BIN)/.installed
	$(BIN)/purejaxppo train

# every test but the GPU script's CPU dry run (about 3 minutes), which test-all adds; in one worker process per
# core (up to 4), each given whole test files, so a module's compiled fixtures are built once
TEST_WORKERS := -n auto --maxprocesses 4 --dist loadfile

test: $(BIN)/.installed-extras
	$(BIN)/python -m pytest -q -m "not gpu_script" $(TEST_WORKERS)

test-all: $(BIN)/.installed-extras
	$(BIN)/python -m pytest -q $(TEST_WORKERS)

# the documentation site, into site/ (open site/index.html; nothing in it is fetched from the internet)
docs: $(BIN)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache
