# ViT-Embedding-DriveData: `make run` embeds nuScenes v1.0-mini, `make test` runs the test suite.
# Both set up the virtual environment (.venv, exactly the packages of requirements.lock) and the CDK CLI
# (node_modules) on first use. `make lock` refreshes the locks after editing pyproject.toml's dependency lists.
# The cloud deploy (`make preflight`, `make deploy`, `make destroy`) needs only the small deploy environment
# (.venv-deploy, exactly requirements-deploy.lock: `make deploy-setup`), which installs on macOS, Linux and WSL.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/mini
ARGS   ?=
# The lock: every Python dependency of every extra, hash-pinned, resolved for this Python on Linux x86_64 (the
# test machines and the job image, python:3.11-slim). docker/requirements.txt is the image's subset, same pins.
LOCK        := requirements.lock
IMAGE_LOCK  := docker/requirements.txt
LOCK_PYTHON := 3.11
LOCK_ARGS   ?=
UV_COMPILE  := $(PY) -m uv pip compile pyproject.toml --generate-hashes --python-version $(LOCK_PYTHON) \
               --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --quiet
# The deploy side's lock: pyproject.toml's `deploy` dependency group (the CDK, cdk-nag, boto3), resolved universally
# (every OS and CPU uv knows, Python DEPLOY_PYTHON_MIN and newer) at requirements.lock's versions, hash-pinned. The
# CDK app and the preflight import only the standard-library modules of job/ (tests/test_deploy_lock.py).
DEPLOY_LOCK       := requirements-deploy.lock
DEPLOY_PYTHON_MIN := 3.10
DEPLOY_VENV       ?= .venv-deploy
DEPLOY_PY         := $(DEPLOY_VENV)/bin/python
DEPLOY_STAMP      := $(DEPLOY_VENV)/.installed
# pip's downloads for the deploy venv, kept in the repository (git-ignored): a rebuild (a new lock, the CI test that
# builds one from the lock alone) reads them from there.
DEPLOY_PIP_CACHE  ?= $(CURDIR)/.cache/pip
# What the preflight derives from the account for the deploy (-c max_vcpus=N for engine=batch): cdk deploy adds it.
PREFLIGHT_CONTEXT := $(DEPLOY_VENV)/preflight.context
# PEP 503 names (lower case, runs of -_. as one -): how pip freeze and the lock are compared.
NORMALIZE   := sed -E 's/[-_.]+/-/g' | tr 'A-Z' 'a-z' | sort -u
CHECKOV_VERSION := 3.3.30
# The suite in parallel (pytest-xdist; TEST_WORKERS=0 runs it in this process): one worker more than the cores, 4 at
# most, because part of its time is waits on jobs started as subprocesses (on 2 cores, 3 workers finished 8 % sooner
# than 2). worksteal evens out the few long rehearsals.
TEST_WORKERS ?= $(shell n=$$(( $$(nproc 2>/dev/null || echo 1) + 1 )); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST      := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal
CHECKOV     := $(VENV)/tools/checkov/bin/checkov
# Node.js: jsii (the CDK's Python bridge) and the CDK CLI support Node 22 and 24; Node 20 is end-of-life. Where the
# system's node is older (or missing), every recipe runs with the Node pinned in tools/node (the `node` package from
# the npm registry, installed by setup), first on PATH.
NODE_MIN_MAJOR := 22
NODE_MAJOR  := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
ifeq ($(shell [ "$(NODE_MAJOR)" -ge "$(NODE_MIN_MAJOR)" ] && echo ok),ok)
PINNED_NODE :=
else
PINNED_NODE := tools/node/node_modules/.installed
export PATH := $(CURDIR)/tools/node/node_modules/.bin:$(PATH)
endif

.PHONY: setup deploy-setup run test test-fast lint lock preflight deploy destroy status checkov bench clean

setup: $(STAMP) $(DEPLOY_STAMP) node_modules/.installed

# The deploy environment: a fresh venv with exactly requirements-deploy.lock (hash-checked, no resolution), rebuilt
# whenever the lock changes. Any Python from DEPLOY_PYTHON_MIN on (macOS: python3 from Homebrew or python.org).
deploy-setup: $(DEPLOY_STAMP) node_modules/.installed

$(DEPLOY_STAMP): $(DEPLOY_LOCK)
	@$(PYTHON) -c 'import sys; v = tuple(map(int, "$(DEPLOY_PYTHON_MIN)".split("."))); sys.exit(None if sys.version_info[:2] >= v else "the deploy needs Python $(DEPLOY_PYTHON_MIN) or newer, $(PYTHON) is " + sys.version.split()[0] + ": run make with PYTHON=python3.12 (macOS: brew install python@3.12)")'
	rm -rf $(DEPLOY_VENV)
	$(PYTHON) -m venv $(DEPLOY_VENV)
	PIP_CACHE_DIR=$(DEPLOY_PIP_CACHE) $(DEPLOY_PY) -m pip install --quiet --require-hashes --no-deps -r $(DEPLOY_LOCK)
	$(DEPLOY_PY) -m pip check
	touch $@

# Installs exactly the lock: hash-checked, no dependency resolution, and anything a previous lock had that this one
# does not is removed. The project itself goes in editable, without dependencies and without build isolation (its
# build backend, setuptools, is in the lock too).
$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(None if v == "$(LOCK_PYTHON)" else "$(LOCK) is resolved for Python $(LOCK_PYTHON), $(PYTHON) is " + v + ": run make with PYTHON=python$(LOCK_PYTHON)")'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@# What an earlier lock installed and this one does not goes first: a package replaced by another that owns the
	@# same files (faiss-cpu -> faiss-gpu: both install faiss/) would otherwise take the new one's files with it.
	$(PY) -m pip freeze --exclude-editable | sed -E 's/[ =@].*//' | $(NORMALIZE) > $(VENV)/.have
	sed -nE 's/^([A-Za-z0-9][A-Za-z0-9._-]*)==.*/\1/p' $(LOCK) | $(NORMALIZE) > $(VENV)/.want
	comm -23 $(VENV)/.have $(VENV)/.want | xargs -r $(PY) -m pip uninstall --quiet --yes
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# nuscenes-devkit (dev extra: tests/test_nuscenes_ego.py) declares numpy<2 and map/CLI extras it does not need to
	@# read tables; the lock overrides them on purpose (pyproject.toml [tool.uv]). Every other conflict fails setup.
	$(PY) -m pip check | grep -v -e '^nuscenes-devkit ' -e '^No broken requirements found' | { ! grep .; }
	touch $@

node_modules/.installed: package.json package-lock.json $(PINNED_NODE)
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Only where the system's node is older than NODE_MIN_MAJOR (see above): a Node 24 binary from the npm registry.
tools/node/node_modules/.installed: tools/node/package.json tools/node/package-lock.json
	cd tools/node && npm ci --no-audit --no-fund --loglevel=error
	tools/node/node_modules/.bin/node --version
	touch $@

# Re-resolve after editing pyproject.toml: keeps every pin that still fits (LOCK_ARGS=--upgrade to move them all,
# LOCK_ARGS="--upgrade-package NAME" for one). Needs PyPI; then `make setup` installs the new lock.
# (No dependency on setup: a pyproject.toml edit makes the installed lock stale, which is why you are re-locking.)
lock:
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install --quiet "uv==$$(sed -nE 's/^uv==([^ ]+).*/\1/p' $(LOCK))"
	$(UV_COMPILE) --all-extras $(LOCK_ARGS) -o $(LOCK)
	$(UV_COMPILE) --constraint $(LOCK) -o $(IMAGE_LOCK)
	$(PY) -m uv pip compile --group deploy --universal --generate-hashes --python-version $(DEPLOY_PYTHON_MIN) \
		--constraint $(LOCK) --custom-compile-command "make lock" --quiet -o $(DEPLOY_LOCK)

run: $(STAMP)
	$(PY) -m job run --out $(OUT) $(ARGS)

# checkov (below) is installed once, in its own venv (~40 s), so the template tests run it too. Lint first: ruff and
# mypy (configured in pyproject.toml) must report zero errors on job/ and cdk/.
test: setup checkov lint
	$(PYTEST) $(ARGS)

test-fast: setup
	$(PYTEST) -m "not slow" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check job cdk app.py
	$(PY) -m mypy

# What a run is doing (local or s3://): make status RUN=s3://bucket/runs/ID/ [ARGS=--watch]
status: $(STAMP)
	$(PY) -m job status $(RUN) $(ARGS)

# Checks with your AWS credentials what a first deploy needs (types offered, GPU quota less what runs, AMI, bootstrap).
# Context as for cdk: make preflight ARGS="-c market=spot -c region=us-east-1"
preflight: $(DEPLOY_STAMP)
	$(DEPLOY_PY) -m cdk.preflight $(ARGS)

# A deploy that passes the preflight first (it refuses to replace a run the stack still runs, among others), with the
# -c options the preflight derived from the account (PREFLIGHT_CONTEXT): make deploy ARGS="-c dataset=mini"
deploy: deploy-setup
	$(DEPLOY_PY) -m cdk.preflight --context-out $(PREFLIGHT_CONTEXT) $(ARGS)
	npx cdk deploy $(ARGS) $$(cat $(PREFLIGHT_CONTEXT))

# Prints what the destroy keeps and the one command that brings the run back, then destroys: make destroy [ARGS=...]
destroy: deploy-setup
	$(DEPLOY_PY) -m cdk.teardown $(ARGS)
	npx cdk destroy $(ARGS)

# checkov pins its own dependencies below ours (packaging, urllib3, networkx), so it lives in its own venv; the
# tests run it on the synthesized template when it is there (tests/test_cdk_lint.py).
checkov: $(CHECKOV)
$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)

bench: $(STAMP)
	$(PY) bench/embed_bench.py
	$(PY) bench/archive_bench.py
	$(PY) bench/index_bench.py
	$(PY) bench/umap_bench.py
	$(PY) bench/merge_bench.py
	$(PY) bench/filter_bench.py --json bench/results/filter_bench.json
	$(PY) bench/text_tuning_bench.py --json bench/results/text_tuning_bench.json
	$(PY) bench/read_vectors_bench.py
	$(PY) bench/gpu_throughput.py
	$(PY) bench/faiss_wheel_bench.py --rescore-only

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) node_modules tools/node/node_modules cdk.out .pytest_cache
