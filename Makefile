# The README's two commands:
#   make demo   - set up, then run the main job: `autoprune search --target jetson-nano` on the built-in default
#   make test   - set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch is installed first, pinned to this machine's CPU build, so no requirement can pull a CUDA build.
# torchvision and timm (for `--model torchvision.models:NAME` / `timm:NAME` and their tests) come with --no-deps,
# so neither can replace it; their own small dependencies are in the dev extra.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps torchvision==0.28.0 timm==1.0.31
	touch $@

demo: setup
	$(BIN)/autoprune search --target jetson-nano

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check autoprune tests benchmarks

bench: setup
	$(BIN)/python benchmarks/pruning_speedup.py
	$(BIN)/python benchmarks/cost_model_fidelity.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
