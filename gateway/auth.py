"""Who is calling: the tenant key from `Authorization: Bearer`, `x-api-key` or `api-key` (DESIGN §2)."""

from django.http import HttpRequest

from .errors import GatewayError
from .registry import Caller, caller_for_key


def presented_key(request: HttpRequest) -> str:
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key") or ""


async def authenticate(request: HttpRequest) -> Caller:
    """The caller behind the request's key; 401 for a missing, unknown, revoked or expired key
    (one answer for all of them: the error never says which). Looked up once per request: a
    rate guard (gateway/throttle.py) and the view share the answer."""
    known = getattr(request, "_gateway_caller", None)
    if known is not None:
        return known
    raw = presented_key(request)
    if not raw:
        raise GatewayError(401, "No API key provided. Send it as `Authorization: Bearer <key>`.", "missing_api_key")
    caller = await caller_for_key(raw)
    if caller is None:
        raise GatewayError(401, "Incorrect API key provided.", "invalid_api_key")
    request._gateway_caller = caller
    return caller
