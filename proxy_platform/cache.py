"""Django's Redis cache backend with one client, so one connection pool, per process.

Django keeps cache objects per thread and per asyncio context (asgiref's Local). Under ASGI each
request is a context of its own, so each request built a new RedisCache with a new connection
pool and opened a new TCP connection to Redis, for the two commands django-ratelimit sends, then
dropped it: measured, one connection per rate-limited request. `SharedRedisCache` keeps the
per-context objects Django wants but gives them one shared client per configuration, whose
redis-py pool is thread-safe and replaces a broken connection on its next use.

It also makes `incr` one round trip: Django's sends EXISTS, then INCRBY (it must not create a
key without an expiry); a small script does both, atomically. And it keeps one redis.Redis per
pool instead of building one per command.

Under Redis Cluster or Sentinel (docs/redis.md) the client is proxy_platform/redis_clients.py's
instead of Django's pools over LOCATION: a cluster client, or one that follows the primary the
sentinels name. Under Cluster the multi-key commands Django sends (MGET, an MSET pipeline) would
span hash slots, so `get_many` and `set_many` go key by key (redis-py splits them by node).
"""

import threading

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

from . import redis_clients

_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


class SharedRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._redis: dict = {}
        self._managed = None  # the factory's client (Cluster, Sentinel), made on first use
        self._managed_options = {
            k: v for k, v in self._pool_options.items() if k in ("socket_timeout", "socket_connect_timeout")
        }

    def get_client(self, key=None, *, write=False):
        if redis_clients.topology() != "plain":
            if self._managed is None:
                # REDIS_URL itself: Django splits LOCATION at commas, which list Cluster entry nodes.
                self._managed = redis_clients.sync_client(**self._managed_options)
            return self._managed
        # Django builds a redis.Redis per command (its __init__ fills a dict of ~200 response
        # callbacks); one per pool does, redis.Redis being thread-safe over its pool.
        pool = self._get_connection_pool(write)
        client = self._redis.get(id(pool))
        if client is None:
            client = self._redis[id(pool)] = self._client(connection_pool=pool)
        return client

    def get_many(self, keys):
        if not redis_clients.is_cluster():
            return super().get_many(keys)
        client = self.get_client(None)
        values = client.mget_nonatomic(keys)
        return {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data, timeout):
        if not redis_clients.is_cluster():
            return super().set_many(data, timeout)
        for key, value in data.items():
            self.set(key, value, timeout)

    def incr(self, key, delta):
        value = self.get_client(key, write=True).eval(_INCR_EXISTING, 1, key, delta)
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return value


_clients: dict[tuple, SharedRedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    """`django.core.cache.backends.redis.RedisCache`, same settings, one client per process."""

    @cached_property
    def _cache(self) -> SharedRedisCacheClient:
        # OPTIONS may hold unhashable values; their repr identifies the configuration well enough.
        identity = (tuple(self._servers), repr(sorted(self._options.items())))
        with _lock:
            client = _clients.get(identity)
            if client is None:
                client = _clients[identity] = SharedRedisCacheClient(self._servers, **self._options)
        return client
