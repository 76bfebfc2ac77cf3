# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install exactly what constraints.txt pins.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all conformance e2e lint bench mutate clean

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
	$(PY) -m pytest -m "not slow and not conformance and not e2e"
	@echo "conformance and e2e skipped: make conformance, make e2e run real upstream Go code (need Go)"

# The real upstream code (conformance/, built with Go from the module proxy) judges what we ship.
conformance: $(VENV)/.installed
	EXIT_HANDLER_REQUIRE_GO=1 $(PY) -m pytest -m conformance

# Argo's real controller runs injected pipelines on a real kube-apiserver, etcd and kwok (e2e/).
e2e: $(VENV)/.installed
	EXIT_HANDLER_REQUIRE_GO=1 $(PY) -m pytest -m e2e

# The whole suite: slow tests (over 30 s, or that install packages) and conformance. CI runs it.
test-all: lint
	EXIT_HANDLER_REQUIRE_GO=1 $(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

# Mutation testing of the modules that decide the event (not in CI). Without MODULE it judges
# the mutants not judged yet (all of them the first time); MODULE=event re-judges one module.
mutate: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,mutate]'
	$(VENV)/bin/mutmut run $(if $(MODULE),"exit_handler.$(MODULE).*")
	$(PY) tests/mutation_report.py $(MODULE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
