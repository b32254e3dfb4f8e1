"""A Pub/Sub channel every gateway process listens to, for changes it must hear of at once.

Two use it: changed API keys (gateway/key_events.py) and circuit breakers opened or closed
elsewhere (gateway/routing/events.py). Each is one `Listener`, a task per process started and
stopped by the ASGI lifespan (proxy_platform/asgi.py). Whenever it (re)subscribes, its
`subscribed` callback runs first: announcements made while it was not listening are lost, and
each user forgets what it may have missed. While Redis cannot be reached it retries every
second, and each user's own bound on staleness holds (the key cache's period, the routing view's
sync). Without REDIS_URL (the demo: one process) there is nothing to listen to. Under Redis
Cluster it subscribes on an entry node (classic PUBLISH reaches every node of a cluster); under
Sentinel, on the primary the sentinels name, asked again on every (re)subscription.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy_platform import redis_clients

from .limits import config

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
HEALTH_CHECK_SECONDS = 15  # a PING on the subscription when it was quiet this long
STARTUP_WAIT_SECONDS = 2.0


class Listener:
    """One channel, heard by one task of this process's event loop."""

    def __init__(
        self,
        what: str,
        channel: Callable[[str], str],
        *,
        subscribed: Callable[[], None],
        heard: Callable[[bytes | str], None],
    ) -> None:
        self.what = what  # for the task's name and the log: "API key announcements"
        self.channel = channel  # REDIS_URL -> the channel's name
        self.subscribed = subscribed
        self.heard = heard
        self.task: asyncio.Task | None = None
        self.ready: asyncio.Event | None = None  # set while subscribed (made with the task, in its loop)

    async def _listen(self, url: str, subscribed: asyncio.Event) -> None:
        while True:
            # No retries: redis-py would reconnect and subscribe again by itself, and this loop
            # would not know that announcements were missed meanwhile.
            client = redis_clients.pubsub_client(
                url,
                asynchronous=True,
                socket_connect_timeout=config.redis_timeout(),
                health_check_interval=HEALTH_CHECK_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel(url))
                self.subscribed()  # whatever was announced before this moment went unheard
                subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=HEALTH_CHECK_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self.heard(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (any failure: listen again; the user's own bound holds meanwhile)
                log.warning("%s not received (%s); listening again", self.what, type(exc).__name__)
            finally:
                subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(RETRY_SECONDS)

    async def start(self) -> None:
        """Start listening in this event loop (once; nothing to do without REDIS_URL), and wait a
        little for the subscription, so that a process that says it is up also hears announcements.
        A Redis that is down does not hold the start-up back: the listener keeps trying."""
        url = config.redis_url()
        if url and (self.task is None or self.task.done()):
            self.ready = asyncio.Event()
            name = self.what.lower().replace(" ", "-")
            self.task = asyncio.get_running_loop().create_task(self._listen(url, self.ready), name=name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STARTUP_WAIT_SECONDS):
                    await self.ready.wait()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
