"""ASGI entry point: `uvicorn proxy_platform.asgi:application` serves the gateway and the admin.

The outermost layer counts completion requests in flight until their last byte (gateway/observability.py).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")

application = get_asgi_application()

from django.conf import settings  # noqa: E402  (settings are configured by the line above)

if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)

from gateway.observability import InFlight  # noqa: E402

application = InFlight(application)
