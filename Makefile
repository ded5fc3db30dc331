# Two commands for a new machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean

# --no-compile: modules are byte-compiled on first import, only those that are used
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile $(TORCH)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	touch $(STAMP)

# Bytecode is cached in .venv/pycache, even where PYTHONDONTWRITEBYTECODE is set: the install
# compiles nothing, and without a cache every process would compile PyTorch and MLflow anew.
RUN := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache

demo: $(STAMP)
	$(RUN) $(BIN)/xecmae demo

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench lib

clean:
	rm -rf $(VENV) demo_output .pytest_cache
