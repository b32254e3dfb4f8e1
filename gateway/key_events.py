"""Each gateway process listens for changed API keys and forgets them at once (docs/keys-api.md#revocation).

tenants/key_events.py publishes the ids of keys that were changed or revoked, after the commit;
this process's listener (gateway/announcements.py: one task, started by the ASGI lifespan) drops
them from the key cache (`registry.keys_forget`), so the next request with such a key reads the
database again. That is what makes a revocation through /v1/keys or the admin take effect
everywhere at once, rather than within GATEWAY_AUTH_CACHE_SECONDS.

Whenever the listener (re)subscribes, it forgets every cached key: announcements made while it
was not listening are lost, and an empty cache is the safe answer to not knowing. While Redis
cannot be reached the cache period is the bound again.
"""

from tenants.key_events import channel, message_ids

from .announcements import Listener
from .registry import keys_forget

listener = Listener(
    "API key announcements",
    channel,
    subscribed=keys_forget,
    heard=lambda data: keys_forget(message_ids(data)),
)


async def start() -> None:
    await listener.start()


async def stop() -> None:
    await listener.stop()
