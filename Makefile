# Two commands on a fresh machine with Python 3.11 and make: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench soak install clean system-deps

# Debian packages the tests need: mosquitto (MQTT transport tests start their own broker when
# nothing listens) and chromium + chromedriver (the dashboard's browser test). Installed only
# where missing; `make demo` needs none of them.
APT_PKGS := $(if $(shell command -v mosquitto || test -x /usr/sbin/mosquitto && echo y),,mosquitto) \
            $(if $(shell command -v chromium),,chromium) $(if $(shell command -v chromedriver),,chromium-driver)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qctrace demo --data-dir demo-data

lint: $(STAMP)
	$(BIN)/ruff check .

system-deps:
	@if [ -n "$(strip $(APT_PKGS))" ]; then echo "installing $(strip $(APT_PKGS))"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) >/dev/null; fi

test: $(STAMP) lint system-deps
	$(BIN)/python -m pytest -q --durations=25

bench: $(STAMP)
	$(BIN)/python bench/results.py   # every bench/*.py, then bench/RESULTS.md

# The fault campaign: the 10,000-tag soak plant (ten PLC servers, one serial logger) in real time,
# 2 edge nodes, 2 ingest workers, every fault kind at random (a process fault every ~15 s, a device fault every ~80 s), SOAK_S seconds
# per seed, checked against the simulator's ground truth; runs of 10 minutes or more also judge
# memory, file handles, spool size and Parquet file count. Not part of `make test`.
# The one-hour run: make soak SOAK_S=3600 SOAK_SEEDS=1
SOAK_S ?= 1800
SOAK_SEEDS ?= 1,2,3
soak: $(STAMP) system-deps
	$(BIN)/qctrace campaign --scenario soak --speed 1 --edges 2 --workers 2 --interval 15 \
	    --duration $(SOAK_S) --seeds $(SOAK_SEEDS) --work-dir campaign-data

clean:
	rm -rf $(VENV) demo-data campaign-data .pytest_cache .ruff_cache
