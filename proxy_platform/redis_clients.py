"""Every Redis client of the platform is made here (docs/redis.md): plain, Cluster or Sentinel.

Which one is a deployment decision, read from the settings, not something each user of Redis
should know about:

- plain (the default): `REDIS_URL`, one server (or a proxy in front of several).
- Cluster (`REDIS_CLUSTER=1`): redis-py's cluster client; the entry nodes are `REDIS_URL`'s host,
  or a comma-separated list of them (`redis://h1:6379,h2:6379,h3:6379`). The database is 0
  (a cluster has no other). Every multi-key script and MULTI keeps its keys in one hash slot
  (hash tags: gateway/limits/keys.py, gateway/routing/store.py, gateway/journal.py).
- Sentinel (`REDIS_SENTINELS=h1:26379,h2:26379` and `REDIS_SENTINEL_MASTER=name`): the client
  asks the sentinels for the primary, and asks again whenever a connection fails or the server
  it reached says it is a replica now (redis-py's SentinelConnectionPool), so a failover is
  followed without a restart. `REDIS_URL` still gives the database, user and password.

Callers pass the options they need (timeouts, no retries); the factory only chooses the class.
"""

from urllib.parse import unquote, urlsplit

from django.conf import settings


def redis_url() -> str:
    return getattr(settings, "REDIS_URL", "") or ""


def is_cluster() -> bool:
    return bool(getattr(settings, "REDIS_CLUSTER", False))


def sentinels() -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs; empty without Sentinel."""
    return [_host_port(item) for item in getattr(settings, "REDIS_SENTINELS", []) or []]


def topology() -> str:
    """`cluster`, `sentinel` or `plain`."""
    if is_cluster():
        return "cluster"
    if sentinels():
        return "sentinel"
    return "plain"


def _host_port(text: str, default_port: int = 6379) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host:
        return port, default_port
    return host.strip("[]"), int(port)


def _parts(url: str) -> tuple[list[tuple[str, int]], dict]:
    """A URL's nodes (its host part may list several, comma-separated) and connection options
    (database, user, password, TLS)."""
    split = urlsplit(url)
    netloc = split.netloc.rpartition("@")[2]
    nodes = [_host_port(node) for node in netloc.split(",") if node.strip()]
    options: dict = {}
    if split.username:
        options["username"] = unquote(split.username)
    if split.password:
        options["password"] = unquote(split.password)
    path = split.path.strip("/")
    if path.isdigit():
        options["db"] = int(path)
    if split.scheme == "rediss":
        options["ssl"] = True
    return nodes, options


def database(url: str | None = None) -> int:
    """The database number of REDIS_URL (0 under Cluster, which has no other)."""
    return 0 if is_cluster() else _parts(url or redis_url())[1].get("db", 0)


def async_client(url: str | None = None, **options):
    """A redis.asyncio client for this deployment's Redis (bound to the event loop it first runs on)."""
    url = url or redis_url()
    nodes, url_options = _parts(url)
    if is_cluster():
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        url_options.pop("db", None)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **url_options, **options)
    if sentinels():
        from redis.asyncio import Redis
        from redis.asyncio.sentinel import Sentinel

        return _sentinel(Sentinel, options).master_for(
            settings.REDIS_SENTINEL_MASTER, redis_class=Redis, **url_options, **options
        )
    from redis.asyncio import Redis

    return Redis.from_url(url, **options)


def sync_client(url: str | None = None, **options):
    """A redis.Redis (thread-safe over its pool) for this deployment's Redis."""
    url = url or redis_url()
    nodes, url_options = _parts(url)
    if is_cluster():
        from redis.cluster import ClusterNode, RedisCluster

        url_options.pop("db", None)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **url_options, **options)
    if sentinels():
        import redis
        from redis.sentinel import Sentinel

        return _sentinel(Sentinel, options).master_for(
            settings.REDIS_SENTINEL_MASTER, redis_class=redis.Redis, **url_options, **options
        )
    import redis

    return redis.Redis.from_url(url, **options)


def _sentinel(sentinel_class, options: dict):
    # The sentinels themselves are asked with the caller's timeouts too: one that does not answer
    # must not hang a request; the next sentinel is asked instead.
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    return sentinel_class(sentinels(), sentinel_kwargs=timeouts)


def pubsub_url() -> str:
    """A plain URL on which classic Pub/Sub works under Cluster: REDIS_URL's first node (PUBLISH
    is broadcast to every node of a cluster, so any node hears every message); REDIS_URL otherwise."""
    url = redis_url()
    if not is_cluster():
        return url
    split = urlsplit(url)
    userinfo, _, netloc = split.netloc.rpartition("@")
    first = netloc.split(",")[0]
    return f"{split.scheme}://{userinfo + '@' if userinfo else ''}{first}/0"


def pubsub_client(url: str | None = None, *, asynchronous: bool, **options):
    """The client of the key announcements (Pub/Sub): under Cluster a plain one on `pubsub_url()`,
    else this deployment's (Sentinel: the primary's)."""
    if is_cluster():
        if asynchronous:
            from redis.asyncio import Redis

            return Redis.from_url(pubsub_url(), **options)
        import redis

        return redis.Redis.from_url(pubsub_url(), **options)
    return async_client(url, **options) if asynchronous else sync_client(url, **options)
