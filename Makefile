# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv themselves, so they work on a fresh clone.

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest bench bench-peers chaos clean bench-dashboard

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/qml demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The short chaos scenarios mostly wait (for leases, restarts, outages): they run
# four at a time, after the rest of the suite.
CHAOS_WORKERS ?= 4
pytest: $(VENV)/.installed-dev
	$(BIN)/pytest --ignore=tests/chaos $(PYTEST_ARGS)
	$(BIN)/pytest tests/chaos -n $(CHAOS_WORKERS) $(PYTEST_ARGS)

test: lint typecheck pytest

# qml alone: drain throughput of N no-op jobs on each backend given in BENCH_URLS.
BENCH_URLS ?= memory:// sqlite:///$(CURDIR)/.bench.db
bench: $(VENV)/.installed
	for url in $(BENCH_URLS); do $(BIN)/python benchmarks/drain.py --storage $$url --jobs 10000; done

# qml next to its Python peers, measured in one run by ../shared/bench.
BENCH_SYSTEMS ?= qml_memory huey_memory qml_sqlite huey_sqlite qml_redis saq_redis taskiq_redis \
  huey_redis rq_redis arq_redis dramatiq_redis celery_redis streaq_redis qml_postgres pgqueuer_pg \
  procrastinate_pg saq_postgres
# Peer venvs and raw results stay in .bench/ (git-ignored); the table goes to
# benchmarks/peers/RESULTS.md. qml is installed editable, so its modules are
# byte-compiled first, as pip does for the peers' packages (with
# PYTHONDONTWRITEBYTECODE set, each worker process would compile them again).
bench-peers: $(VENV)/.installed
	mkdir -p .bench/results
	$(BIN)/python -m compileall -q src benchmarks/peers
	BENCH_ADAPTERS_DIR=$(CURDIR)/benchmarks/peers BENCH_PYTHON_qml=$(CURDIR)/$(BIN)/python \
	  BENCH_VENVS=$(CURDIR)/.bench/venvs BENCH_SCRATCH=$(CURDIR)/.bench/scratch \
	  RESULTS_DIR=$(CURDIR)/.bench/results/run-$$(date +%Y%m%d-%H%M%S) \
	  SYSTEMS="$(BENCH_SYSTEMS)" OUT_MD=$(CURDIR)/benchmarks/peers/RESULTS.md \
	  bash ../shared/bench/run_all.sh

# The full chaos scenarios (tests/chaos, marker chaos_full); the short ones run in `make test`.
# Figures of each run are appended to .bench/chaos-results.jsonl (git-ignored).
chaos: $(VENV)/.installed-dev
	mkdir -p .bench && QML_CHAOS_FULL=1 QML_CHAOS_RESULTS=$(CURDIR)/.bench/chaos-results.jsonl \
	  $(BIN)/pytest tests/chaos -m chaos_full -p no:cacheprovider -s $(PYTEST_ARGS)

# The dashboard at scale: Jobs page server time with DASH_JOBS jobs (SQLite in a temp
# file, PostgreSQL in its own schema, dropped afterwards), then storage calls/s with
# 1 and 20 live tabs while a worker runs. Figures go to docs/benchmarks.md by hand.
DASH_JOBS ?= 1000000
DASH_BACKENDS ?= sqlite postgres
bench-dashboard: $(VENV)/.installed
	for b in $(DASH_BACKENDS); do \
	  $(BIN)/python benchmarks/dashboard_scale.py pages --backend $$b --jobs $(DASH_JOBS) --vacuum || exit 1; \
	done
	for b in $(DASH_BACKENDS); do \
	  $(BIN)/python benchmarks/dashboard_scale.py tabs --backend $$b || exit 1; \
	done

# Scale: SCALE_JOBS no-op jobs queued, one worker process: drain rate (first 10,000 and
# all, against a store of 10,000), worker RSS and CPU per 1,000 jobs, the claim's plan;
# then the CPU of an idle worker over 60 s. Each run has its own SQLite file / Redis
# key prefix / PostgreSQL schema, removed afterwards. Figures go to docs/benchmarks.md by hand.
SCALE_JOBS ?= 1000000
SCALE_URLS ?= sqlite:///$(CURDIR)/.bench/scale.db redis://127.0.0.1:6379/7 \
  postgresql://postgres@127.0.0.1:5432/test
.PHONY: bench-scale
bench-scale: $(VENV)/.installed
	mkdir -p .bench
	for url in $(SCALE_URLS); do \
	  $(BIN)/python benchmarks/scale.py run --storage $$url --jobs $(SCALE_JOBS) || exit 1; \
	done
	for url in $(SCALE_URLS); do \
	  $(BIN)/python benchmarks/scale.py idle --storage $$url --seconds 60 || exit 1; \
	done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
