"""The API's JSON error for an exception that escaped a /v1/ view, instead of Django's HTML 500.

The views turn every failure they expect into a `GatewayError`; what escapes them (a database
that went away under the tenant API's views, a bug) used to reach Django's handler, whose answer
is an HTML page that no SDK can read. Here it becomes a 500, or a 503 `database_unavailable` when
the database is down, in the caller's wire format (Anthropic's for /v1/messages, OpenAI's
otherwise). Used by Django's stack (settings.MIDDLEWARE) and by the hot path's handler
(handlers.py). What Django refuses before any view runs (a Host header outside ALLOWED_HOSTS: a
400; an exception in a middleware: a 500) goes through the URLconf's `handler400`/`handler500`,
which are `bad_request` and `server_error` below: the same JSON on /v1/*, Django's pages elsewhere.
"""

import logging
import uuid

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin
from django.views import defaults

from .db import DATABASE_UNAVAILABLE
from .errors import GatewayError, anthropic_error_response, openai_error_response, with_request_id

log = logging.getLogger(__name__)


def _render(request: HttpRequest, error: GatewayError, request_id: str) -> HttpResponse:
    render = anthropic_error_response if request.path.startswith("/v1/messages") else openai_error_response
    return with_request_id(render(error), request_id)


def api_exception_response(request: HttpRequest, exception: Exception) -> HttpResponse | None:
    """The wire-format answer to an unhandled exception on /v1/*, or None elsewhere."""
    if not request.path.startswith("/v1/"):
        return None
    request_id = uuid.uuid4().hex
    if isinstance(exception, DATABASE_UNAVAILABLE):
        log.warning("request %s to %s: the database is unavailable: %s", request_id, request.path, exception)
        error = GatewayError(
            503,
            "The service is temporarily unavailable. Retry shortly.",
            "database_unavailable",
            headers={"retry-after": "2"},
        )
    else:
        log.error("request %s to %s failed", request_id, request.path, exc_info=exception)
        error = GatewayError(
            500, f"The gateway failed to handle this request (request id {request_id}).", "internal_error"
        )
    return _render(request, error, request_id)


class ApiErrorMiddleware(MiddlewareMixin):
    """`process_exception` only: see the module's docstring."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return api_exception_response(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: a request refused before any view (DisallowedHost, a malformed request)."""
    if not request.path.startswith("/v1/"):
        return defaults.bad_request(request, exception)
    return _render(request, GatewayError(400, "Bad request.", "invalid_request"), uuid.uuid4().hex)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an exception outside a view (in a middleware)."""
    if not request.path.startswith("/v1/"):
        return defaults.server_error(request)
    request_id = uuid.uuid4().hex
    error = GatewayError(500, f"The gateway failed to handle this request (request id {request_id}).", "internal_error")
    return _render(request, error, request_id)
