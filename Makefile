# vlekit: `make demo` runs the built-in demo, `make test` the test-suite. Both install first.
# Inside an active virtualenv or conda environment we install there; otherwise into ./.venv.
# Installs are pinned by requirements.lock (pip -c): the exact versions the test-suite was run with.

ifneq ($(or $(VIRTUAL_ENV),$(CONDA_PREFIX)),)
PYTHON := python
ENV_DIR := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
else
PYTHON := .venv/bin/python
ENV_DIR := .venv
endif

# PyPI's torch for Linux is the CUDA build (with ~18 nvidia-* wheels, several GB), which also runs on a CPU.
# On a CPU-only machine, `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build
# of the same version instead (a few hundred MB). The CI machines find these pins in a local wheel cache.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(ENV_DIR)/.vlekit-installed
LOCK := requirements.lock
EXTRAS := dev,notebooks,tracking
PROJECT := -e ".[$(EXTRAS)]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
# Where `make test-latest` and `make lock` build the environment of the newest releases (always anew).
LATEST_ENV := .venv-latest
# pytest exits 5 when it collected no test: say so, and fail (a suite that ran nothing is not green).
NO_TESTS_FAIL = || { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests (exit 5): failing" >&2; exit $$status; }

.PHONY: setup demo test test-fast test-latest lock latest-env bench lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) $(PLUGINS)
	@test -x $(PYTHON) || command -v $(PYTHON) >/dev/null || python3 -m venv .venv
	$(PYTHON) -m pip install --quiet -c $(LOCK) --upgrade pip setuptools
	$(PYTHON) -m pip install --quiet -c $(LOCK) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH_SPEC) $(PROJECT)
	@touch $(STAMP)

demo: setup
	$(PYTHON) -m vlekit.cli demo

# Every suite runs on TEST_WORKERS processes (pytest-xdist; each test process uses one thread,
# tests/conftest.py): 2 fits CI's 2 cores (the whole suite: about 11 minutes there, 19 in one process).
# TEST_WORKERS=0 runs in this process (pdb, -x), TEST_WORKERS=auto one per core.
TEST_WORKERS ?= 2
PYTEST := -m pytest -n $(TEST_WORKERS)

test: setup
	$(PYTHON) $(PYTEST) $(NO_TESTS_FAIL)

# The developer's loop: everything but the tests marked slow (pyproject.toml says which).
test-fast: setup
	$(PYTHON) $(PYTEST) -m "not slow" $(NO_TESTS_FAIL)

# The newest releases pyproject.toml's ranges allow (torch stays at TORCH_SPEC), without the lock, in a
# fresh $(LATEST_ENV). A maintainer runs `make lock` to move the lock forward to them.
latest-env:
	rm -rf $(LATEST_ENV)
	python3 -m venv --upgrade-deps $(LATEST_ENV)
	$(LATEST_ENV)/bin/python -m pip install --quiet $(TORCH_SPEC) $(PROJECT)

test-latest: latest-env
	$(LATEST_ENV)/bin/python $(PYTEST) $(NO_TESTS_FAIL)

# Freeze the newest releases into the lock (editable project packages left out), then run the suite in that
# very environment: the lock's own tests check the new lock, so they must run after it is written.
lock: latest-env
	$(LATEST_ENV)/bin/python scripts/lock.py freeze --extras $(EXTRAS) --output $(LOCK)
	$(LATEST_ENV)/bin/python $(PYTEST) || { status=$$?; echo "the suite failed (exit $$status) on the new $(LOCK): do not commit it (git checkout $(LOCK))" >&2; exit $$status; }

bench: setup
	$(PYTHON) -m vlekit.cli bench --preset tiny --device cpu

# JupyterLab from the locked environment, with its interpreter registered as the kernel `vlekit`.
lab: setup
	$(PYTHON) -m ipykernel install --sys-prefix --name vlekit --display-name "Python (vlekit)"
	$(PYTHON) -m jupyterlab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

clean:
	rm -rf .venv $(LATEST_ENV) runs .pytest_cache
