"""Shared fixtures: named tenants (alice, bob), a small catalog with prices, and key helpers.

Service tests use the ordinary `db` fixture. Tests that talk to a live gateway process use
`transactional_db`, so that what they write is committed and visible to that process.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from billing.models import ModelPrice, Plan, Subscription
from tenants.models import CatalogModel, Deployment, Tenant
from tenants.services import api_key_create

PRICE_FROM = datetime(2024, 1, 1, tzinfo=UTC)


def make_model(name, provider, upstream, *, input_per_1m, output_per_1m, cached=None, cache_write=None, region=""):
    model = CatalogModel.objects.create(name=name, provider=provider)
    Deployment.objects.create(model=model, provider=provider, upstream=upstream, region=region)
    ModelPrice.objects.create(
        model=model,
        effective_from=PRICE_FROM,
        input_per_1m=Decimal(input_per_1m),
        output_per_1m=Decimal(output_per_1m),
        cached_input_per_1m=None if cached is None else Decimal(cached),
        cache_write_per_1m=None if cache_write is None else Decimal(cache_write),
    )
    return model


def make_embedding_model(name, provider, upstream, *, input_per_1m="0.02", region=""):
    model = make_model(name, provider, upstream, input_per_1m=input_per_1m, output_per_1m="0", region=region)
    model.kind = CatalogModel.Kind.EMBEDDING
    model.save(update_fields=["kind"])
    return model


def make_tenant(slug, *, plan=None, **fields):
    tenant = Tenant.objects.create(slug=slug, name=slug.title(), **fields)
    plan = plan or Plan.objects.get_or_create(name="standard")[0]
    Subscription.objects.create(tenant=tenant, plan=plan)
    return tenant


@pytest.fixture
def catalog(db):
    """Three models, one per provider, with prices that make exact costs easy to check."""
    return {
        "gpt": make_model(
            "gpt-test", "openai", "gpt-4o-mini-2024-07-18", input_per_1m="0.15", output_per_1m="0.60", cached="0.075"
        ),
        "claude": make_model(
            "claude-test",
            "anthropic",
            "claude-haiku-4-5",
            input_per_1m="1.00",
            output_per_1m="5.00",
            cached="0.10",
            cache_write="1.25",
        ),
        "azure": make_model(
            "azure-gpt-test", "azure", "gpt4o-prod-deployment", input_per_1m="2.50", output_per_1m="10.00"
        ),
    }


@pytest.fixture
def alice(db):
    return make_tenant("alice")


@pytest.fixture
def bob(db):
    return make_tenant("bob")


@pytest.fixture
def alice_key(alice):
    return api_key_create(tenant=alice, name="test")[1]


@pytest.fixture
def bob_key(bob):
    return api_key_create(tenant=bob, name="test")[1]


# --- live servers: the mock provider and a gateway process, both real HTTP on 127.0.0.1 ---

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def mock_llm():
    """The project's own fake provider (`manage.py mockllm`), as a real HTTP server."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "manage.py", "mockllm", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", process)
        yield url
    finally:
        stop(process)


# Set by `through_pgbouncer` (TEST_THROUGH_PGBOUNCER=1): the port of the PgBouncer that the run's
# gateway processes and Celery workers reach the test database through.
PGBOUNCER_PORT: int | None = None


def database_url() -> str:
    """The test database, for the processes a test starts: through the run's PgBouncer if any."""
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    if PGBOUNCER_PORT:
        return f"postgres://{user}@127.0.0.1:{PGBOUNCER_PORT}/{db['NAME']}"
    return f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture(scope="session", autouse=True)
def through_pgbouncer(request):
    """With TEST_THROUGH_PGBOUNCER=1, every gateway process and Celery worker of the run reaches the
    test database through a PgBouncer in transaction pooling mode that this starts (Debian's
    pgbouncer), with DATABASE_PGBOUNCER=1 as production sets it (docs/database.md). The test
    process itself still talks to PostgreSQL directly. `make test`'s main run is that way (and
    `make test-pgbouncer`); a test that starts servers of its own keeps them (the replica test's
    primary, the PgBouncer test's own bouncer), and the journal tests' fault proxy then sits
    between a gateway and this PgBouncer."""
    global PGBOUNCER_PORT
    if os.environ.get("TEST_THROUGH_PGBOUNCER", "") not in {"1", "true", "yes"}:
        yield None
        return
    from .pg_servers import pgbouncer

    # Set up first so that it is torn down last: the test database is dropped once PgBouncer
    # (and its server connections to it) are gone.
    request.getfixturevalue("django_db_setup")
    db = settings.DATABASES["default"]
    with pgbouncer(host=db.get("HOST") or "127.0.0.1", port=int(db.get("PORT") or 5432)) as port:
        PGBOUNCER_PORT = port
        os.environ["DATABASE_PGBOUNCER"] = "1"  # inherited by every process the tests start
        try:
            yield port
        finally:
            PGBOUNCER_PORT = None
            os.environ.pop("DATABASE_PGBOUNCER", None)


