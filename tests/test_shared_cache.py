"""proxy_platform/cache.py against a real Redis: one connection pool per process whatever the
thread or asyncio context, and Django's cache semantics kept (incr refuses a missing key)."""

import asyncio
import os
import uuid

import pytest
from django.core.cache import caches
from django_ratelimit.core import get_usage

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/6"


@pytest.fixture
def shared_cache(settings):
    # A client name of this test's own: the shared client is per configuration.
    name = f"test-{uuid.uuid4().hex[:8]}"
    settings.CACHES = {
        "default": {
            "BACKEND": "proxy_platform.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_timeout": 0.5, "client_name": name},
        }
    }
    return caches["default"]


def test_requests_in_their_own_contexts_and_threads_share_one_pool(shared_cache):
    group = f"g-{uuid.uuid4().hex}"

    def count_one() -> tuple[int, object]:
        usage = get_usage(None, group=group, key=lambda _g, _r: "tenant:1", rate="1000/m", increment=True)
        return usage["count"], caches["default"]._cache

    async def requests():
        # As the gateway does it: every request a task (a context) of its own, hopping to the
        # loop's worker threads.
        return await asyncio.gather(*(asyncio.create_task(asyncio.to_thread(count_one)) for _ in range(30)))

    results = asyncio.run(requests())
    assert sorted(count for count, _ in results) == list(range(1, 31))
    clients = {id(client) for _, client in results}
    assert len(clients) == 1
    pool = results[0][1]._get_connection_pool(write=True)
    assert results[0][1].get_client(write=True) is results[0][1].get_client(write=False)
    # At most one connection per worker thread; Django's own backend opened one per request.
    assert pool._created_connections <= min(32, (os.cpu_count() or 1) + 4)


def test_incr_counts_an_existing_key_and_refuses_a_missing_one(shared_cache):
    key = f"k-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="not found"):
        shared_cache.incr(key)
    assert shared_cache.get(key) is None  # the refusal created nothing
    assert shared_cache.add(key, 1, 30)
    assert shared_cache.incr(key) == 2
    assert shared_cache.incr(key, 5) == 7
    client = shared_cache._cache.get_client(key, write=True)
    assert 0 < client.ttl(shared_cache.make_and_validate_key(key)) <= 30  # the expiry is kept
