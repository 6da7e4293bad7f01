# recrl: two commands on a fresh machine.
#   make demo   the main job (real data end to end once the ProRL pipeline lands; now the
#               length-shortcut experiment of ProRL's Theorem 1)
#   make test   ruff + the test suite (slow tests need RECRL_SLOW=1)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recrl-installed
OUT ?= runs

.PHONY: install demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $$(tools/find-python) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,notebook]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.length_bias --out_dir=$(OUT)/length_bias

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	tools/run-tests $(PY)

test-slow: $(STAMP)
	RECRL_SLOW=1 tools/run-tests $(PY)

bench: $(STAMP)
	$(PY) -m benchmarks.estimators

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
