# Every target builds .venv from scratch when it is missing.
# The `alexnet` command runs itself under mimalloc (a pip wheel, see src/alexnet/allocator.py);
# ALEXNET_ALLOCATOR=system turns that off. Nothing here depends on a system allocator package.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export ALEXNET_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(HOME)/.cache/alexnet)

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alexnet demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# Everything not marked slow (the end-to-end runs, subprocess kills, disk-full children): under a minute.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Ours vs torchvision's in one run on this machine (about 5 minutes on 2 cores); JSON into benchmarks/results.
bench: $(STAMP)
	mkdir -p benchmarks/results/local
	$(BIN)/alexnet benchmark --json > benchmarks/results/local/benchmark.json
	@echo "wrote benchmarks/results/local/benchmark.json"

clean:
	rm -rf $(VENV) build src/*.egg-info
