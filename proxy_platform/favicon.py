"""/favicon.ico for every page, the API's included: browsers ask for it whatever the page says,
and uvicorn serves no static files, so without this view each page load logged a 404.

The icon is the console's own static file (console/static/console/favicon.ico, drawn from
favicon.svg), found through the staticfiles finders so that it works with or without
`collectstatic`, read once per process.
"""

from functools import cache

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

ICON = "console/favicon.ico"


@cache
def _icon() -> bytes:
    path = finders.find(ICON)
    if path is None:  # a deployment without the billing app's static files: a bug, not a 404 to hide
        raise RuntimeError(f"static file {ICON} is missing")
    with open(path, "rb") as stream:
        return stream.read()


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(_icon(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response
