"""One exception for every expected failure, rendered by one function per API family (docs/design.md#rest-endpoints).

Views raise `GatewayError`; `openai_error_response` and `anthropic_error_response` turn it into
the wire format the caller's SDK understands. `error_type` is also what the usage record
stores, so it names the cause ("upstream_rate_limit"), not just the status.
"""

from dataclasses import dataclass, field

import orjson
from django.http import HttpResponse

# HTTP status -> the `type` each SDK family expects in its error body.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


@dataclass
class GatewayError(Exception):
    status: int
    message: str
    code: str  # machine-readable cause, stored on the usage record as its error type
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Which level of limits refused (tenant, key, project, end_user): said in the body's `level`.
    level: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code, param=param)


def _json(payload: dict, status: int, headers: dict[str, str]) -> HttpResponse:
    response = HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response


def openai_error_body(error: GatewayError) -> dict:
    return {
        "error": {
            "message": error.message,
            "type": _OPENAI_TYPES.get(error.status, "api_error"),
            "param": error.param,
            "code": error.code,
            **({"level": error.level} if error.level else {}),
        }
    }


def anthropic_error_body(error: GatewayError) -> dict:
    return {
        "type": "error",
        "error": {
            "type": _ANTHROPIC_TYPES.get(error.status, "api_error"),
            "message": error.message,
            **({"level": error.level} if error.level else {}),
        },
    }


def openai_error_response(error: GatewayError) -> HttpResponse:
    return _json(openai_error_body(error), error.status, error.headers)


def anthropic_error_response(error: GatewayError) -> HttpResponse:
    return _json(anthropic_error_body(error), error.status, error.headers)


def with_request_id(response: HttpResponse, request_id: str) -> HttpResponse:
    """The request's id on its answer: `x-request-id`, and `request-id`, which the Anthropic SDK
    reads (`message._request_id`)."""
    response["x-request-id"] = request_id
    response["request-id"] = request_id
    return response
