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
    (one answer for all of them: the error never says which)."""
    raw = presented_key(request)
    if not raw:
        raise GatewayError(401, "No API key provided. Send it as `Authorization: Bearer <key>`.", "missing_api_key")
    caller = await caller_for_key(raw)
    if caller is None:
        raise GatewayError(401, "Incorrect API key provided.", "invalid_api_key")
    return caller
