# `make run` and `make test` each work on a fresh clone: they create .venv and install
# everything first. torch 2.13.0 goes in before the package so pip never pulls a CUDA build
# that the range torch>=2.4 would otherwise allow.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/laptop.yaml

.PHONY: install run test test-fast bench clean mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,rllib]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/accord train $(CONFIG)

test: install
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/pytest -q -m "not integration and not learning"

bench: install
	$(BIN)/accord bench throughput
	$(BIN)/accord bench combiners

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# Mutation testing (not part of `make test`): MUTANTS is a mutmut name glob, e.g.
# MUTANTS='learner.impala.loss.*'; one worker by default (the tests are single-threaded).
MUTANTS ?=
MUTATION_WORKERS ?= 1
mutation: install
	$(BIN)/pip install -q -e ".[test,mutation]"
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATION_WORKERS) $(MUTANTS)
	$(BIN)/python tests/mutation_report.py
