"""Surviving a crash and a PostgreSQL outage (issue 10, items 3 and 4): live gateway processes,
the mock provider, the real PostgreSQL and Redis, and the reconciler.

The shared servers are never stopped: a gateway killed with SIGKILL is one of ours, and the
database outage is a TCP proxy of the test's own between one gateway process and PostgreSQL.
The mock provider keeps the `x-gateway-request-id` of every call it served, which is how
"every call the provider served" is matched to usage records.
"""

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx2
import orjson
import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from billing.models import Subscription, UsageRecord
from tenants.models import ApiKey

from . import pg_servers
from .conftest import database_url, free_port, start_gateway, stop

pytestmark = pytest.mark.django_db(transaction=True)

# The journal is crash-proof only in Redis: the gateways started here always have one.
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/6"


@pytest.fixture(autouse=True)
def journal_in_redis(settings):
    """The reconciler, run here, reads the journal the gateways wrote."""
    settings.REDIS_URL = REDIS_URL


def served_ids(mock_llm: str) -> list[str]:
    """The gateway request ids of the calls the mock provider received since it was last cleared."""
    seen = httpx2.get(f"{mock_llm}/_mock/requests", timeout=10).json()
    return [r["headers"]["x-gateway-request-id"] for r in seen if "x-gateway-request-id" in r["headers"]]


def clear_mock(mock_llm: str) -> None:
    httpx2.delete(f"{mock_llm}/_mock/requests", timeout=10)


def in_flight_and_holds(tenant_id: int, key_id: int) -> tuple[int, int, int, int]:
    month = f"{timezone.now():%Y-%m}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return (
            client.zcard(f"gw:{{t{tenant_id}}}:conc:t"),
            client.zcard(f"gw:{{t{tenant_id}}}:conc:k:{key_id}"),
            client.hlen(f"gw:{{t{tenant_id}}}:spend:t:{month}:holds"),
            client.hlen(f"gw:{{t{tenant_id}}}:spend:k:{key_id}:{month}:holds"),
        )
    finally:
        client.close()


def limited(tenant, key_secret: str) -> ApiKey:
    """The tenant gets a concurrency limit and a budget, its key a budget of its own."""
    tenant.max_concurrent = 80
    tenant.save()
    Subscription.objects.filter(tenant=tenant).update(monthly_budget=Decimal("100"))
    key = ApiKey.objects.get(tenant=tenant)
    key.max_concurrent = 80
    key.monthly_budget = Decimal("50")
    key.save()
    return key


