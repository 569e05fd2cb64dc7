# The README's commands are targets here: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# The project's folder may have a space in its name ("my proj"): every path a recipe
# builds from $(CURDIR) is quoted ("$(BIN)/python"). Targets and prerequisites stay
# relative (.venv/.installed), since make splits those names on spaces.
BIN := $(CURDIR)/$(VENV)/bin
# What neither PATH (whose separator is ':') nor a recipe's double quotes can hold.
ifneq ($(findstring :,$(CURDIR))$(findstring ",$(CURDIR))$(findstring $$,$(CURDIR))$(findstring `,$(CURDIR))$(findstring \,$(CURDIR)),)
$(error '$(CURDIR)': a ':' in the project folder's path would split PATH, and " $$ ` \ would break the recipes' quoting; move the project to a folder without them)
endif
UV_VERSION := 0.13.9
# An absolute PATH entry (a space in it is fine), so tools that change directory
# still find the venv's python, dvc and reglab.
export PATH := $(BIN):$(PATH)

.PHONY: run test test-fast setup dataset services stack params plots lint format bench clean

run: setup dataset params  ## run the whole pipeline with DVC
	dvc repro

# Two workers, one test module each at a time (module fixtures such as a running
# pipeline or a PostgreSQL cluster stay in one worker), handed out in the order
# tests/conftest.py gives them (the longest first; xdist's own reorder would put
# modules with few, long tests such as the search tests last); the slowest listed.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder --durations=25

test: setup dataset services  ## run the whole test suite (what CI runs), with its data and services
	"$(BIN)/python" -m pytest $(PYTEST_ARGS)

# The everyday loop: units and small integrations, no pipelines, services or clusters
# (tests marked `slow` are left out; docs/testing.md says which tier covers what).
test-fast: setup dataset  ## the fast tier of the test suite
	"$(BIN)/python" -m pytest -m "not slow" -n 2 --dist loadfile --durations=10

setup: $(VENV)/.installed

# Bytecode compiled once at setup: where PYTHONDONTWRITEBYTECODE is set, every stage
# would otherwise recompile TensorFlow on import (25 s, not 8 s). `UV_SYNC_FLAGS=`
# skips it for a throw-away venv (tests/test_path_with_space.py).
UV_SYNC_FLAGS ?= --compile-bytecode

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x "$(BIN)/python" || $(PYTHON) -m venv $(VENV)
	"$(BIN)/python" -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	"$(BIN)/uv" pip sync --quiet $(UV_SYNC_FLAGS) --python "$(BIN)/python" requirements.lock
	"$(BIN)/uv" pip install --quiet --python "$(BIN)/python" --no-deps -e .
	touch $@

# Fashion-MNIST from Debian's package where apt is usable as root; otherwise the
# download stage fetches it from the mirrors in conf/data/fashion_mnist.yaml.
dataset:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST mirror present in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt-get could not install dataset-fashion-mnist; the download stage will use the network mirrors"; \
	else \
	  echo "Not root or no apt-get: the download stage will use the network mirrors"; \
	fi

# PostgreSQL for the team-stack tests (tests/test_team_stack.py) and `make stack`, and
# Chromium for the tests that look at a page (MLflow's UI, the offline plots), from
# Debian's packages where apt is usable as root; without them those tests are skipped.
services:
	@if (command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1) \
	    && command -v chromium >/dev/null; then \
	  echo "PostgreSQL and Chromium present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq postgresql chromium) \
	    || echo "apt-get could not install postgresql and chromium; their tests will be skipped"; \
	else \
	  echo "Not root or no apt-get: without PostgreSQL and Chromium their tests will be skipped"; \
	fi

stack: setup services  ## PostgreSQL + S3-compatible store + mlflow server (basic auth) on 127.0.0.1
	scripts/team-stack.sh

params: setup  ## compose conf/ into params.yaml (what every stage reads)
	"$(BIN)/python" -m reglab compose --output params.yaml

# `dvc plots show` with Vega, Vega-Lite and Vega-Embed inlined (reglab.report.offline_plots):
# the page renders without a network. The template is made once per lock file.
PLOTS_TEMPLATE := .reglab/plots-template.html
$(PLOTS_TEMPLATE): $(VENV)/.installed
	"$(BIN)/python" -m reglab plots-template $@

plots: setup $(PLOTS_TEMPLATE)  ## write dvc_plots/index.html (offline), as `dvc plots show` does
	"$(BIN)/dvc" plots show --html-template $(PLOTS_TEMPLATE)

lint: setup
	"$(BIN)/ruff" check src tests bench
	"$(BIN)/ruff" format --check src tests bench

format: setup
	"$(BIN)/ruff" check --fix src tests bench
	"$(BIN)/ruff" format src tests bench

# The benchmark (bench/README.md): the train stage and the pipeline against tutorial
# scripts. BENCH_ARGS passes options, e.g. BENCH_ARGS="--stage --repeats 5".
bench: setup dataset
	"$(BIN)/python" -m bench.whole $(BENCH_ARGS)

.PHONY: bench-tiny
bench-tiny: setup dataset  ## the benchmark's smoke version (a few minutes; what the tests run)
	"$(BIN)/python" -m bench.whole --tiny $(BENCH_ARGS)

clean:
	rm -rf data models reports mlruns mlflow.db
