"""Each gateway process hears of breaker openings and closings at once (docs/routing.md#the-routing-view).

done.lua publishes a deployment's breaker opening ("<id> <until ms>") and its closing by a probe
("<id>") on `store.channel()`, in the script that changes it; this process's listener
(gateway/announcements.py: one task, started by the ASGI lifespan) tells its routing view, which
then turns requests away from that deployment without asking Redis. Without it the view would
learn at its next sync (GATEWAY_ROUTING_SYNC_SECONDS), or at the deployment's next failure here.

Whenever the listener (re)subscribes, the view forgets every breaker state it holds (asked of
Redis again on the next take): announcements made while it was not listening are lost.
"""

from gateway.announcements import Listener
from gateway.limits import config as limits_config

from .store import channel, redis_routing

listener = Listener(
    "Breaker announcements",
    lambda url: channel(),
    subscribed=lambda: redis_routing.view.unknown(),
    heard=lambda data: redis_routing.view.announced(data.decode() if isinstance(data, bytes) else data),
)


async def start() -> None:
    await listener.start()


async def stop() -> None:
    """Stop listening, and send the routing view's last reports."""
    await listener.stop()
    if limits_config.redis_url():
        await redis_routing.view.stop()
