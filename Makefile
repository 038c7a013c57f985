# Two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dmt-installed
PYTEST := $(BIN)/python -m pytest

.PHONY: setup demo lint test test-slow test-all clean

setup: $(STAMP)

# Re-runs only when a pin or the package metadata changed, so a ready venv costs nothing.
$(STAMP): requirements/cpu.txt requirements/torchrec.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -r requirements/cpu.txt
	$(BIN)/pip install -qq --disable-pip-version-check --no-deps -r requirements/torchrec.txt
	$(BIN)/pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/dmt demo --workdir runs/demo

# ruff (configured in pyproject.toml): lint, then check that every file is formatted.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Default test run: lint, then everything but @pytest.mark.slow. Exit code 5 means "no tests collected".
test: setup lint
	$(PYTEST) -m "not slow" ; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-slow: setup
	$(PYTEST) -m slow

test-all: setup
	$(PYTEST)

clean:
	rm -rf $(VENV) runs .pytest_cache
