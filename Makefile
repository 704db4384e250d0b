# Two commands for a newcomer: `make quickstart` and `make test`. Both set everything up first
# (Debian packages for headless rendering, a virtual environment in .venv, the project in it).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Headless OpenGL for MuJoCo through EGL (Mesa's software renderer when there is no GPU).
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri xvfb xdotool libhidapi-hidraw0 libusb-1.0-0 gcc libc6-dev linux-libc-dev python3-dev
export MUJOCO_GL ?= egl

# Training budget of the quickstart (about two minutes on 2 cores).
QS_TRAIN ?= train.steps=12000

.PHONY: setup quickstart test test-slow lint format bench clean

$(VENV)/.installed: pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,text,teleop,hardware]"
	@touch $@

setup: $(VENV)/.installed

## The whole loop on MT10 from state: the experts' reference row, 20 demonstrations per task
## recorded into a DemoStore, BC trained on them, and the trained policy's success per task.
QS := data/quickstart
quickstart: setup
	$(VENV)/bin/il eval --policy expert --env metaworld/MT10 --episodes-per-task 10 \
		--json $(QS)/expert.json
	$(VENV)/bin/il record --source expert --env metaworld/MT10 --episodes-per-task 20 \
		--only-success --obs state --out $(QS)/mt10.zarr
	$(VENV)/bin/il info $(QS)/mt10.zarr
	rm -rf $(QS)/bc
	$(VENV)/bin/il train --policy bc --data $(QS)/mt10.zarr --out $(QS)/bc $(QS_TRAIN)
	$(VENV)/bin/il eval --checkpoint $(QS)/bc --episodes-per-task 10 \
		--video $(QS)/videos --json $(QS)/bc.json

## Lint, then the fast tests (slow ones are marked and run by `make test-slow`).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/pytest -m "not slow"; rc=$$?; \
	if [ $$rc = 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

test-slow: setup
	@$(VENV)/bin/pytest -m slow; rc=$$?; \
	if [ $$rc = 5 ]; then echo "error: no slow tests were collected"; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Every benchmark under benchmarks/, each printing its table.
bench: setup
	$(PY) benchmarks/render.py
	$(PY) benchmarks/store.py
	$(PY) benchmarks/eval_speed.py
	$(PY) benchmarks/act_latency.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/import_time.py
	$(PY) benchmarks/ur_roundtrip.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
