# Every target builds .venv from scratch when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export ALEXNET_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(HOME)/.cache/alexnet)
# jemalloc keeps large tensors' pages mapped (docs/performance.md): faster and repeatable on CPU.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2))
MALLOC_CONF := oversize_threshold:1,background_thread:false,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1
RUN     := $(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC) MALLOC_CONF=$(MALLOC_CONF))

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(RUN) $(BIN)/alexnet demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(RUN) $(BIN)/python -m pytest -q

# Everything not marked slow (the end-to-end runs, subprocess kills, disk-full children): under a minute.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(RUN) $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/model_step.py --models alexnet alexnet_nolrn
	$(RUN) $(BIN)/python benchmarks/lrn.py
	$(RUN) $(BIN)/python benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV) build src/*.egg-info
