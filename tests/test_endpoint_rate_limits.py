"""django-ratelimit on the endpoints where its per-view guard fits: the tenant's templates, logs,
usage and keys (per tenant, GATEWAY_TENANT_API_RATE) and the staff admin's login (per address and per
username, ADMIN_LOGIN_RATE). Counted in Redis, on a cache prefix of this test's own."""

import asyncio
import os
import random

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient, Client

from tests.test_limits import REDIS_URL

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_counters(settings):
    # Hourly windows: three requests never straddle one (django-ratelimit's windows are fixed).
    settings.GATEWAY_TENANT_API_RATE = "2/h"
    settings.ADMIN_LOGIN_RATE = "3/h"
    settings.CACHES = {
        "default": {
            "BACKEND": "proxy_platform.cache.SharedRedisCache",
            "LOCATION": os.environ.get("REDIS_URL") or REDIS_URL,
            "KEY_PREFIX": f"t{random.getrandbits(48):x}",
        }
    }


def run(coroutine):
    """Run the views on an event loop, then close the database connection of their worker thread."""

    async def and_close():
        try:
            return await coroutine
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(and_close())


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/v1/templates", None),
        ("post", "/v1/templates", {"name": "greet", "messages": [{"role": "user", "content": "hi {{who}}"}]}),
        ("get", "/v1/templates/greet", None),
        ("get", "/v1/logs", None),
        ("get", "/v1/logs/req-unknown", None),
        ("get", "/v1/usage?start=2026-01-01&end=2026-01-31", None),
        # Counted before the key's kind is checked: an ordinary key's 403s use up its tenant's rate too.
        ("get", "/v1/keys", None),
        ("post", "/v1/keys", {"name": "more"}),
    ],
)
def test_the_tenant_endpoints_refuse_over_their_rate_per_tenant(method, path, body, alice_key, bob_key):
    run(_refused_over_the_rate(method, path, body, alice_key, bob_key))


async def _refused_over_the_rate(method, path, body, alice_key, bob_key):
    client = AsyncClient()

    async def send(key):
        if method == "post":
            return await client.post(path, orjson.dumps(body), content_type="application/json", headers=bearer(key))
        return await client.get(path, headers=bearer(key))

    answers = [await send(alice_key) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] != [429, 429]
    refused = answers[2]
    assert refused.status_code == 429
    error = orjson.loads(refused.content)["error"]
    assert error["code"] == "rate_limit_requests"
    assert "this tenant allows 2 requests per 1h0m0s" in error["message"]
    assert 1 <= int(refused["retry-after"]) <= 3601
    assert (await send(bob_key)).status_code != 429  # another tenant has its own count
    # A wrong key is a 401, and uses up nobody's rate.
    assert (await client.get(path, headers=bearer("sk-wrong"))).status_code == 401


def test_the_endpoints_with_no_rate_set_are_not_counted(settings, alice_key):
    settings.GATEWAY_TENANT_API_RATE = ""

    async def four():
        client = AsyncClient()
        return [(await client.get("/v1/logs", headers=bearer(alice_key))).status_code for _ in range(4)]

    assert run(four()) == [200] * 4


def test_the_admin_login_refuses_repeated_attempts_per_address_and_per_username(admin_user):
    client = Client(REMOTE_ADDR="10.0.0.7")
    wrong = [client.post("/admin/login/", {"username": "admin", "password": "nope"}) for _ in range(3)]
    assert [r.status_code for r in wrong] == [200, 200, 200]  # the login form again, with its error
    refused = client.post("/admin/login/", {"username": "admin", "password": "password"})
    assert refused.status_code == 429
    assert "Too many login attempts" in refused.content.decode()
    assert int(refused["retry-after"]) >= 1
    # The same username from elsewhere is refused too; another user from elsewhere is not.
    elsewhere = Client(REMOTE_ADDR="10.0.0.8")
    assert elsewhere.post("/admin/login/", {"username": "admin", "password": "password"}).status_code == 429
    other = elsewhere.post("/admin/login/", {"username": "someone", "password": "x"})
    assert other.status_code == 200
    # Showing the form is never counted.
    assert client.get("/admin/login/").status_code == 200
