# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench fuzz lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[tabular,pytorch,s3]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-demo

## demo: build small models, serve them with `mainsail serve`, deploy one through `mainsail up` with boto3,
## send JSON and CSV requests, print the answers, stop everything.
demo: $(VENV)/.installed-demo
	$(PY) examples/demo.py

## test: install the dev extras, build (once; cached outside the tree) the two SageMaker SDK
## environments and the AWS CLI's that the SDK and CLI tests run with, and run the whole test suite.
test: $(VENV)/.installed-dev
	PYTHON=$(PYTHON) scripts/sdk-venv 2 >/dev/null
	PYTHON=$(PYTHON) scripts/sdk-venv 3 >/dev/null
	PYTHON=$(PYTHON) scripts/sdk-venv awscli >/dev/null
	HF_HUB_OFFLINE=1 $(PY) -m pytest

## bench: the serving benchmark; writes docs/benchmarks.md.
bench: $(VENV)/.installed-dev
	$(PY) -m bench serve

## fuzz: every fuzz target (fuzz/, docs/reliability.md) for FUZZ_SECONDS each (make test runs each for 2000
## inputs), FUZZ_JOBS at a time; the corpus grows in .fuzz/corpus, crashes land in .fuzz/crashes.
FUZZ_SECONDS ?= 300
FUZZ_JOBS ?= 2
fuzz: $(VENV)/.installed-dev
	$(PY) -m fuzz run --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) $(FUZZ_TARGETS)

## lint: ruff, mypy --strict (src, bench and fuzz), and the layer contracts (import-linter, pyproject.toml).
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests bench examples fuzz
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --config pyproject.toml

clean:
	rm -rf $(VENV) .demo build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .fuzz
