"""A Redis Cluster failover under a live gateway (issue 15 part 1, docs/redis.md#cluster).

Runs when tests/redis_topology.py started a cluster for the run (`make test` does:
TEST_REDIS_TOPOLOGY=cluster); skipped otherwise. Each of the three replicas is told to take
over from its primary (CLUSTER FAILOVER, the coordinated kind: the replica catches up first), so
whichever slot holds the tenant's counters changes hands. Meanwhile a limited tenant's requests
are answered 200 or 503 `limits_unavailable`, never anything else; once every replica is a
primary the same gateway process serves them again, counting on the new primaries (MOVED
redirections teach its cluster client the new slot map), without a restart. The Django cache
of the test process follows too.
"""

import threading
import time
from collections import Counter

import pytest
import redis
from django.core.cache import cache

from . import redis_topology
from .conftest import start_gateway, stop
from .redis_topology import post

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        redis_topology.TOPOLOGY.get("kind") != "cluster", reason="needs TEST_REDIS_TOPOLOGY=cluster (a cluster)"
    ),
]

FAILOVER_BOUND_SECONDS = 20.0  # a coordinated failover takes well under a second; this is the ceiling


@pytest.fixture(scope="module")
def cluster_gateway(mock_llm, django_db_setup):
    process, url = start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0")
    yield process, url
    stop(process)


def role(port: int) -> str:
    node = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
    try:
        return node.info("replication")["role"]
    except (redis.RedisError, OSError):
        return "unknown"
    finally:
        node.close()


def test_a_cluster_failover_is_followed_without_a_restart(cluster_gateway, catalog, alice, alice_key):
    process, url = cluster_gateway
    replicas = list(redis_topology.TOPOLOGY["replicas"].values())
    assert [role(port) for port in replicas] == ["slave"] * 3
    alice.requests_per_minute = 1000  # limited: every request goes through Redis
    alice.save()
    before = post(url, alice_key)
    assert before.status_code == 200, before.text
    remaining_before = int(before.headers["x-ratelimit-remaining-requests"])
    cache.set("failover-probe", "old", 60)
    # Clients that keep calling while the slots change hands (a call from the loop below may fall
    # after the switch, which takes well under a second).
    halt, background = threading.Event(), []

    def load() -> None:
        while not halt.is_set():
            response = post(url, alice_key)
            code = response.json()["error"].get("code", "") if response.status_code != 200 else ""
            background.append((response.status_code, code))

    clients = [threading.Thread(target=load) for _ in range(3)]
    for thread in clients:
        thread.start()
    time.sleep(0.3)

    for port in replicas:
        node = redis.Redis(port=port)
        try:
            assert node.execute_command("CLUSTER", "FAILOVER") in (b"OK", "OK", True)
        finally:
            node.close()
    started = time.monotonic()
    statuses, served_after = [], None
    while time.monotonic() - started < FAILOVER_BOUND_SECONDS:
        response = post(url, alice_key)
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "limits_unavailable", response.text
        else:
            assert response.status_code == 200, response.text
        if response.status_code == 200 and all(role(port) == "master" for port in replicas):
            served_after = response
            break
        time.sleep(0.1)
    halt.set()
    for thread in clients:
        thread.join(30)

    outcomes = Counter(background)
    assert set(outcomes) <= {(200, ""), (503, "limits_unavailable")}, outcomes
    assert outcomes[(200, "")] > 0, outcomes
    assert served_after is not None, f"not served on the new primaries within {FAILOVER_BOUND_SECONDS}s: {statuses}"
    assert process.poll() is None  # the same process: no restart
    # The old primaries become replicas of the new ones (told so over the cluster bus).
    old_primaries = redis_topology.TOPOLOGY["ports"]
    deadline = time.monotonic() + FAILOVER_BOUND_SECONDS
    while [role(port) for port in old_primaries] != ["slave"] * 3:
        assert time.monotonic() < deadline, [role(port) for port in old_primaries]
        time.sleep(0.1)
    # The new primary holds the counters (replicated, then counted on): the window goes on.
    assert int(served_after.headers["x-ratelimit-remaining-requests"]) < remaining_before
    # Further requests are served at once (no pause left), each one recorded.
    answers = [post(url, alice_key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    # Counted on the new primaries, from where the old ones had got (not from a fresh window).
    assert int(answers[-1].headers["x-ratelimit-remaining-requests"]) < remaining_before
    expected = 1 + statuses.count(200) + outcomes[(200, "")] + 3
    assert redis_topology.served_records(alice, expected) == expected
    print(f"failover: {time.monotonic() - started:.1f}s, statuses {statuses}, meanwhile {dict(outcomes)}")
    # The test process's cache (the cluster client) follows the new primaries too.
    redis_topology.cache_follows(FAILOVER_BOUND_SECONDS)
