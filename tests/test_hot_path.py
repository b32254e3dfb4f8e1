"""The completion endpoints' handler (proxy_platform/handlers.py) and the hot path's database hops
(gateway/db.py), run in process through `proxy_platform.asgi.application` against the mock provider.

The figures are in bench/gateway_overhead.py; these tests pin down the behaviour that buys them:
no hop to a worker thread for a served request whose usage record goes alone (one when it does
not), and nothing of the admin's middleware stack lost that the API needs (security headers,
host validation), while the admin keeps all of it.
"""

import asyncio
import concurrent.futures.thread
import threading

import orjson
import pytest
from django.db import connections
from django.utils import timezone

from billing.models import UsageRecord
from billing.pricing import Tokens
from gateway import registry
from gateway.db import db_call
from gateway.metered import Metered
from gateway.providers import close_clients
from proxy_platform.asgi import application
from tenants.models import RequestLog

from .conftest import UPSTREAM_KEY

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def upstream(settings, mock_llm):
    settings.OPENAI_BASE_URL = f"{mock_llm}/v1"
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    settings.GATEWAY_UPSTREAM_MAX_RETRIES = 0
    settings.GATEWAY_AUTH_CACHE_SECONDS = 60
    registry.clear_caches()
    yield
    registry.clear_caches()


async def call(path: str, *, key: str = "", body: dict | None = None, method: str = "POST", host: str = "127.0.0.1"):
    """One request through the ASGI application, as uvicorn would make it."""
    headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": orjson.dumps(body) if body else b"", "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.Future()  # the client stays connected

    async def send(message):
        sent.append(message)

    await application(scope, receive, send)
    start = sent[0]
    response_headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


def chat_body(stream: bool = False) -> dict:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], "stream": stream}


class WorkerHops:
    """Counts the work items that threads started from now on run: one per `asyncio.to_thread`
    or `sync_to_async` call. A fresh event loop has a fresh default executor, so all of them."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._run = concurrent.futures.thread._WorkItem.run.__code__

    def __enter__(self):
        threading.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        threading.setprofile(None)

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code is self._run:
            with self._lock:
                self.count += 1


def served_with_hops(alice_key) -> tuple[list, int]:
    """Four completions (JSON, stream, JSON, stream) after a first one that loads key, tenant and
    catalog: their responses and the worker thread hops they cost."""

    async def scenario(hops: WorkerHops):
        try:
            await call("/v1/chat/completions", key=alice_key, body=chat_body())  # loads key, tenant, catalog
            before = hops.count
            streams = (False, True, False, True)
            results = [await call("/v1/chat/completions", key=alice_key, body=chat_body(s)) for s in streams]
            return results, hops.count - before
        finally:
            await close_clients()

    with WorkerHops() as hops:
        return asyncio.run(scenario(hops))


def test_a_served_completion_costs_no_worker_thread_hop(upstream, catalog, alice, alice_key):
    """The usage record goes alone (no request log, key touch or budget check): it is written on
    the event loop's own connection (gateway/db.py `db_fetchone_direct`), not in a worker thread."""
    results, used = served_with_hops(alice_key)
    assert [status for status, _, _ in results] == [200, 200, 200, 200]
    assert b"data: [DONE]" in results[1][2]
    assert used == 0  # no middleware, request signal, per-request thread or usage write hop
    ids = [headers["x-request-id"] for _, headers, _ in results]
    records = UsageRecord.objects.filter(request_id__in=ids, status_code=200)
    assert records.count() == 4
    assert all(record.cost > 0 for record in records)


def test_without_direct_writes_a_served_completion_costs_one_worker_thread_hop(
    upstream, catalog, alice, alice_key, settings
):
    settings.GATEWAY_DB_DIRECT = False
    results, used = served_with_hops(alice_key)
    assert [status for status, _, _ in results] == [200, 200, 200, 200]
    # The usage write, and nothing else: no middleware, request signal or per-request thread.
    assert used == 4
    ids = [headers["x-request-id"] for _, headers, _ in results]
    assert UsageRecord.objects.filter(request_id__in=ids, status_code=200).count() == 4


def test_with_every_direct_connection_busy_a_record_goes_through_a_worker_thread_prepared_once(
    upstream, catalog, alice, alice_key, monkeypatch
):
    """Under load both direct connections are in use: the record goes through `db_call` at once,
    without its statement first being prepared for the direct path and thrown away."""
    from gateway import db, metering

    prepared = []
    original = metering.usage_upsert_statement
    monkeypatch.setattr(metering, "usage_upsert_statement", lambda **kwargs: prepared.append(1) or original(**kwargs))

    async def scenario(hops: WorkerHops):
        try:
            await call("/v1/chat/completions", key=alice_key, body=chat_body())  # loads key, tenant, catalog
            busy = db._direct.setdefault(asyncio.get_running_loop(), db._Direct())
            idle, opened = busy.idle, busy.opened
            busy.idle, busy.opened = [], db.DIRECT_CONNECTIONS  # every direct connection taken
            prepared.clear()
            before = hops.count
            results = [await call("/v1/chat/completions", key=alice_key, body=chat_body(s)) for s in (False, True)]
            busy.idle, busy.opened = idle, opened
            return results, hops.count - before
        finally:
            await close_clients()

    with WorkerHops() as hops:
        results, used = asyncio.run(scenario(hops))
    assert [status for status, _, _ in results] == [200, 200]
    assert used == 2  # one usage write each, in a worker thread
    assert prepared == []  # never prepared for a direct connection it could not have
    ids = [headers["x-request-id"] for _, headers, _ in results]
    assert UsageRecord.objects.filter(request_id__in=ids, status_code=200).count() == 2


