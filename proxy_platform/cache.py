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
"""

import threading

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


class SharedRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._redis: dict = {}

    def get_client(self, key=None, *, write=False):
        # Django builds a redis.Redis per command (its __init__ fills a dict of ~200 response
        # callbacks); one per pool does, redis.Redis being thread-safe over its pool.
        pool = self._get_connection_pool(write)
        client = self._redis.get(id(pool))
        if client is None:
            client = self._redis[id(pool)] = self._client(connection_pool=pool)
        return client

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
