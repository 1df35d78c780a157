# Haven: two commands do all set-up on a fresh machine.
#   make demo  - synthetic extracts -> land -> link -> score -> report, then serve the API
#   make test  - ruff, import layers (import-linter), then every test with branch coverage
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_HOME ?= demo/home
PERSONS ?= 20000
# Test processes (pytest-xdist): a file's tests run in one, so a module's fixture is made once.
TEST_WORKERS ?= 2

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HAVEN_HOME=$(DEMO_HOME) $(BIN)/haven demo --persons $(PERSONS) --out demo/extracts

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile \
		--cov --cov-branch --cov-report=term $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/landing.py

clean:
	rm -rf demo .pytest_cache .coverage
