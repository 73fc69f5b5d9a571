# visearch: `make demo` runs the main job on the local default, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VISEARCH := $(VENV)/bin/visearch
STAMP := $(VENV)/.installed

.PHONY: setup models demo up down test test-unit lint protos bench clean eval

# All re-rank modes on plain and transformed ukbench1000 queries (the stack must be up).
EVAL_MODES ?= none,geometric:rootsift,geometric:delf,texture

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,build,dev]'
	touch $(STAMP)

models: setup
	$(PY) -m services.models.build --out models

up: models
	$(VISEARCH) up

demo: up
	$(VISEARCH) demo

down:
	$(VISEARCH) down

test: models
	$(PY) -m pytest -ra

test-unit: setup
	$(PY) -m pytest -ra tests/unit

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

protos: setup
	PATH=$(VENV)/bin:$$PATH scripts/gen_protos.sh

eval: models
	$(VISEARCH) eval ../shared/datasets/ukbench1000 --rerank $(EVAL_MODES) \
		--queries plain,transformed --out bench/results/eval_ukbench1000.json
	$(PY) bench/render_report.py

clean:
	-$(VISEARCH) down
	rm -rf .visearch models
