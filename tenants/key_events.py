"""A changed API key, told to every gateway process at once (docs/keys-api.md#revocation).

Gateway processes keep the keys they have looked up for `GATEWAY_AUTH_CACHE_SECONDS`
(gateway/registry.py). That bound is how long a change made elsewhere would otherwise take to
be seen; a key revoked through the key API or the admin must stop working at once. So every
write on a key (tenants/services.py, the key admin) calls `api_keys_changed`, which publishes
the keys' ids on one Redis channel (of REDIS_URL's database) once the transaction has committed; every gateway process
listens there (gateway/key_events.py) and forgets those keys, whose next use reloads them.

Publishing after the commit matters: a process told before it would reload the old row and
keep it for the whole cache period. A publish that fails (Redis unreachable) is logged and
leaves the cache period as the bound, the promise the gateway kept before this channel existed.
Without REDIS_URL there is one process and nothing to tell (the key API forgets its own keys).
"""

import logging
import threading
from collections.abc import Iterable

import redis
from django.conf import settings
from django.db import transaction

from proxy_platform import redis_clients

log = logging.getLogger(__name__)

CHANNEL = "gw:keys:changed"  # + ":<db>"; a message is the changed keys' ids, comma-separated: "12,13"
PUBLISH_TIMEOUT = 0.5  # seconds: a write must not hang on a Redis that does not answer

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def _client(url: str) -> redis.Redis:
    # One client (so one thread-safe connection pool) per process and URL.
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis_clients.pubsub_client(
                url, asynchronous=False, socket_timeout=PUBLISH_TIMEOUT, socket_connect_timeout=PUBLISH_TIMEOUT
            )
        return client


def channel(url: str | None = None) -> str:
    """The channel of REDIS_URL's database: Pub/Sub channels are server-wide, not per database,
    and two installations (or test runs) sharing a server on different databases must not hear
    each other's key ids (under Cluster: 0)."""
    return f"{CHANNEL}:{redis_clients.database(url)}"


def message_ids(data: bytes | str) -> list[int]:
    """The key ids of a message on CHANNEL; anything that is not an id is skipped."""
    text = data.decode() if isinstance(data, bytes) else data
    return [int(part) for part in text.split(",") if part.strip().isdigit()]


def _publish(url: str, ids: list[int]) -> None:
    try:
        _client(url).publish(channel(url), ",".join(map(str, ids)))
    except (redis.RedisError, OSError) as exc:
        log.warning(
            "API key change of %d key(s) not published (%s): gateway processes see it within "
            "GATEWAY_AUTH_CACHE_SECONDS",
            len(ids),
            type(exc).__name__,
        )


def api_keys_changed(*, key_ids: Iterable[int]) -> None:
    """Tell every gateway process, after the current transaction commits, to forget these keys."""
    ids = sorted({int(i) for i in key_ids})
    url = getattr(settings, "REDIS_URL", "")
    if ids and url:
        transaction.on_commit(lambda: _publish(url, ids))
