"""Run live tests against a Redis Cluster or a Sentinel-managed primary (docs/redis.md), started here.

    TEST_REDIS_TOPOLOGY=cluster  pytest -p tests.redis_topology tests/test_limits_live.py ...
    TEST_REDIS_TOPOLOGY=sentinel pytest -p tests.redis_topology tests/test_redis_failover_live.py ...

Before Django reads its settings, this plugin starts the servers from Debian's
/usr/bin/redis-server on free ports in a temporary directory (Cluster: three primaries, each
with a replica; Sentinel: a primary, a replica and one sentinel watching them) and points REDIS_URL,
REDIS_CLUSTER, REDIS_SENTINELS and REDIS_SENTINEL_MASTER at them: the test process and every
gateway it starts (tests/conftest.py copies its environment) use them. Celery's broker stays on
the Redis the run was given under Cluster (CELERY_BROKER_URL: Celery does not speak Cluster);
under Sentinel it follows the sentinel (kombu's `sentinel://`). The servers are
stopped by pid when the run ends. Without redis-server every test of the run is skipped.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MASTER = "gwprimary"

_processes: list[subprocess.Popen] = []
_missing = ""
TOPOLOGY: dict = {}  # what was started: kind, ports, the sentinel's port, the directory


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all held open while they are picked (one at a time, the
    system may hand out a port it just released again, and two servers would then collide)."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _start(directory: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(directory / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the process's life)
    process = subprocess.Popen([REDIS_SERVER, *args], cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    _processes.append(process)
    return process


def _server_args(port: int) -> list[str]:
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]


def _cli(port: int, *args: str) -> str:
    import redis

    client = redis.Redis(port=port, socket_timeout=5)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def _wait(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 (not up yet)
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} not reached in {timeout}s ({last!r})")


def start_cluster(directory: Path) -> dict:
    """Three primaries owning all 16384 slots, each with one replica (for the forced failover of
    tests/test_redis_cluster_failover_live.py; the other tests need only the slots)."""
    import redis

    free = _free_ports(12)  # six nodes, each with its cluster bus port
    ports, nodes = free[:3], free[:6]
    replicas = dict(zip(ports, free[3:6], strict=True))  # primary's port -> its replica's
    buses = dict(zip(nodes, free[6:], strict=True))
    for port in nodes:
        # The bus port is set (not port + 10000, which a free port may push past 65535).
        _start(
            directory,
            f"cluster-{port}",
            *_server_args(port),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-port",
            str(buses[port]),
            "--cluster-node-timeout",
            "2000",
            # A replica's first sync starts at once, not after Redis's default 5 s wait for others.
            "--repl-diskless-sync-delay",
            "0",
        )
    for port in nodes:
        _wait(lambda port=port: _cli(port, "PING"), f"redis-server on {port}")
    thirds = [(0, 5460), (5461, 10922), (10923, 16383)]
    for port, (low, high) in zip(ports, thirds, strict=True):
        _cli(port, "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
    for port in nodes[1:]:
        _cli(ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port), str(buses[port]))

    def known(port: int) -> bool:
        return int(redis.Redis(port=port).cluster("info").get("cluster_known_nodes", 0)) == len(nodes)

    # A replica may name its primary once it knows it (the MEET has gone round).
    for primary, replica in replicas.items():
        _wait(lambda replica=replica: known(replica), f"node {replica} knowing every node")
        _cli(replica, "CLUSTER", "REPLICATE", _cli(primary, "CLUSTER", "MYID"))

    def ready() -> bool:
        for port in nodes:
            info = redis.Redis(port=port).cluster("info")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(nodes):
                return False
        return all(
            redis.Redis(port=replica).info("replication").get("master_link_status") == "up"
            for replica in replicas.values()
        )

    _wait(ready, "cluster_state:ok on six nodes, every replica in sync")
    return {
        "kind": "cluster",
        "ports": ports,
        "replicas": replicas,
        "url": "redis://" + ",".join(f"127.0.0.1:{p}" for p in ports),
    }


def start_sentinel(directory: Path) -> dict:
    """A primary, its replica, and one sentinel (quorum 1) that fails over within a few seconds."""
    primary, replica, sentinel = _free_ports(3)
    _start(directory, f"primary-{primary}", *_server_args(primary))
    _wait(lambda: _cli(primary, "PING"), "the primary")
    _start(directory, f"replica-{replica}", *_server_args(replica), "--replicaof", "127.0.0.1", str(primary))
    _wait(lambda: _cli(replica, "INFO", "replication").get("master_link_status") == "up", "the replica in sync")
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
    )
    _start(directory, f"sentinel-{sentinel}", str(config), "--sentinel")
    _wait(lambda: _cli(sentinel, "SENTINEL", "REPLICAS", MASTER), "the sentinel seeing the replica")
    return {
        "kind": "sentinel",
        "ports": [primary, replica],
        "sentinel": sentinel,
        "url": f"redis://127.0.0.1:{primary}/0",
    }


def post(url: str, key: str):
    """One chat completion through the gateway at `url`, as the failover tests' tenant calls."""
    import httpx2

    return httpx2.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def served_records(tenant, expected: int, seconds: float = 10.0) -> int:
    """The tenant's served usage records once there are `expected` of them (or `seconds` passed):
    after a failover, the last answers' records may still be on their way."""
    from billing.models import UsageRecord  # this module is loaded before Django is set up

    deadline = time.monotonic() + seconds
    while UsageRecord.objects.filter(tenant=tenant, status_code=200).count() < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return UsageRecord.objects.filter(tenant=tenant, status_code=200).count()


def cache_follows(seconds: float) -> None:
    """The test process's Django cache writes and reads on the new primary within `seconds`."""
    import redis
    from django.core.cache import cache

    deadline = time.monotonic() + seconds
    while True:
        try:
            cache.set("failover-probe", "new", 60)
            break
        except (redis.RedisError, OSError):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert cache.get("failover-probe") == "new"


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    global _missing
    kind = os.environ.get("TEST_REDIS_TOPOLOGY", "")
    if kind not in ("cluster", "sentinel"):
        return
    if not os.path.exists(REDIS_SERVER):
        _missing = f"{REDIS_SERVER} is missing: no Redis {kind} to test against"
        return
    directory = Path(tempfile.mkdtemp(prefix=f"redis-{kind}-"))
    TOPOLOGY["dir"] = directory
    try:
        TOPOLOGY.update(start_cluster(directory) if kind == "cluster" else start_sentinel(directory))
    except BaseException:
        pytest_unconfigure(early_config)
        raise
    if kind == "cluster":
        # Celery keeps the Redis the run was given (it does not speak Cluster).
        os.environ.setdefault("CELERY_BROKER_URL", os.environ.get("REDIS_URL", "") or "memory://")
        os.environ["REDIS_CLUSTER"] = "1"
    os.environ["REDIS_URL"] = TOPOLOGY["url"]
    if kind == "sentinel":
        os.environ["REDIS_SENTINELS"] = f"127.0.0.1:{TOPOLOGY['sentinel']}"
        os.environ["REDIS_SENTINEL_MASTER"] = MASTER


def pytest_collection_modifyitems(config, items):
    if _missing:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=_missing))


def pytest_unconfigure(config):
    for process in _processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in _processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _processes.clear()
    if TOPOLOGY.get("dir"):
        shutil.rmtree(TOPOLOGY["dir"], ignore_errors=True)
