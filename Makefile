# Preservarium Pusher — developer entry points.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: dev test lint format bench chaos clean

$(STAMP): pyproject.toml devtools/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ot2,bench]' -e ./devtools
	touch $(STAMP)

dev: $(STAMP)  ## embedded Kafka-compatible broker + API (ARGS="--api-port 8080")
	$(BIN)/pusher dev $(ARGS)

lint: $(STAMP)  ## ruff (format + lint), mypy and the import directions
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint  ## the whole suite, integration tests included, in two processes
	$(BIN)/pytest -n 2 $(ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)  ## every benchmark (~6 min); writes docs/benchmarks.md and its charts
	command -v wrk >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }
	devtools/scripts/ensure-postgres.sh
	rm -rf .bench
	timeout 300 $(BIN)/python bench/run_bench.py $(ARGS)
	timeout 240 $(BIN)/python bench/tracker_bench.py
	timeout 360 $(BIN)/python bench/mqtt_bench.py
	timeout 180 $(BIN)/python bench/coap_bench.py
	timeout 240 $(BIN)/python bench/live_bench.py
	$(BIN)/python bench/charts.py docs/bench-throughput.png

chaos: $(STAMP)  ## replicas under faults (full size); writes docs/reliability.md
	rm -f .chaos-report.jsonl
	CHAOS_FULL=1 CHAOS_REPORT=.chaos-report.jsonl $(BIN)/pytest -s tests/chaos $(ARGS); \
	status=$$?; $(BIN)/python -m tests.chaos.report .chaos-report.jsonl docs/reliability.md; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
