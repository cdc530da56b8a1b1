# One way to build, check and test for everyone: a local virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers for make test and make integration (docs/testing.md)
PYTEST_WORKERS ?= 3

export ORCHESTRATOR_DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/orchestrator
export ORCHESTRATOR_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/

.PHONY: venv install node-deps browser failover-tools broker-plugins lint types test bytecode unit integration screenshots demo migrate run bench bench-replicas chaos clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: venv

# The Node.js participant's dependencies (participants/node/README.md), exactly as the lock file
# says; again only when the lock file changed. Its integration test needs them.
NODE_DIR := participants/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

# Debian's chromium, for the console's browser tests (tests/integration/test_console_browser.py,
# which fail without it): installed only when missing, from Debian's packages (as root, as CI
# runs). Playwright drives it; no browser build of Playwright's own is ever downloaded.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# pg_auto_failover (Debian's pg-auto-failover-cli and postgresql-15-auto-failover), for the test that
# kills a database primary under load (tests/integration/test_database_failover.py, which fails
# without it): installed only when missing, from Debian's packages (as root, as CI runs).
failover-tools:
	@command -v pg_autoctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pg-auto-failover-cli postgresql-15-auto-failover; }

# The local RabbitMQ's consistent-hash exchange, which partitioned consumption needs
# (docs/scaling.md) and the partition tests use: enabled only when missing, on the node
# rabbitmq-plugins reaches (as CI runs, as root); enabling it changes nothing else. Where
# rabbitmq-plugins is not here (a broker in a container), docker-compose.yml enables it.
broker-plugins:
	@if command -v rabbitmq-plugins >/dev/null 2>&1; then \
		rabbitmq-plugins -q is_enabled rabbitmq_consistent_hash_exchange >/dev/null 2>&1 || \
			rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange; \
	else echo "make: no rabbitmq-plugins here: the broker must have rabbitmq_consistent_hash_exchange enabled"; fi

lint: venv
	$(BIN)/ruff check orchestrator participants bench tests migrations
	$(BIN)/ruff format --check orchestrator participants bench tests migrations

types: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit -q

integration: venv node-deps browser failover-tools broker-plugins bytecode
	$(BIN)/pytest tests/integration -q -n $(PYTEST_WORKERS) --dist loadgroup

# On three workers (tests that must not run beside each other share an xdist group, tests/conftest.py);
# ends with the 20 slowest tests and the time per tier (docs/testing.md), where the suite's time goes.
test: venv node-deps browser failover-tools broker-plugins lint types bytecode
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=20

# Our modules compiled once: with PYTHONDONTWRITEBYTECODE set (as on this machine and in many CI
# images) each of the suite's ~460 processes would compile them again, about 0.1 s of CPU each.
bytecode: venv
	$(BIN)/python -m compileall -q orchestrator participants bench tests migrations > /dev/null

# The console's pictures in docs/console/ (docs/console.md, README "Console"), taken by its browser
# test against a real service with sagas in several states.
screenshots: venv browser
	CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest tests/integration/test_console_browser.py -q -k stuck

migrate: venv
	$(BIN)/orchestrator migrate

# Local use: without ORCHESTRATOR_API_TOKEN the API runs --insecure, on ORCHESTRATOR_API_HOST (default 127.0.0.1).
run: migrate
	$(BIN)/orchestrator run $(if $(ORCHESTRATOR_API_TOKEN),,--insecure)

demo: migrate
	$(BIN)/python -m bench.demo

# The benchmark (docs/benchmark.md), beside the floor script BENCH_FLOOR names, as in
# `make bench BENCH_FLOOR=/path/to/pipeline.py`; without one it measures the orchestrator alone and
# says so. It migrates and empties a database of its own (BENCH_DATABASE_URL, default
# orchestrator_bench), never the one above. Its throughput scenario also runs the peer, the same
# saga written with DBOS (bench/peer_dbos.py), in a database of the peer's own beside it
# (orchestrator_bench_dbos, emptied at start).
bench: migrate
	$(BIN)/python -m bench

# Throughput with 1, 2 and 3 replicas and the failover time under SIGKILL (docs/benchmark.md,
# "Replicas"), on the same database of its own as bench.
bench-replicas: migrate
	$(BIN)/python -m bench.replicas

# The chaos suite (docs/chaos.md): CHAOS_SAGAS sagas through CHAOS_REPLICAS replicas while a fault
# loop drawn from CHAOS_SEED kills replicas, restarts a private broker node, ends database sessions
# and stops participants; exits non-zero if any check fails. It creates and drops a database of its
# own (CHAOS_ADMIN_DSN's server) and never touches the shared broker. Other CHAOS_* variables
# (CHAOS_RATE, CHAOS_DEADLINE, CHAOS_FAULT_EVERY, CHAOS_OUT) reach it through the environment.
CHAOS_SAGAS ?= 10000
CHAOS_REPLICAS ?= 3
CHAOS_SEED ?= 1
# responder: the benchmark responders; kit: the example participants on the participant kit, their
# business tables checked (CHAOS_FAIL_RATE, CHAOS_CONCURRENCY and CHAOS_PARTICIPANT_DELAY apply to
# the kit only). The kit does not keep up with the default CHAOS_RATE (docs/chaos.md, "How long it
# takes"): its runs pass, but most sagas compensate.
CHAOS_PARTICIPANTS ?= responder
# CHAOS_PARTITIONS (6): the replicas' ORCHESTRATOR_PARTITIONS; 1 runs them on one shared queue.
# CHAOS_HA=1: a 3-node broker cluster and pg_auto_failover, primaries killed and the replicas'
# broker node stopped besides the other faults, the kit's participants (docs/chaos.md)
chaos: venv failover-tools
	$(BIN)/python -m bench.chaos --sagas $(CHAOS_SAGAS) --replicas $(CHAOS_REPLICAS) --seed $(CHAOS_SEED) \
		--participants $(CHAOS_PARTICIPANTS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