def test_a_record_with_a_request_log_goes_through_a_worker_thread(upstream, catalog, alice, alice_key):
    """A request log is written after its record, each in its own transaction: not the direct path."""
    alice.log_requests = True
    alice.save(update_fields=["log_requests"])
    registry.clear_caches()
    results, used = served_with_hops(alice_key)
    assert [status for status, _, _ in results] == [200, 200, 200, 200]
    assert used == 4
    ids = [headers["x-request-id"] for _, headers, _ in results]
    assert RequestLog.objects.filter(request_id__in=ids).count() == 4


def test_a_direct_write_keeps_an_interrupted_records_place_rules(upstream, catalog, alice, alice_key):
    """The direct write is the same upsert: a request's own record replaces the reconciler's
    `interrupted` one, and a record already there otherwise stays (its cost is the answer)."""
    from gateway.metering import _write_direct

    started = timezone.now()  # a request's records share its start: (request_id, created_at) is the key

    def metered(price, request_id: str, error_type: str = "", output: int = 10):
        return Metered(
            request_id=request_id,
            created_at=started,
            tenant_id=alice.id,
            api_key_id=None,
            model="gpt-test",
            provider="openai",
            upstream_model="gpt-test",
            endpoint="chat",
            status_code=200,
            error_type=error_type,
            tokens=Tokens(input=10, output=output),
            price_id=price.id,
            price=price.price,
            latency_ms=5,
            streamed=False,
            estimated=False,
            cache_hit=False,
            tenant_slug=alice.slug,
            deployment_id=None,
        )

    async def scenario():
        price = (await registry.catalog())["gpt-test"].price_at(timezone.now())
        first = await _write_direct(metered(price, "req-1", output=10), None, False, False)
        replay = await _write_direct(metered(price, "req-1", output=999), None, False, False)  # stays as it was
        await _write_direct(metered(price, "req-2", "interrupted", output=0), None, False, False)
        own = await _write_direct(metered(price, "req-2", output=20), None, False, False)
        return first, replay, own

    first, replay, own = asyncio.run(scenario())
    assert replay == first
    assert UsageRecord.objects.get(request_id="req-1").output_tokens == 10
    kept = UsageRecord.objects.get(request_id="req-2")
    assert (kept.error_type, kept.output_tokens, kept.cost) == ("", 20, own)


def test_the_hot_path_keeps_the_security_headers_and_the_host_check(upstream, catalog, alice, alice_key):
    async def scenario():
        try:
            served = await call("/v1/chat/completions", key=alice_key, body=chat_body())
            refused = await call("/v1/messages", key=alice_key, body={"model": "claude-test"})
            bad_host = await call("/v1/chat/completions", key=alice_key, body=chat_body(), host="evil.example")
            return served, refused, bad_host
        finally:
            await close_clients()

    (status, headers, _), (refused_status, refused_headers, _), (bad_status, _, _) = asyncio.run(scenario())
    assert status == 200
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert refused_status == 400
    assert refused_headers["x-content-type-options"] == "nosniff"
    assert bad_status == 400
    # Nothing of the admin's stack that the API does not need: no session, no CSRF cookie.
    assert "set-cookie" not in headers
    assert "x-frame-options" not in headers


def test_everything_else_keeps_djangos_full_stack(upstream):
    status, headers, _ = asyncio.run(call("/admin/login/", method="GET"))
    assert status == 200
    assert headers["x-frame-options"] == "DENY"
    assert "csrftoken=" in headers["set-cookie"]
    # A path that is not exactly a completion endpoint is the gateway's 404, in wire format.
    status, headers, body = asyncio.run(call("/v1/chat/completions/", body=chat_body()))
    assert status == 404
    assert orjson.loads(body)["error"]["code"] == "unknown_endpoint"
    assert headers["x-frame-options"] == "DENY"


def test_a_database_hop_hands_its_connection_back(alice):
    seen = {}

    def query():
        connection = connections["default"]
        seen["wrapper"] = connection
        seen["thread"] = threading.get_ident()
        return UsageRecord.objects.filter(tenant_id=alice.id).count()

    async def scenario():
        return await db_call(query)

    assert asyncio.run(scenario()) == 0
    assert seen["thread"] != threading.get_ident()
    # The worker thread's connection went back to the pool when the call returned.
    assert seen["wrapper"].connection is None


def test_the_start_up_heap_is_frozen_out_of_the_collectors_sight():
    import gc

    import proxy_platform.asgi  # noqa: F401  (what uvicorn imports)

    assert gc.get_freeze_count() > 10_000
