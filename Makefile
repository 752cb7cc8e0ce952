# Gatehouse: the two Quickstart commands are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo install test lint bench screenshots

$(BIN)/gatehouse: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch==2.13.0 first: pip takes the CPU wheel that lies on this machine's disk,
	# so the unpinned torch requirement below is already met (no CUDA download).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/gatehouse

install: $(BIN)/gatehouse

demo: install
	$(BIN)/gatehouse serve --demo

test: install
	$(BIN)/python -m pytest

# also run by tests/test_lint.py (the same two commands, read from here)
lint: install
	$(BIN)/ruff check gatehouse_core gateway policies evaluators tuning tests
	$(BIN)/mypy gatehouse_core gateway policies evaluators tuning

bench: install
	$(BIN)/python tests/bench/bench_gateway.py

# console screenshots for docs/console/ and the README (needs Debian's chromium + chromium-driver)
screenshots: install
	$(BIN)/python -m tests.console_screenshots docs/console
