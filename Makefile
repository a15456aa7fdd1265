# `make run` and `make test` each work on a fresh clone: they create .venv and install
# everything first. torch 2.13.0 goes in before the package so pip never pulls a CUDA build
# that the range torch>=2.4 would otherwise allow.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/laptop.yaml

.PHONY: install system-deps run test test-fast bench clean mutation proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,rllib]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/accord train $(CONFIG)

# Debian packages the tests run for real: Prometheus (and promtool) and Chromium (with
# fonts-dejavu-core, so screenshots have text) for monitoring, redis-server for the durable
# replay. Installed only when missing. The tests start their own Prometheus and redis-server
# on 127.0.0.1; the packages' system services would listen on other ports or interfaces, so
# where systemd started them, they are stopped and disabled again.
SYSTEM_TOOLS := /usr/bin/prometheus /usr/bin/promtool /usr/bin/chromium /usr/bin/redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@for tool in $(SYSTEM_TOOLS); do [ -x $$tool ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
			prometheus chromium fonts-dejavu-core redis-server && \
		{ ! command -v systemctl >/dev/null || $(SUDO) systemctl disable --now prometheus redis-server 2>/dev/null || true; }; \
	fi

test: install system-deps
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/pytest -q -m "not integration and not learning"

bench: install
	$(BIN)/accord bench throughput
	$(BIN)/accord bench combiners

# Regenerates the gRPC ingestion modules from ingest/ingest.proto (committed, so a plain install
# needs no protoc); grpcio-tools goes into the venv only for this.
proto: install
	$(BIN)/pip install -q -e ".[proto]"
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. ingest/ingest.proto

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
