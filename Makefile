# Two commands set everything up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint names clean fashion-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,torch]' 'torch==2.13.0'  # the CPU build here
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eoslab demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m ''

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py

# Real images offline: Debian/Ubuntu's dataset-fashion-mnist puts Fashion-MNIST's four IDX files in
# /usr/share/datasets/fashion-mnist, where eoslab looks by default (`eoslab reproduce fashion-vgg`).
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

fashion-data:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST is installed in $(FASHION_DIR)"; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; \
	else \
		echo "no apt-get here: run \`eoslab data fetch fashion-mnist\` instead" >&2; exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

# The public API: every __all__, aliases, twins and clashes (tests/test_public_api.py checks them).
names: $(STAMP)
	$(BIN)/python tools/public_names.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
