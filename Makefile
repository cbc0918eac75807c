# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast install clean-demo bench results science image

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU build on disk. The project itself only asks for torch>=2.4,
# which 2.13.0 satisfies, so pip does not pull a multi-GB CUDA build afterwards.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# The tests' extras on top (scanpy, kubernetes-validate, ...): the demo does not install them
# (14 s of a 75-s install with pip's cache warm, 2026-12-07).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/creformer demo --out runs/demo

# pytest exits 5 when it collects no test (e.g. a filtered run): reported, not a failure.
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The unit tests alone (no Ray cluster, no training): the quick loop while editing.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not integration" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# docs/results.md from the demo's scorecard.json and eval.json and the benchmarks' JSON.
results: $(STAMP)
	$(BIN)/python docs/make_results.py --demo runs/demo --out docs/results.md

# The science benchmark (benchmarks/science.py: 3 seeds of the whole path, larger budget than the
# demo's), then the results page from its JSON.
science: $(STAMP)
	$(BIN)/python benchmarks/science.py --out runs/science
	$(BIN)/python docs/make_results.py --demo runs/demo --science runs/science/science.json --out docs/results.md

bench: $(STAMP)
	$(BIN)/python benchmarks/elementary_shards.py

clean-demo:
	rm -rf runs/demo

# The container image (infra/Dockerfile); CUDA: make image IMAGE=... DOCKER_ARGS="--build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 --build-arg TORCH_INDEX=cu124 --build-arg DS_ACCELERATOR=cuda"
IMAGE ?= creformer:latest
image:
	docker build -f infra/Dockerfile $(DOCKER_ARGS) -t $(IMAGE) .