def gateway_env(mock_url: str, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        API_KEY_PEPPER=settings.API_KEY_PEPPER,
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=f"{mock_url}/v1",
        ANTHROPIC_API_KEY=UPSTREAM_KEY,
        ANTHROPIC_BASE_URL=mock_url,
        AZURE_OPENAI_API_KEY=UPSTREAM_KEY,
        AZURE_OPENAI_ENDPOINT=mock_url,
        OPENAI_API_VERSION="2024-10-21",
        GATEWAY_UPSTREAM_MAX_RETRIES="0",
        # One attempt per deployment unless a test asks for the retry policy (tests/test_routing_retry.py).
        GATEWAY_RETRIES="0",
    )
    env.update(extra)
    return env


# Every gateway process and Celery worker of the run writes its stderr to a file here (set by
# `process_logs`), so that the run can prove each line is JSON and none holds a key.
PROCESS_LOG_DIR: Path | None = None


def process_log_path(name: str) -> Path:
    return (PROCESS_LOG_DIR or Path(tempfile.gettempdir())) / f"{name}.log"


QUIET = ("--no-access-log", "--log-level", "warning")


def start_gateway(
    mock_url: str, *, uvicorn_args: tuple[str, ...] = QUIET, **extra_env: str
) -> tuple[subprocess.Popen, str]:
    """A uvicorn gateway process as production runs it (with the JSON log config); its stderr
    goes to `process.log_path`."""
    port = free_port()
    log_path = process_log_path(f"gateway-{port}")
    with open(log_path, "ab") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "proxy_platform.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-config",
                "proxy_platform/uvicorn_logging.json",
                *uvicorn_args,
            ],
            cwd=ROOT,
            env=gateway_env(mock_url, **extra_env),
            stderr=stderr,
        )
    process.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", process)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its stderr: {log_path.read_text()[-4000:]}") from None
    return process, url


# Secrets that no log line may hold: generated tenant keys (whatever their test), the redaction
# marker of proxy_platform/jsonlog.py (a key that some code tried to log), the upstream key.
KEY_IN_LOG = re.compile(r"tpk_[0-9A-Za-z]{38}|tpk_\[redacted\]|" + re.escape(UPSTREAM_KEY))


def log_problems(path: Path, secrets: tuple[str, ...] = ()) -> list[str]:
    """Lines of a process's stderr that are not one JSON object, or that hold a key (or any
    12 characters in a row of one of `secrets`: a key cut short is still a leak)."""
    pieces = {secret[i : i + 12] for secret in secrets for i in range(max(1, len(secret) - 11))}
    problems = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            problems.append(f"{path.name}:{number}: not a JSON object: {line[:300]}")
        if KEY_IN_LOG.search(line) or any(piece in line for piece in pieces):
            problems.append(f"{path.name}:{number}: holds a key: {line[:300]}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def process_logs(tmp_path_factory):
    """After the run (every process stopped by then): each gateway's and worker's stderr is JSON,
    line by line, and holds no key."""
    global PROCESS_LOG_DIR
    PROCESS_LOG_DIR = tmp_path_factory.mktemp("process-logs")
    yield PROCESS_LOG_DIR
    problems = [problem for path in sorted(PROCESS_LOG_DIR.glob("*.log")) for problem in log_problems(path)]
    assert not problems, "\n".join(problems[:50])


@pytest.fixture(scope="session")
def gateway(django_db_setup, mock_llm):
    """A gateway process on the test database, with the mock provider as every upstream.

    Its in-process cache is off (0 s): the tests below create and flush their data per test,
    which a cache would hide. Caching itself is tested apart, with a warm second process.
    """
    process, url = start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0")
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture(autouse=True)
def direct_connections_closed():
    """The gateway's direct database connections (gateway/db.py) end with the test that opened
    them: none outlives its event loop, or holds the test database open when it is dropped."""
    yield
    from gateway.db import direct_close_all

    direct_close_all()


@pytest.fixture(scope="session", autouse=True)
def clean_redis():
    """The test Redis database starts empty: counters of an earlier run must not leak into this one.
    (Through proxy_platform/redis_clients.py: the run may be on a Cluster or Sentinel,
    tests/redis_topology.py.)"""
    from proxy_platform import redis_clients

    if settings.REDIS_URL:
        client = redis_clients.sync_client()
        client.flushdb()
        client.close()
