# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each first installs the Debian packages it needs (scripts/system-packages.sh, the list with reasons is
# scripts/system-packages.txt), then creates the virtual environment in .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench runner runner-aarch64 system-packages clean

system-packages:
	@scripts/system-packages.sh $(PYTHON)

# order-only: the packages are checked first every time, without forcing a reinstall of the venv
$(STAMP): pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,native]'
	touch $(STAMP)

demo: system-packages $(STAMP)
	$(BIN)/lightning-shifter demo

test: system-packages $(STAMP)
	$(BIN)/python -m pytest -q

runner: system-packages $(STAMP)
	$(BIN)/lightning-shifter runner build --target host

runner-aarch64: system-packages $(STAMP)
	$(BIN)/lightning-shifter runner build --target aarch64

bench: system-packages $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build mobile/build* runs .pytest_cache .hypothesis
