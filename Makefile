# Every target builds .venv from scratch when it is missing.
# The `alexnet` command runs itself under mimalloc (a pip wheel, see src/alexnet/allocator.py);
# ALEXNET_ALLOCATOR=system turns that off. Nothing here depends on a system allocator package.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium
export ALEXNET_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(HOME)/.cache/alexnet)

.PHONY: install demo test test-fast lint docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Chromium for tests/test_report.py's headless-browser check (it skips without one). Installed with Debian's
# apt-get only when missing, as root or through sudo that needs no password; never fails the build. The stamp
# is written once a browser is there, so a run that could not install one tries again next time.
CHROMIUM_NAMES := chromium chromium-browser google-chrome google-chrome-stable
$(CHROMIUM): | $(STAMP)
	@for name in $(CHROMIUM_NAMES); do \
	  if command -v $$name >/dev/null 2>&1; then echo "chromium: using $$(command -v $$name)"; touch $@; exit 0; fi; \
	done; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium: none of $(CHROMIUM_NAMES) is on PATH and there is no apt-get; install Chromium" \
	       "for the browser test, which skips until then"; exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then as=""; elif sudo -n true 2>/dev/null; then as="sudo -n"; else \
	  echo "chromium: not installed, and not root with no sudo that works without a password; run" \
	       "'sudo apt-get install chromium' for the browser test, which skips until then"; exit 0; \
	fi; \
	apt="$$as env DEBIAN_FRONTEND=noninteractive apt-get"; \
	echo "chromium: installing Debian's chromium for the browser test"; \
	if $$apt install -y --no-install-recommends chromium || { $$apt update && $$apt install -y --no-install-recommends chromium; }; \
	then touch $@; else echo "chromium: apt-get could not install it; the browser test skips until it is installed"; fi

demo: $(STAMP)
	$(BIN)/alexnet demo

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(MAKE) docs
	$(BIN)/python -m pytest -q

# Everything not marked slow (the end-to-end runs, subprocess kills, disk-full children): under a minute.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The documentation site into site/, in strict mode (a warning fails it): the experiments' figures are copied
# in first (docs/results is generated, not committed).
docs: $(STAMP)
	rm -rf docs/results && cp -r experiments/results docs/results
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Ours vs torchvision's in one run on this machine (about 9 minutes on 2 cores); JSON into benchmarks/results.
bench: $(STAMP)
	mkdir -p benchmarks/results/local
	$(BIN)/alexnet benchmark --json > benchmarks/results/local/benchmark.json
	@echo "wrote benchmarks/results/local/benchmark.json"

clean:
	rm -rf $(VENV) build src/*.egg-info site docs/results
