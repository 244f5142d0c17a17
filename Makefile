# FedFace developer commands. `make test` is what CI runs (via .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export FEDFACE_DATA ?= $(abspath ../shared/data)

.PHONY: install face-model test lint typecheck pytest serve demo bench-ingest bench-fedface clean

install: $(VENV)/.installed face-model

# The pretrained face network the demo and the bench start from: npm's @vladmandic/face-api,
# pinned by version and SHA-256, fetched into the model cache and imported (about a second).
face-model: $(VENV)/.installed
	$(VENV)/bin/fedface models fetch face-api
	$(VENV)/bin/fedface models import face-api

# torch is pinned (==2.13.0) in pyproject so that results reproduce; pip installs the CPU or the CUDA
# build of it depending on the index it is given (docs/install.md). facenet-pytorch is installed without
# its dependencies because it pins an old torch and torchvision; only its MTCNN weight files are used.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[server,agent,lab,dev]"
	$(PIP) install -q --no-deps facenet-pytorch==2.6.0
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy .

pytest: install
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

serve: install
	$(VENV)/bin/fedface serve

demo: install
	$(VENV)/bin/fedface demo

# Both write into fedface-data/, not over a committed result in docs/results/ (each names the machine
# class it ran on and the command that made it; docs/benchmarks.md says what each bench measures).
bench-ingest: install
	$(VENV)/bin/fedface bench ingest --devices 500 --params 1000000 --out fedface-data/ingest.json

bench-fedface: install
	$(VENV)/bin/fedface bench fedface --out fedface-data/fedface-results.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache fedface-data

# Container image targets (image-check, image-agent, ...); included last so `install` stays the default goal.
include deploy/make/image.mk
