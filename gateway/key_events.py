"""Each gateway process listens for changed API keys and forgets them at once (docs/keys-api.md#revocation).

tenants/key_events.py publishes the ids of keys that were changed or revoked, after the commit;
this process's listener (one task, started by the ASGI lifespan: proxy_platform/asgi.py) drops
them from the key cache (`registry.keys_forget`), so the next request with such a key reads the
database again. That is what makes a revocation through /v1/keys or the admin take effect
everywhere at once, rather than within GATEWAY_AUTH_CACHE_SECONDS.

Whenever the listener (re)subscribes, it forgets every cached key: announcements made while it
was not listening are lost, and an empty cache is the safe answer to not knowing. While Redis
cannot be reached the listener retries every second and the cache period is the bound again.
Without REDIS_URL (the demo: one process) there is nothing to listen to. Under Redis Cluster the
listener subscribes on an entry node (classic PUBLISH reaches every node of a cluster); under
Sentinel, on the primary the sentinels name, asked again on every (re)subscription.
"""

import asyncio
import contextlib
import logging

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy_platform import redis_clients
from tenants.key_events import channel, message_ids

from .limits import config
from .registry import keys_forget

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
HEALTH_CHECK_SECONDS = 15  # a PING on the subscription when it was quiet this long

_listener: asyncio.Task | None = None
_subscribed: asyncio.Event | None = None  # set while subscribed (made with the listener, in its loop)
STARTUP_WAIT_SECONDS = 2.0


async def _listen(url: str, subscribed: asyncio.Event) -> None:
    while True:
        # No retries: redis-py would reconnect and subscribe again by itself, and this loop would not
        # know that announcements were missed meanwhile.
        client = redis_clients.pubsub_client(
            url,
            asynchronous=True,
            socket_connect_timeout=config.redis_timeout(),
            health_check_interval=HEALTH_CHECK_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel(url))
            keys_forget()  # whatever was announced before this moment went unheard
            subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=HEALTH_CHECK_SECONDS)
                if message is not None and message.get("type") == "message":
                    keys_forget(message_ids(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure: listen again, the cache period bounds staleness)
            log.warning("API key announcements not received (%s); listening again", type(exc).__name__)
        finally:
            subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
        await asyncio.sleep(RETRY_SECONDS)


async def start() -> None:
    """Start listening in this event loop (once; nothing to do without REDIS_URL), and wait a
    little for the subscription, so that a process that says it is up also hears announcements.
    A Redis that is down does not hold the start-up back: the listener keeps trying."""
    global _listener, _subscribed
    url = config.redis_url()
    if url and (_listener is None or _listener.done()):
        _subscribed = asyncio.Event()
        _listener = asyncio.get_running_loop().create_task(_listen(url, _subscribed), name="api-key-announcements")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT_SECONDS):
                await _subscribed.wait()


async def stop() -> None:
    global _listener
    if _listener is not None:
        _listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _listener
        _listener = None
