# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install exactly what constraints.txt pins.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) demo/run_demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check exit_handler tests demo benchmarks
	$(VENV)/bin/ruff format --check exit_handler tests demo benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -m "not slow"

# The whole suite with the tests marked slow (over 30 s, or that install packages): CI runs it.
test-all: lint
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
