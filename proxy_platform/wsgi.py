"""WSGI entry point for the admin and billing pages (the gateway wants ASGI: proxy_platform.asgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")

application = get_wsgi_application()
