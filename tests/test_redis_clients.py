"""proxy_platform/redis_clients.py: which client a deployment's settings give (docs/redis.md).

Nothing here connects: the clients' classes and what they were told are checked. The clients
at work on a real Cluster and Sentinel: `make test-redis-topologies` (tests/redis_topology.py).
"""

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from proxy_platform import redis_clients
from tenants.key_events import channel


def test_plain_is_redis_url_as_given(settings):
    settings.REDIS_URL, settings.REDIS_CLUSTER, settings.REDIS_SENTINELS = "redis://127.0.0.1:6379/7", False, []
    client = redis_clients.async_client(socket_timeout=0.5)
    assert type(client) is Redis
    assert client.connection_pool.connection_kwargs["db"] == 7
    assert redis_clients.topology() == "plain"
    assert channel(settings.REDIS_URL) == "gw:keys:changed:7"
    assert redis_clients.pubsub_url() == settings.REDIS_URL


def test_cluster_takes_every_entry_node_and_database_0(settings):
    settings.REDIS_URL = "redis://:s3cret@10.0.0.1:7000,10.0.0.2:7001/0"
    settings.REDIS_CLUSTER, settings.REDIS_SENTINELS = True, []
    client = redis_clients.async_client(socket_timeout=0.5)
    assert isinstance(client, RedisCluster)
    nodes = {(node.host, node.port) for node in client.nodes_manager.startup_nodes.values()}
    assert nodes == {("10.0.0.1", 7000), ("10.0.0.2", 7001)}
    assert client.connection_kwargs["password"] == "s3cret"
    assert redis_clients.topology() == "cluster"
    assert channel(settings.REDIS_URL) == "gw:keys:changed:0"
    # Key announcements on a plain connection to one node: PUBLISH is broadcast over the cluster.
    assert type(redis_clients.pubsub_client(asynchronous=True)) is Redis
    # Pub/Sub on one node: PUBLISH is broadcast over the cluster.
    assert redis_clients.pubsub_url() == "redis://:s3cret@10.0.0.1:7000/0"


def test_sentinel_asks_the_sentinels_for_the_named_primary(settings):
    settings.REDIS_URL = "redis://:pw@ignored:6379/3"
    settings.REDIS_CLUSTER = False
    settings.REDIS_SENTINELS = ["10.0.0.5:26379", "10.0.0.6:26380"]
    settings.REDIS_SENTINEL_MASTER = "gw"
    client = redis_clients.async_client(socket_timeout=0.5, socket_connect_timeout=0.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "gw"
    assert pool.is_master
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    sentinels = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ]
    assert sentinels == [("10.0.0.5", 26379), ("10.0.0.6", 26380)]
    # The sentinels themselves are asked within the caller's timeout.
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 0.5
    assert redis_clients.topology() == "sentinel"
    assert channel(settings.REDIS_URL) == "gw:keys:changed:3"
