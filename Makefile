# vlekit: `make demo` runs the built-in demo, `make test` the test-suite. Both install first.
# Inside an active virtualenv or conda environment we install there; otherwise into ./.venv.

ifneq ($(or $(VIRTUAL_ENV),$(CONDA_PREFIX)),)
PYTHON := python
ENV_DIR := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
else
PYTHON := .venv/bin/python
ENV_DIR := .venv
endif

# CPU-usable wheels that pip finds locally on the CI machines; on a GPU box the same pins are CUDA builds.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(ENV_DIR)/.vlekit-installed

.PHONY: setup demo test bench lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	@test -x $(PYTHON) || command -v $(PYTHON) >/dev/null || python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH_SPEC)
	$(PYTHON) -m pip install --quiet -e ".[dev]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
	@touch $(STAMP)

demo: setup
	$(PYTHON) -m vlekit.cli demo

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m vlekit.cli bench --preset tiny --device cpu

lab: setup
	$(PYTHON) -m pip install --quiet -e ".[notebooks]"
	$(PYTHON) -m jupyter lab notebooks/

clean:
	rm -rf .venv runs .pytest_cache
