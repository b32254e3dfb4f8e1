"""Each gateway process hears of breaker openings and closings at once (docs/routing.md#the-routing-view).

done.lua publishes a deployment's breaker opening ("<id> <until ms>") and its closing by a probe
("<id>") on `store.channel()`, in the script that changes it; this process's listener (one task,
started by the ASGI lifespan: proxy_platform/asgi.py) tells its routing view, which then turns
requests away from that deployment without asking Redis. Without it the view would learn at its
next sync (GATEWAY_ROUTING_SYNC_SECONDS), or at the deployment's next failure here.

Whenever the listener (re)subscribes, the view forgets every breaker state it holds (asked of
Redis again on the next take): announcements made while it was not listening are lost. While Redis
cannot be reached the listener retries every second. Without REDIS_URL there is one process and
nothing to listen to. Topologies as gateway/key_events.py: under Cluster on an entry node (classic
PUBLISH reaches every node), under Sentinel on the primary the sentinels name.
"""

import asyncio
import contextlib
import logging

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.limits import config as limits_config
from proxy_platform import redis_clients

from .store import channel, redis_routing

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
HEALTH_CHECK_SECONDS = 15  # a PING on the subscription when it was quiet this long
STARTUP_WAIT_SECONDS = 2.0

_listener: asyncio.Task | None = None


async def _listen(url: str, subscribed: asyncio.Event) -> None:
    while True:
        client = redis_clients.pubsub_client(
            url,
            asynchronous=True,
            socket_connect_timeout=limits_config.redis_timeout(),
            health_check_interval=HEALTH_CHECK_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel())
            redis_routing.view.unknown()  # whatever was announced before this moment went unheard
            subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=HEALTH_CHECK_SECONDS)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    redis_routing.view.announced(data.decode() if isinstance(data, bytes) else data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure: listen again; the view's sync bounds staleness)
            log.warning("breaker announcements not received (%s); listening again", type(exc).__name__)
        finally:
            subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
        await asyncio.sleep(RETRY_SECONDS)


async def start() -> None:
    """Start listening in this event loop (once; nothing to do without REDIS_URL), waiting a little
    for the subscription. A Redis that is down does not hold the start-up back."""
    global _listener
    url = limits_config.redis_url()
    if url and (_listener is None or _listener.done()):
        subscribed = asyncio.Event()
        _listener = asyncio.get_running_loop().create_task(_listen(url, subscribed), name="breaker-announcements")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT_SECONDS):
                await subscribed.wait()


async def stop() -> None:
    """Stop listening, and send the routing view's last reports."""
    global _listener
    if _listener is not None:
        _listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _listener
        _listener = None
    if limits_config.redis_url():
        await redis_routing.view.stop()
