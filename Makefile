# One command to try it, one to test it. Everything installs into .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run unit test check install clean bench soak

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## make run: embedded broker + demo Authorization API + worker + demo traffic, decisions live
run: install
	$(BIN)/secure-session dev

## make unit: the unit tests alone (no broker, about 30 seconds)
unit: install
	$(BIN)/python -m pytest tests/unit

## make test: unit and integration tests (starts tansu unless KAFKA_BOOTSTRAP_SERVERS is set)
test: install
	$(BIN)/python -m pytest

## make soak: the fuzz tests at 10x, then the long fault-injection runs (figures into docs/reliability.md)
soak: install
	FUZZ_EXAMPLES=3000 $(BIN)/python -m pytest tests/unit/test_fuzz.py
	SOAK_ROUNDS=20 SOAK_PER_SESSION=50 ROLLING_SESSIONS=100000 SECURE_SESSION_UPDATE_DOCS=1 $(BIN)/python -m pytest tests/soak -s

## make check: lint, format and types
check: install
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

## make bench: the benchmark table (bench/results.json, bench/results.png); sizes: see bench/run.py
bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python -m bench.run
