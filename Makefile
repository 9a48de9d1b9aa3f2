# ViT-Embedding-DriveData: `make run` embeds nuScenes v1.0-mini, `make test` runs the test suite.
# Both set up the virtual environment (.venv) and the CDK CLI (node_modules) on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/mini
ARGS   ?=

.PHONY: setup run test test-fast bench clean

setup: $(STAMP) node_modules/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: the newest builds these machines serve (CUDA build, runs on CPU too)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,notebook,cdk]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP)
	$(PY) -m job run --out $(OUT) $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: $(STAMP)
	$(PY) bench/embed_bench.py
	$(PY) bench/archive_bench.py
	$(PY) bench/index_bench.py
	$(PY) bench/umap_bench.py
	$(PY) bench/gpu_throughput.py

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache
