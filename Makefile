# recrl: two commands on a fresh machine.
#   make demo   the main job: ProRL end to end on real MovieLens-1M (fetch, SASRec simulator,
#               GRU4Rec evaluator, path mining, pretraining, RL for ProRL and REINFORCE,
#               baselines, report in runs/prorl_demo/report.md)
#   make demo-toy  the length-shortcut experiment of ProRL's Theorem 1 (~3 min)
#   make test   ruff + the test suite (slow tests need RECRL_SLOW=1)
#   make docs   the API reference (Sphinx, warnings are errors) in docs/api/_build/html
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recrl-installed
OUT ?= runs

.PHONY: install demo demo-toy test test-slow lint docs notebooks bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $$(tools/find-python) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.prorl --config=prorl.py:demo --out_dir=$(OUT)/prorl_demo

demo-toy: $(STAMP)
	$(PY) -m experiments.length_bias --out_dir=$(OUT)/length_bias

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	tools/run-tests $(PY)

test-slow: $(STAMP)
	RECRL_SLOW=1 tools/run-tests $(PY)

docs: $(STAMP)
	$(PY) -m sphinx -E -W -n --keep-going -q -b html docs/api docs/api/_build/html

# regenerate colab/*.ipynb and README's Colab badges after editing tools/make_*notebook*.py
notebooks: $(STAMP)
	$(PY) tools/make_notebooks.py

bench: $(STAMP)
	$(PY) -m benchmarks.estimators
	$(PY) -m benchmarks.prorl_step --steps 3
	$(PY) -m benchmarks.lm --model tiny --batch 1 8 --new 16 --completion 32
	$(PY) -m benchmarks.itra --pool 2000 --val 600 --n 100 --swaps 20 --window 5

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache docs/api/_build