def test_a_served_request_names_itself_upstream_and_leaves_no_trace(gateway, mock_llm, catalog, alice_key):
    clear_mock(mock_llm)
    response = httpx2.post(
        f"{gateway}/v1/chat/completions",
        json={"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {alice_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert served_ids(mock_llm) == [response.headers["x-request-id"]]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # Its trace leaves with the others that finished within journal.DONE_DELAY_SECONDS (0.1 s).
        deadline = time.monotonic() + 5
        while client.hexists("gw:{journal}:traces:data", response.headers["x-request-id"]):
            assert time.monotonic() < deadline, "the trace of a finished request stayed"
            time.sleep(0.02)
    finally:
        client.close()


# --- a) kill -9 of one of two gateway processes during 50 streams ---


def stream_once(url: str, key: str, index: int, outcome: dict) -> None:
    endpoint, body = (
        ("chat/completions", {"model": "gpt-test"})
        if index % 2
        else ("messages", {"model": "claude-test", "max_tokens": 200})
    )
    body.update(
        stream=True,
        messages=[{"role": "user", "content": f"[[mock:words=40]] [[mock:chunk_delay_ms=60]] story {index}"}],
    )
    try:
        with httpx2.stream(
            "POST", f"{url}/v1/{endpoint}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as response:
            outcome["status"] = response.status_code
            outcome["body"] = b"".join(response.iter_bytes())
    except httpx2.HTTPError as exc:  # the process that served it was killed
        outcome["broken"] = repr(exc)


def test_kill_9_during_50_streams_leaves_every_served_call_billed_once(
    mock_llm, django_db_setup, catalog, alice, alice_key
):
    key = limited(alice, alice_key)
    (victim, victim_url), (survivor, survivor_url) = (
        start_gateway(mock_llm, REDIS_URL=REDIS_URL, GATEWAY_AUTH_CACHE_SECONDS="60") for _ in range(2)
    )
    try:
        clear_mock(mock_llm)
        outcomes = [{} for _ in range(50)]
        threads = [
            threading.Thread(target=stream_once, args=((victim_url, survivor_url)[i % 2], alice_key, i, outcomes[i]))
            for i in range(50)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(served_ids(mock_llm)) < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(served_ids(mock_llm)) == 50, "the provider did not see all 50 streams in time"
        time.sleep(0.5)  # every stream is on its way, none finished (40 chunks, 60 ms apart)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        for thread in threads:
            thread.join(30)
    finally:
        stop(survivor)
        if victim.poll() is None:
            stop(victim)

    served = served_ids(mock_llm)
    assert len(served) == len(set(served)) == 50, (len(served), len(set(served)), outcomes)
    broken = [o for o in outcomes if "broken" in o or o.get("status") != 200]
    assert 15 <= len(broken) <= 25, outcomes  # the victim's share, cut mid-stream
    recorded = set(UsageRecord.objects.values_list("request_id", flat=True))
    lost = set(served) - recorded
    assert len(lost) == len(broken)  # what a crash loses without the journal

    call_command("reconcile_requests", "--older-than", "0")

    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(records) == set(served)  # exactly one record per served call (request_id is unique)
    interrupted = {rid for rid, r in records.items() if r.error_type == "interrupted"}
    assert interrupted == lost
    for rid in interrupted:
        record = records[rid]
        assert (record.status_code, record.estimated, record.output_tokens) == (502, True, 0)
        assert record.input_tokens > 0
        assert record.cost > 0
        assert record.provider in ("openai", "anthropic")
    assert in_flight_and_holds(alice.id, key.id) == (0, 0, 0, 0)


# --- b) PostgreSQL unreachable for 10 s under load ---


class TcpProxy:
    """A TCP proxy to PostgreSQL on a thread of its own, which the test can cut and restore.

    `cut("refuse")`: every open connection is closed and new ones are closed as soon as accepted
    (a server that went away). `cut("hang")`: bytes stop flowing both ways and new connections
    get no answer (a network that drops packets); `restore()` lets them flow again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.mode = "open"
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        self._writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _call(self, fn) -> None:
        asyncio.run_coroutine_threadsafe(fn(), self._loop).result(5)

    def cut(self, mode: str) -> None:
        async def apply() -> None:
            self.mode = mode
            if mode == "refuse":
                for writer in list(self._writers):
                    writer.close()
            else:
                self._flowing.clear()

        self._call(apply)

    def restore(self) -> None:
        async def apply() -> None:
            self.mode = "open"
            self._flowing.set()

        self._call(apply)

    def close(self) -> None:
        async def apply() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()

        with contextlib.suppress(Exception):
            self._call(apply)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def well_formed_error(endpoint: str, status: int, headers, body: bytes) -> bool:
    """An error in the caller's wire format: JSON, and the shape its SDK parses."""
    if not headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if endpoint == "messages":
        return payload.get("type") == "error" and isinstance(payload.get("error", {}).get("message"), str)
    return isinstance(payload.get("error"), dict) and isinstance(payload["error"].get("message"), str)


def well_ended_stream(endpoint: str, body: bytes) -> bool:
    """A 200 stream ends with its normal last event or with an error event, never just stops."""
    text = body.decode(errors="replace").rstrip()
    if endpoint == "messages":
        return text.split("\n\n")[-1].startswith(("event: message_stop", "event: error"))
    last = text.split("\n\n")[-1]
    return last == "data: [DONE]" or last.startswith('data: {"error"')


def load(url: str, key: str, worker: int, stop_at: float, results: list) -> None:
    """One client: JSON and streams on both endpoints, in turn, until `stop_at`."""
    count = 0
    with httpx2.Client(timeout=30) as client:
        while time.monotonic() < stop_at:
            kind = (worker + count) % 4
            count += 1
            endpoint = "messages" if kind % 2 else "chat/completions"
            body = {
                "model": "claude-test" if kind % 2 else "gpt-test",
                "stream": kind >= 2,
                "messages": [{"role": "user", "content": f"[[mock:words=8]] load {worker}-{count}"}],
            }
            if kind % 2:
                body["max_tokens"] = 50
            started = time.monotonic()
            try:
                with client.stream(
                    "POST", f"{url}/v1/{endpoint}", json=body, headers={"authorization": f"Bearer {key}"}
                ) as response:
                    content = b"".join(response.iter_bytes())
                    results.append(
                        {
                            "endpoint": endpoint.split("/")[0],
                            "stream": body["stream"],
                            "status": response.status_code,
                            "headers": dict(response.headers),
                            "body": content,
                            "started": started,
                            "seconds": time.monotonic() - started,
                        }
                    )
            except httpx2.HTTPError as exc:
                results.append({"endpoint": endpoint, "error": repr(exc), "seconds": time.monotonic() - started})


def postgres_target() -> tuple[str, int]:
    url = httpx2.URL(database_url())
    return url.host, url.port or 5432


@contextlib.contextmanager
def outage_between(where: str) -> Iterator[tuple[TcpProxy, dict]]:
    """A TcpProxy where the outage happens, and the gateway's settings to reach the database.

    "gateway": between the gateway and its database (PostgreSQL, or the run's PgBouncer under
    TEST_THROUGH_PGBOUNCER). "pgbouncer": between a PgBouncer of the test's own (transaction
    pooling, DATABASE_PGBOUNCER=1) and PostgreSQL, which the gateway still reaches meanwhile.
    """
    if where == "gateway":
        proxy = TcpProxy(postgres_target())
        try:
            yield proxy, {"DATABASE_URL": database_url().replace(f":{postgres_target()[1]}/", f":{proxy.port}/")}
        finally:
            proxy.close()
        return
    db = connection.settings_dict
    proxy = TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    try:
        with pg_servers.pgbouncer(host="127.0.0.1", port=proxy.port) as port:
            user = db.get("USER") or "postgres"
            yield proxy, {"DATABASE_URL": f"postgres://{user}@127.0.0.1:{port}/{db['NAME']}", "DATABASE_PGBOUNCER": "1"}
    finally:
        proxy.close()


@pytest.fixture
def outage(request) -> Iterator[tuple[TcpProxy, dict]]:
    with outage_between(request.param) as value:
        yield value


BOUNCER = pytest.mark.skipif(not pg_servers.have_pgbouncer(), reason="Debian's pgbouncer is not installed")


@pytest.mark.parametrize(
    ("outage", "mode"),
    [
        ("gateway", "refuse"),
        ("gateway", "hang"),
        pytest.param("pgbouncer", "refuse", marks=BOUNCER),
        pytest.param("pgbouncer", "hang", marks=BOUNCER),
    ],
    indirect=["outage"],
)
def test_a_postgres_outage_of_10_s_bills_every_served_call_and_answers_in_json(
    outage, mode, mock_llm, django_db_setup, catalog, alice, alice_key
):
    key = limited(alice, alice_key)
    proxy, database = outage
    process, url = start_gateway(mock_llm, REDIS_URL=REDIS_URL, GATEWAY_AUTH_CACHE_SECONDS="300", **database)
    results: list[dict] = []
    try:
        # Warm: the key, the catalog and the budget counters are in the process's caches and Redis.
        for endpoint, model in (("chat/completions", "gpt-test"), ("messages", "claude-test")):
            warm = httpx2.post(
                f"{url}/v1/{endpoint}",
                json={"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "warm"}]},
                headers={"authorization": f"Bearer {alice_key}"},
                timeout=30,
            )
            assert warm.status_code == 200, warm.text
        clear_mock(mock_llm)
        start = time.monotonic()
        stop_at = start + 14
        clients = [threading.Thread(target=load, args=(url, alice_key, w, stop_at, results)) for w in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(1.5)
        proxy.cut(mode)
        cut_at = time.monotonic()
        usage = httpx2.get(
            f"{url}/v1/usage?start=2026-01-01&end=2026-01-31",
            headers={"authorization": f"Bearer {alice_key}"},
            timeout=30,
        )
        time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
        proxy.restore()
        for thread in clients:
            thread.join(60)
        # Back: the next record this process commits writes what it spooled; the reconciler does the rest.
        httpx2.post(
            f"{url}/v1/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "after"}]},
            headers={"authorization": f"Bearer {alice_key}"},
            timeout=30,
        )
        time.sleep(1)
    finally:
        stop(process)

    assert usage.status_code == 503, usage.text
    assert well_formed_error("chat", 503, usage.headers, usage.content), usage.text
    assert not [r for r in results if "error" in r], [r for r in results if "error" in r][:3]
    during = [r for r in results if cut_at <= r["started"] < cut_at + 9]
    assert len([r for r in during if r["status"] == 200]) >= 8  # served through the outage, not refused
    errors = [r for r in results if r["status"] != 200]
    assert all(well_formed_error(r["endpoint"], r["status"], r["headers"], r["body"]) for r in errors), errors[:3]
    streams = [r for r in results if r["status"] == 200 and r["stream"]]
    assert all(well_ended_stream(r["endpoint"], r["body"]) for r in streams), [r["body"][-300:] for r in streams][:3]
    assert max(r["seconds"] for r in results) < 6, sorted(r["seconds"] for r in results)[-5:]
    # The records of the outage went through the journal (and the process wrote them once back).
    assert process.log_path.read_text().count("spooled to the journal") >= 8

    call_command("reconcile_requests", "--older-than", "0")

    served = served_ids(mock_llm)
    records = dict(UsageRecord.objects.values_list("request_id", "error_type"))
    assert len(served) == len(set(served)) > 40
    missing = set(served) - set(records)
    assert not missing, f"{len(missing)} of {len(served)} served calls have no usage record"
    assert not [rid for rid in served if records[rid] == "interrupted"]  # spooled, not guessed
    assert in_flight_and_holds(alice.id, key.id) == (0, 0, 0, 0)


@pytest.mark.parametrize(("endpoint", "model"), [("chat/completions", "gpt-test"), ("messages", "claude-test")])
def test_a_stream_the_gateway_cannot_finish_ends_with_an_error_event(
    endpoint, model, mock_llm, django_db_setup, catalog, alice, alice_key
):
    """With PostgreSQL and the journal both unreachable the record cannot be kept anywhere: the
    stream still ends with an error event in the caller's format, not with a cut connection."""
    proxy = TcpProxy(postgres_target())
    proxied = database_url().replace(f":{postgres_target()[1]}/", f":{proxy.port}/")
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    process, url = start_gateway(mock_llm, REDIS_URL=dead_redis, DATABASE_URL=proxied, GATEWAY_AUTH_CACHE_SECONDS="300")
    body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "[[mock:words=5]] hi"}]}
    headers = {"authorization": f"Bearer {alice_key}"}
    try:
        assert httpx2.post(f"{url}/v1/{endpoint}", json=body, headers=headers, timeout=30).status_code == 200
        proxy.cut("refuse")
        with httpx2.stream(
            "POST", f"{url}/v1/{endpoint}", json={**body, "stream": True}, headers=headers, timeout=30
        ) as r:
            status, content = r.status_code, b"".join(r.iter_bytes())
    finally:
        stop(process)
        proxy.close()
    assert status == 200
    last = content.decode().rstrip().split("\n\n")[-1]
    if endpoint == "messages":
        assert last.startswith("event: error"), content[-300:]
    else:
        assert last.startswith('data: {"error"'), content[-300:]
    assert "request id" in last
