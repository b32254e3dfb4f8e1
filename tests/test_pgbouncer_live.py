"""The gateway and a Celery worker behind PgBouncer in transaction pooling mode (docs/database.md).

The test starts Debian's pgbouncer on a free port in front of the test database, with fewer
server connections than the gateway's pool has clients, so that consecutive transactions of one
client land on different server connections: anything that relied on session state (a prepared
statement, a server-side cursor, a SET) would break here. `make test`'s main run has every other
live test go through one as well (TEST_THROUGH_PGBOUNCER=1, tests/conftest.py).
"""

import subprocess
import time
from datetime import timedelta
from decimal import Decimal

import httpx2
import openai
import pytest
from django.db import connection
from django.utils import timezone

from billing.models import UsageRecord, UsageRollup
from tenants.services import api_key_create

from . import pg_servers
from .conftest import start_gateway, stop
from .test_celery_worker import Workers

pytestmark = pytest.mark.skipif(not pg_servers.have_pgbouncer(), reason="Debian's pgbouncer is not installed")

SERVER_CONNECTIONS = 2


@pytest.fixture(scope="module")
def bouncer(django_db_setup):
    db = connection.settings_dict
    with pg_servers.pgbouncer(
        host=db.get("HOST") or "127.0.0.1", port=int(db.get("PORT") or 5432), pool_size=SERVER_CONNECTIONS
    ) as port:
        yield port


def _url(port: int) -> str:
    db = connection.settings_dict
    return f"postgres://{db.get('USER') or 'postgres'}@127.0.0.1:{port}/{db['NAME']}"


@pytest.fixture(scope="module")
def gateway(bouncer, mock_llm):
    process, url = start_gateway(
        mock_llm,
        DATABASE_URL=_url(bouncer),
        DATABASE_PGBOUNCER="1",
        DATABASE_POOL_MIN="4",  # more clients than PgBouncer has server connections
        GATEWAY_AUTH_CACHE_SECONDS="0",
    )
    try:
        yield url
    finally:
        stop(process)


def _transactions(port: int) -> int:
    """Transactions PgBouncer has passed to the test database so far (its admin console)."""
    output = subprocess.run(
        [str(pg_servers.PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "pgbouncer"]
        + ["-A", "-F", "|", "-c", "SHOW STATS"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    header = output[0].split("|")
    for line in output[1:]:
        row = dict(zip(header, line.split("|"), strict=False))
        if row.get("database") == connection.settings_dict["NAME"]:
            return int(row["total_xact_count"])
    return 0


def test_answers_streams_and_refusals_are_served_and_recorded_through_pgbouncer(
    bouncer, gateway, catalog, alice, transactional_db
):
    before = _transactions(bouncer)
    alice.requests_per_minute = 2
    alice.save()
    _, key = api_key_create(tenant=alice, name="pooled")
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)

    answer = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens > 0
    day = timezone.now().date().isoformat()
    usage = httpx2.get(
        f"{gateway}/v1/usage", params={"start": day, "end": day}, headers={"Authorization": f"Bearer {key}"}
    )
    assert usage.status_code == 200, usage.text
    with pytest.raises(openai.RateLimitError):  # the third completion of the minute
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])

    deadline = time.monotonic() + 10  # records are written after the answer is sent
    while UsageRecord.objects.filter(tenant=alice).count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = UsageRecord.objects.filter(tenant=alice).order_by("id")
    assert [(r.status_code, r.streamed) for r in records] == [(200, False), (200, True), (429, False)]
    assert records[1].output_tokens == chunks[-1].usage.completion_tokens
    assert all(r.cost > 0 for r in records[:2])
    # Everything the gateway read and wrote went through PgBouncer.
    assert _transactions(bouncer) - before >= 5


def test_a_celery_worker_rolls_up_through_pgbouncer(bouncer, catalog, alice, transactional_db):
    yesterday = timezone.now() - timedelta(days=1)
    for n in range(3):
        UsageRecord.objects.create(
            request_id=f"pooled-{n}",
            created_at=yesterday,
            tenant=alice,
            model="gpt-test",
            endpoint="chat",
            status_code=200,
            input_tokens=10,
            cost=Decimal("0.001"),
        )
    workers = Workers()
    try:
        workers.start("pooled", DATABASE_URL=_url(bouncer), DATABASE_PGBOUNCER="1")
        day = yesterday.date().isoformat()
        workers.send("rollup_usage", since=day, until=day).get(timeout=60)
    finally:
        workers.stop()
    rollup = UsageRollup.objects.get(tenant=alice, day=yesterday.date())
    assert (rollup.requests, rollup.input_tokens, rollup.cost) == (3, 30, Decimal("0.003"))


def test_one_clients_consecutive_statements_run_on_different_server_connections(bouncer, django_db_setup):
    """What makes these runs (and `make test`'s, tests/conftest.py) catch reliance on session
    state: the test PgBouncers hand out the idle server connection used longest ago and keep two
    open (tests/pg_servers.py), so even a lone client's statements alternate between backends,
    and a session SET is not (reliably) there for its next statement."""
    import psycopg

    db = connection.settings_dict
    dsn = f"host=127.0.0.1 port={bouncer} user={db.get('USER') or 'postgres'} dbname={db['NAME']}"
    time.sleep(1.5)  # PgBouncer's janitor opens min_pool_size server connections once a client came
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as client:
        client.execute("SELECT 1")
        deadline = time.monotonic() + 10
        while len({client.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(4)}) < 2:
            assert time.monotonic() < deadline, "every statement ran on one server connection"
            time.sleep(0.2)
        # A setting of no one's (a custom name): the server connections it is left on are unharmed.
        seen = []
        for _ in range(5):
            client.execute("SET gw_test.probe = 'set'")
            seen.append(client.execute("SELECT current_setting('gw_test.probe', true)").fetchone()[0])
        assert any(value != "set" for value in seen), seen
