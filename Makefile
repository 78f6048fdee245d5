# reslab: two commands on a fresh machine.
#   make demo   trains a CIFAR-10 ResNet-20 for a short schedule and prints its test accuracy
#   make test   runs the linters and the test suite
# Both install uv (from PyPI) when it is missing and build the environment from uv.lock.

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
SHARED_DATA := $(abspath ../shared/data)
# Datasets: $RESLAB_DATA if set, else ../shared/data when it exists, else ~/.cache/reslab/data.
ifeq ($(RESLAB_DATA),)
ifneq ($(wildcard $(SHARED_DATA)/cifar-10-batches-py),)
export RESLAB_DATA := $(SHARED_DATA)
endif
endif

.PHONY: env demo test test-slow lint format bench clean

env:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --all-extras --quiet

demo: env
	$(UV) run reslab demo

test: env lint
	$(UV) run pytest

test-slow: env
	$(UV) run pytest -m slow

lint: env
	$(UV) run ruff check .
	$(UV) run ruff format --check .

format: env
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

clean:
	rm -rf .venv .pytest_cache .ruff_cache
