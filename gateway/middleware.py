"""The API's JSON error for an exception that escaped a /v1/ view, instead of Django's HTML 500.

The views turn every failure they expect into a `GatewayError`; what escapes them (a database
that went away under the DRF views, a bug) used to reach Django's handler, whose answer is an
HTML page that no SDK can read. Here it becomes a 500, or a 503 `database_unavailable` when the
database is down, in the caller's wire format (Anthropic's for /v1/messages, OpenAI's otherwise).
Used by Django's stack (settings.MIDDLEWARE) and by the hot path's handler (handlers.py).
"""

import logging
import uuid

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

from .db import DATABASE_UNAVAILABLE
from .errors import GatewayError, anthropic_error_response, openai_error_response

log = logging.getLogger(__name__)


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
    render = anthropic_error_response if request.path.startswith("/v1/messages") else openai_error_response
    response = render(error)
    response["x-request-id"] = request_id
    return response


class ApiErrorMiddleware(MiddlewareMixin):
    """`process_exception` only: see the module's docstring."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return api_exception_response(request, exception)
