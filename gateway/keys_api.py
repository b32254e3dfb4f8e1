"""Self-service API keys: a tenant admin key manages the tenant's own keys (docs/keys-api.md).

    POST   /v1/keys          a new key; the answer carries its secret, `key`, this once
    GET    /v1/keys          the tenant's keys (?limit=1..100&after=<id>), never a secret
    GET    /v1/keys/{id}     one of them
    PATCH  /v1/keys/{id}     change some of its settings
    DELETE /v1/keys/{id}     revoke it: refused at once by every gateway process

The body speaks the configuration file's words (`name`, `project`, `rate_limit`, `monthly_budget`,
`daily_budget`, `models`, `expires_at`), parsed by `tenants.profiles.api_key_spec_clean` and
checked by the same functions as the admin and the import; a problem is a 400 in the OpenAI
shape whose `param` names the field (`rate_limit.requests_per_minute`). Every write is one call
of a `tenants.services` function (`api_key_create`, `api_key_update`, `api_key_revoke`).

Who may: only a tenant admin key (`ApiKey.is_admin`, made by staff or `manage.py create_api_key
--admin`), through `Access.KEYS_READ` / `Access.KEYS` (gateway/auth.py); an ordinary key gets a 403.
Admin keys are listed but never made, changed or revoked here: that is the operator's (403).
Everything is scoped by the caller's tenant: another tenant's key id, or project name, is
exactly an unknown one (404, 400). A key's limits and budgets are its own, on top of its
project's and its tenant's, which still apply: a tenant admin cannot loosen those.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from tenants import audit
from tenants.models import ApiKey, Tenant
from tenants.profiles import Problem, api_key_spec_clean, key_models_problems
from tenants.selectors import catalog_models_named, tenant_api_key, tenant_api_keys, tenant_model_scope, tenant_project
from tenants.services import Refused, api_key_create, api_key_revoke, api_key_update

from .api import TenantAPIView, _json, _json_object, _not_found
from .auth import Access, authenticate
from .errors import GatewayError, bad_request
from .registry import Caller, keys_forget
from .throttle import tenant_rate_limited

RATE_GROUP = "gw-api-keys"
LIST_LIMIT_MAX = 100
T = TypeVar("T")
ADMIN_KEY_NOT_MANAGED = "Admin keys are managed by the platform operator, not through the key API."


def _money(value) -> str | None:
    return None if value is None else str(value)


def key_body(key: ApiKey, *, now=None) -> dict[str, Any]:
    """A key as the API shows it: its settings in the configuration file's words and its display
    form (prefix…last4); never the secret or its hash."""
    return {
        "object": "api_key",
        "id": key.pk,
        "name": key.name,
        "display": key.display,
        "admin": key.is_admin,
        "status": key.status_at(now or timezone.now()),
        "project": key.project.name if key.project_id else None,
        "rate_limit": {
            "requests_per_minute": key.requests_per_minute,
            "tokens_per_minute": key.tokens_per_minute,
            "max_concurrent": key.max_concurrent,
        },
        "monthly_budget": _money(key.monthly_budget),
        "daily_budget": _money(key.daily_budget),
        "models": sorted(m.name for m in key.allowed_models.all()),  # prefetched
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
    }


def _spec(tenant: Tenant, body: Any) -> dict[str, Any]:
    """The body as `api_key_create` / `api_key_update` keywords: names become the tenant's
    project and catalog models. Refused (a 400 naming the first field) on any problem."""
    spec, problems = api_key_spec_clean(body, now=timezone.now())
    if "project" in spec and spec["project"] is not None:
        project = tenant_project(tenant_id=tenant.pk, name=spec["project"])
        if project is None:
            problems.append(Problem(("project",), f'unknown project "{spec["project"]}" (not one of this tenant\'s)'))
        spec["project"] = project
    if "allowed_models" in spec:
        names = spec["allowed_models"]
        found = key_models_problems(names, scope=tenant_model_scope(tenant=tenant))
        problems += [Problem(("models",), p.message) for p in found]
        if not found:
            spec["allowed_models"] = catalog_models_named(names=names)
    if problems:
        raise Refused(problems)
    return spec


def _create(tenant_id: int, body: Any) -> tuple[dict, str]:
    tenant = Tenant.objects.get(pk=tenant_id)
    spec = _spec(tenant, body)
    key, raw = api_key_create(
        tenant=tenant,
        name=spec.pop("name", "default"),
        allowed_models=spec.pop("allowed_models", ()),
        **spec,
    )
    key = tenant_api_key(tenant_id=tenant_id, key_id=key.pk)  # with its project and models, as listed
    return key_body(key), raw


def _managed_key(tenant_id: int, key_id: str) -> ApiKey:
    key = tenant_api_key(tenant_id=tenant_id, key_id=int(key_id)) if _is_id(key_id) else None
    if key is None:
        raise _not_found("API key")
    if key.is_admin:
        raise GatewayError(403, ADMIN_KEY_NOT_MANAGED, "admin_key_not_managed")
    return key


def _update(tenant_id: int, key_id: str, body: Any) -> dict:
    key = _managed_key(tenant_id, key_id)
    if key.revoked_at is not None:  # the service says so too, under its lock; here in the API's words
        raise GatewayError(400, f"The key {key.display} is revoked: a revoked key cannot be changed.", "key_revoked")
    spec = _spec(key.tenant, body)
    api_key_update(key=key, changes=spec)
    return key_body(tenant_api_key(tenant_id=tenant_id, key_id=key.pk))


def _revoke(tenant_id: int, key_id: str) -> dict:
    key = _managed_key(tenant_id, key_id)
    api_key_revoke(key=key)
    return key_body(key)


def _detail(tenant_id: int, key_id: str) -> dict:
    key = tenant_api_key(tenant_id=tenant_id, key_id=int(key_id)) if _is_id(key_id) else None
    if key is None:
        raise _not_found("API key")
    return key_body(key)


def _list(tenant_id: int, after: int | None, limit: int) -> dict:
    keys = tenant_api_keys(tenant_id=tenant_id, after=after, limit=limit + 1)
    now = timezone.now()
    data = [key_body(k, now=now) for k in keys[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(keys) > limit,
    }


def _is_id(text: str) -> bool:
    # The length first: int() refuses (ValueError) strings of more than 4,300 digits.
    return len(text) <= 19 and text.isascii() and text.isdigit() and 0 < int(text) < 2**63


def _list_query(params: dict[str, str]) -> tuple[int | None, int]:
    limit_text = params.get("limit", str(LIST_LIMIT_MAX))
    if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= LIST_LIMIT_MAX):
        raise bad_request(f"`limit` must be a whole number from 1 to {LIST_LIMIT_MAX}.", param="limit")
    after_text = params.get("after", "")
    if after_text and not _is_id(after_text):
        raise bad_request("`after` must be a key id from an earlier page.", param="after")
    return (int(after_text) if after_text else None), int(limit_text)


def _written_by(admin_key_id: int, write: Callable[..., T], *args) -> T:
    """Run one write of the key API (`_create`, `_update`, `_revoke`, each one call of a
    `tenants.services` function) on behalf of the tenant admin key `admin_key_id`: the one place
    where the API's writes happen, and so where the audit trail learns who acted: one entry per
    key changed, its actor the admin key (display form and id, tenants/audit.py)."""
    with audit.acting(api_key_id=admin_key_id), audit.collecting():
        return write(*args)


async def _write(caller: Caller, write: Callable[..., T], *args) -> T:
    return await sync_to_async(_written_by)(caller.key_id, write, *args)


class KeysAPIView(TenantAPIView):
    def handle_exception(self, exc: Exception) -> HttpResponse:
        if isinstance(exc, Refused):
            exc = bad_request("; ".join(exc.problems), param=exc.param, code="invalid_api_key_settings")
        return super().handle_exception(exc)


class KeysView(KeysAPIView):
    """GET: the tenant's keys. POST: a new key, with its secret shown this once."""

    http_method_names = ["get", "post"]

    @tenant_rate_limited(RATE_GROUP)
    async def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        caller = await authenticate(request, access=Access.KEYS_READ)
        after, limit = _list_query(request.GET.dict())
        return _json(await sync_to_async(_list)(caller.tenant.id, after, limit))

    @tenant_rate_limited(RATE_GROUP)
    async def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        caller = await authenticate(request, access=Access.KEYS)
        body, raw = await _write(caller, _create, caller.tenant.id, _json_object(request))
        response = _json({**body, "key": raw}, status=201)
        response["cache-control"] = "no-store"  # the secret must not be kept by anything on the way
        return response


class KeyView(KeysAPIView):
    """GET: one key. PATCH: change its settings. DELETE: revoke it."""

    http_method_names = ["get", "patch", "delete"]

    @tenant_rate_limited(RATE_GROUP)
    async def get(self, request: HttpRequest, key_id: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.KEYS_READ)
        return _json(await sync_to_async(_detail)(caller.tenant.id, key_id))

    @tenant_rate_limited(RATE_GROUP)
    async def patch(self, request: HttpRequest, key_id: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.KEYS)
        body = await _write(caller, _update, caller.tenant.id, key_id, _json_object(request))
        keys_forget([body["id"]])  # this process at once, with or without Redis (tenants/key_events.py)
        return _json(body)

    @tenant_rate_limited(RATE_GROUP)
    async def delete(self, request: HttpRequest, key_id: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.KEYS)
        body = await _write(caller, _revoke, caller.tenant.id, key_id)
        keys_forget([body["id"]])
        return _json(body)
