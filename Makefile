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

# The fault campaign: 30 minutes of random faults per seed (kill -9 of ingest and edge, broker crashes)
# on the distributed pipeline, checked against the simulator's ground truth. Not part of `make test`.
SOAK_S ?= 1800
soak: $(STAMP) system-deps
	$(BIN)/qctrace campaign --duration $(SOAK_S) --seeds 1,2,3 --work-dir campaign-data

clean:
	rm -rf $(VENV) demo-data campaign-data .pytest_cache .ruff_cache
