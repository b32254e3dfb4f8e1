"""ASGI entry point: `uvicorn proxy_platform.asgi:application` serves the gateway and the admin.

The completion endpoints go to a lean handler (proxy_platform/handlers.py: no admin
middleware, no per-request thread); everything else, the admin included, to Django's own.
The outermost layer counts completion requests in flight until their last byte
(gateway/observability.py). At shutdown the usage records still being written for clients that
hung up are waited for, so that a restart loses none of them, and then the provider SDKs' clients
are closed: their aiohttp sessions would otherwise be finalized open at exit, which aiohttp logs
as `Unclosed client session` errors (tests/test_shutdown.py).
"""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application() does

from .handlers import ApiASGIHandler, HotPathHandler  # noqa: E402

django_application = ApiASGIHandler()

from django.conf import settings  # noqa: E402  (settings are configured by the line above)
from django.urls import get_resolver  # noqa: E402

from gateway import key_events  # noqa: E402
from gateway.metering import drain_pending  # noqa: E402
from gateway.observability import InFlight  # noqa: E402
from gateway.providers import close_clients  # noqa: E402
from gateway.routing import events as routing_events  # noqa: E402

if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_application = ASGIStaticFilesHandler(django_application)

# Exact paths: anything else under /v1/ (a typo, a trailing slash) gets Django's full stack and
# the gateway's 404 in wire format.
HOT_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/embeddings", "/v1/responses"}
)
hot_path_application = HotPathHandler()

# The URLconf imports the views, and so the SDKs and their transports, now rather than on the
# first request; then everything loaded so far is moved out of the collector's sight. Without
# it, the first seconds under load brought full collections of 40-120 ms each, walking the whole
# start-up heap (a p99 of ~100 ms at concurrency 1); with it they take 2-3 ms.
get_resolver().url_patterns  # noqa: B018
gc.freeze()


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await key_events.start()  # a changed API key is forgotten at once (gateway/key_events.py)
            await routing_events.start()  # a breaker opened elsewhere is heard at once (gateway/routing/events.py)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await key_events.stop()
            await drain_pending()  # the usage writes may still be settling with a provider's answer
            # After the drain, whose requests' attempts may still end: the view's last reports go out.
            await routing_events.stop()
            await close_clients()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _route(scope, receive, send):
    if scope["type"] == "http" and scope["path"] in HOT_PATHS:
        await hot_path_application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_application(scope, receive, send)


application = InFlight(_route)
