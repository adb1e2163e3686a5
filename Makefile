# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtual environment it needs in .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench runner runner-aarch64 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,native]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lightning-shifter demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

runner: $(STAMP)
	PYTHON=$(BIN)/python mobile/build.sh host

runner-aarch64: $(STAMP)
	PYTHON=$(BIN)/python mobile/build.sh aarch64

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build mobile/build* runs .pytest_cache .hypothesis
