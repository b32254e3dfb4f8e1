# The two commands that matter: `make demo` (nothing but Python needed) and `make test`
# (real PostgreSQL and Redis; `.ci/run` starts them first when they are down).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Two stamps: the demo needs the runtime requirements only; tests, lint and benchmarks add the
# development ones (pytest, Playwright, ruff, py-spy) on top.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
# The demo's ports: the gateway and admin, and the built-in mock provider.
DEMO_PORT ?= 8000
DEMO_MOCK_PORT ?= 8090
# The browser test (tests/test_admin_browser.py) drives Debian's Chromium through Playwright;
# Playwright never downloads a browser here.
CHROMIUM ?= /usr/bin/chromium
# The suite starts Debian's pgbouncer (tests/conftest.py `through_pgbouncer`, tests/pg_servers.py).
PGBOUNCER ?= /usr/sbin/pgbouncer
# `make test`'s main run: every gateway process, Celery worker and beat that a test starts reaches
# PostgreSQL through a PgBouncer in transaction pooling mode that the run starts, as production
# behind one does (docs/database.md). TEST_THROUGH_PGBOUNCER=0 for a run straight to PostgreSQL.
TEST_THROUGH_PGBOUNCER ?= 1
# The straight path stays tested: after the suite (unless PYTEST_ARGS picks a part), these run
# again with every process talking to PostgreSQL directly (the journal's: PostgreSQL itself
# unreachable from the gateway), and so do the Redis topology runs.
OUTAGE_TEST := tests/test_journal_live.py::test_a_postgres_outage_of_10_s_bills_every_served_call_and_answers_in_json
DIRECT_TESTS ?= tests/test_gateway_e2e.py tests/test_celery_worker.py '$(OUTAGE_TEST)[gateway-refuse]' '$(OUTAGE_TEST)[gateway-hang]'
# `make test-pgbouncer`: only these, through a PgBouncer (PGBOUNCER_TESTS="tests/test_limits_live.py …").
PGBOUNCER_TESTS ?= tests/test_gateway_e2e.py
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install install-dev demo test test-services test-pgbouncer test-redis-topologies lint bench bench-admin bench-soak chromium pgbouncer clean

$(RUNTIME_STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $(RUNTIME_STAMP)

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $(DEV_STAMP)

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

demo: $(RUNTIME_STAMP)
	$(PY) manage.py demo --port $(DEMO_PORT) --mock-port $(DEMO_MOCK_PORT)

chromium:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@test -x $(CHROMIUM)

pgbouncer:
	@test -x $(PGBOUNCER) || { echo "installing Debian's pgbouncer for the PgBouncer tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq pgbouncer >/dev/null; }
	@test -x $(PGBOUNCER)

# PostgreSQL and Redis answer (else one clear line, at once), the test database exists (else it
# is created): tests/preflight.py.
test-services: $(DEV_STAMP)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m tests.preflight

test: $(DEV_STAMP) chromium pgbouncer test-services
	$(VENV)/bin/lint-imports
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) TEST_THROUGH_PGBOUNCER=$(TEST_THROUGH_PGBOUNCER) $(PY) -m pytest $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) TEST_THROUGH_PGBOUNCER=0 $(PY) -m pytest -q $(DIRECT_TESTS))
	$(if $(PYTEST_ARGS),,$(MAKE) test-redis-topologies)

# PGBOUNCER_TESTS alone, with every gateway and worker behind a PgBouncer in transaction pooling
# mode that the run starts (as `make test`'s main run; tests/conftest.py, docs/database.md).
test-pgbouncer: $(DEV_STAMP) pgbouncer test-services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) TEST_THROUGH_PGBOUNCER=1 $(PY) -m pytest $(PGBOUNCER_TESTS) $(PYTEST_ARGS)

# The live limits, budgets, response cache and routing tests again, once on a three-primary Redis
# Cluster (each primary with a replica) and once behind a Sentinel, each after a forced failover,
# which tests/redis_topology.py starts from Debian's redis-server on free ports (docs/redis.md);
# skipped without redis-server. (tests/test_limits_live.py holds the tenant's and a key's budgets too.)
REDIS_TOPOLOGY_TESTS ?= tests/test_limits_live.py tests/test_response_cache.py tests/test_routing_live.py
test-redis-topologies: $(DEV_STAMP) test-services
	TEST_REDIS_TOPOLOGY=cluster DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	  $(PY) -m pytest -p tests.redis_topology tests/test_redis_cluster_failover_live.py $(REDIS_TOPOLOGY_TESTS)
	TEST_REDIS_TOPOLOGY=sentinel DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	  $(PY) -m pytest -p tests.redis_topology tests/test_redis_failover_live.py $(REDIS_TOPOLOGY_TESTS)

# lint-imports: the layers in pyproject.toml (console → gateway | config → billing → tenants).
lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

bench: $(DEV_STAMP)
	$(PY) bench/gateway_overhead.py

bench-admin: $(DEV_STAMP)
	$(PY) bench/admin_pages.py

# The whole stack for 10 minutes (MINUTES=1 for a short one), with its checks: docs/benchmark.md#soak.
bench-soak: $(DEV_STAMP)
	nice -n 10 $(PY) bench/soak.py --minutes $(or $(MINUTES),10)

clean:
	rm -rf $(VENV) db.sqlite3 var/
