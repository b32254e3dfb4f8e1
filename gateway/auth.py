"""Who is calling, and what a caller may do: the tenant key from `Authorization: Bearer`,
`x-api-key` or `api-key` (docs/design.md#the-hot-path), and what a suspended tenant may still do.

Every tenant endpoint says what it does with an `Access`; `access_check` is the one place that
decides, from the tenant's status, whether it may. A suspended tenant may still read what it has
(its usage, to understand its bill; its request logs and prompt templates, to take them
elsewhere), and nothing else: no model calls, no model list (it may use none), no template
created or deleted. Each refusal is a 403 `tenant_suspended` in the caller's wire format.

A tenant admin key (`ApiKey.is_admin`, created by staff) manages the tenant's keys (/v1/keys,
gateway/keys_api.py) and may read and write the tenant's other objects, but calls no model: USE
is refused with a 403 `admin_key_cannot_call_models`. An ordinary key may do everything else but
manage keys (KEYS_READ, KEYS): a 403 `admin_key_required`. A suspended tenant may still list its
keys (KEYS_READ), not change them.
"""

import enum

from django.http import HttpRequest

from .errors import GatewayError
from .registry import Caller, caller_for_key


class Access(enum.Enum):
    USE = "use"  # models: /v1/chat/completions, /v1/messages, /v1/models
    READ = "read"  # the tenant's own records: /v1/usage, /v1/logs…, GET /v1/templates…
    WRITE = "write"  # the tenant's own objects: POST /v1/templates, DELETE /v1/templates/{name}
    KEYS_READ = "keys_read"  # the tenant's API keys: GET /v1/keys… (admin keys only)
    KEYS = "keys"  # the tenant's API keys: POST, PATCH, DELETE /v1/keys… (admin keys only)


SUSPENDED_TENANT_MAY = frozenset({Access.READ, Access.KEYS_READ})
ADMIN_ONLY = frozenset({Access.KEYS_READ, Access.KEYS})
SUSPENDED_MESSAGE = "This tenant is suspended. Contact the platform operator."
ADMIN_KEY_USE_MESSAGE = (
    "This is a tenant admin key: it manages the tenant's API keys (/v1/keys) and cannot call models. "
    "Use one of the tenant's ordinary keys."
)
ADMIN_KEY_REQUIRED_MESSAGE = "Managing API keys needs a tenant admin key; this key is an ordinary one."


def access_check(caller: Caller, access: Access) -> None:
    """403 unless this key may do this (see the module's docstring): `admin_key_cannot_call_models`,
    `admin_key_required`, or `tenant_suspended`."""
    if access is Access.USE and caller.key.is_admin:
        raise GatewayError(403, ADMIN_KEY_USE_MESSAGE, "admin_key_cannot_call_models")
    if access in ADMIN_ONLY and not caller.key.is_admin:
        raise GatewayError(403, ADMIN_KEY_REQUIRED_MESSAGE, "admin_key_required")
    if not caller.tenant.active and access not in SUSPENDED_TENANT_MAY:
        raise GatewayError(403, SUSPENDED_MESSAGE, "tenant_suspended")


def presented_key(request: HttpRequest) -> str:
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key") or ""


async def authenticate(request: HttpRequest, *, access: Access | None = None) -> Caller:
    """The caller behind the request's key; 401 for a missing, unknown, revoked or expired key
    (one answer for all of them: the error never says which). With `access`, also 403 when the
    tenant may not do that; without, the caller checks later (the completion endpoints do, in
    `proxy.resolve`, so that the refusal is metered like any other). The key is looked up once
    per request: a rate guard (gateway/throttle.py) and the view share the answer."""
    caller = getattr(request, "_gateway_caller", None)
    if caller is None:
        raw = presented_key(request)
        if not raw:
            raise GatewayError(401, "No API key provided. Send it as `Authorization: Bearer <key>`.", "missing_api_key")
        caller = await caller_for_key(raw)
        if caller is None:
            raise GatewayError(401, "Incorrect API key provided.", "invalid_api_key")
        request._gateway_caller = caller
    if access is not None:
        access_check(caller, access)
    return caller
