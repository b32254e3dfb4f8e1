"""A Sentinel failover under a live gateway (issue 15 part 2, docs/redis.md#sentinel).

Runs when tests/redis_topology.py started a Sentinel for the run (`make test` does:
TEST_REDIS_TOPOLOGY=sentinel); skipped otherwise. The sentinel is told to fail over
(SENTINEL FAILOVER): meanwhile a limited tenant's requests are answered 200 or 503
`limits_unavailable`, never anything else, and once the replica is the primary the same gateway
process serves them again, counting on the new primary, without a restart. The Django cache
and Celery's broker (kombu's `sentinel://`) follow the new primary too.
"""

import time

import pytest
import redis
from django.conf import settings
from django.core.cache import cache

from proxy_platform.celery import app as celery_app

from . import redis_topology
from .conftest import start_gateway, stop
from .redis_topology import post

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        redis_topology.TOPOLOGY.get("kind") != "sentinel", reason="needs TEST_REDIS_TOPOLOGY=sentinel (a sentinel)"
    ),
]

FAILOVER_BOUND_SECONDS = 20.0  # the sentinel's own failover takes a few seconds; this is the ceiling


@pytest.fixture(scope="module")
def sentinel_gateway(mock_llm, django_db_setup):
    process, url = start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0")
    yield process, url
    stop(process)


def primary_port() -> int:
    sentinel = redis.Redis(port=redis_topology.TOPOLOGY["sentinel"], decode_responses=True)
    try:
        return int(sentinel.sentinel_get_master_addr_by_name(redis_topology.MASTER)[1])
    finally:
        sentinel.close()


def broker_round_trip(payload: dict) -> dict:
    with celery_app.connection_for_write() as connection:
        queue = connection.SimpleQueue("gw-failover-test")
        try:
            queue.put(payload)
            message = queue.get(timeout=10)
            message.ack()
            return message.payload
        finally:
            queue.close()


def test_a_failover_is_followed_without_a_restart(sentinel_gateway, catalog, alice, alice_key):
    process, url = sentinel_gateway
    assert settings.CELERY_BROKER_URL.startswith("sentinel://")
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] == redis_topology.MASTER
    alice.requests_per_minute = 1000  # limited: every request goes through Redis
    alice.save()
    before = post(url, alice_key)
    assert before.status_code == 200, before.text
    remaining_before = int(before.headers["x-ratelimit-remaining-requests"])
    cache.set("failover-probe", "old", 60)
    assert broker_round_trip({"n": 1}) == {"n": 1}
    old_primary = primary_port()
    replica = next(p for p in redis_topology.TOPOLOGY["ports"] if p != old_primary)

    sentinel = redis.Redis(port=redis_topology.TOPOLOGY["sentinel"])
    try:
        sentinel.execute_command("SENTINEL", "FAILOVER", redis_topology.MASTER)
    finally:
        sentinel.close()
    started = time.monotonic()
    statuses, served_after = [], None
    while time.monotonic() - started < FAILOVER_BOUND_SECONDS:
        response = post(url, alice_key)
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "limits_unavailable", response.text
        else:
            assert response.status_code == 200, response.text
        if primary_port() == replica and response.status_code == 200:
            served_after = response
            break
        time.sleep(0.1)

    assert served_after is not None, f"not served on the new primary within {FAILOVER_BOUND_SECONDS}s: {statuses}"
    assert process.poll() is None  # the same process: no restart
    # The new primary holds the counters (replicated, then counted on): the window goes on.
    assert int(served_after.headers["x-ratelimit-remaining-requests"]) < remaining_before
    new_primary = redis.Redis(port=replica)
    try:
        assert new_primary.info("replication")["role"] == "master"
        assert new_primary.dbsize() > 0
    finally:
        new_primary.close()
    # Further requests are served at once (no pause left), each one recorded.
    answers = [post(url, alice_key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    expected = 1 + statuses.count(200) + 3
    assert redis_topology.served_records(alice, expected) == expected
    print(f"failover: {time.monotonic() - started:.1f}s, statuses {statuses}")
    # The cache and the broker of this process follow the new primary too.
    redis_topology.cache_follows(FAILOVER_BOUND_SECONDS)
    assert broker_round_trip({"n": 2}) == {"n": 2}
