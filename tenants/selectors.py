"""Reads on tenants: the one place that decides what a tenant may see."""

from collections.abc import Collection

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .crypto import decrypt
from .keys import key_hash
from .models import ApiKey, CatalogModel, Deployment, PlatformPolicy, ProviderCredential, StoredResponse, Tenant
from .profiles import ModelScope


def api_key_for_secret(*, raw_key: str) -> ApiKey | None:
    """The usable key with this secret, or None. Same answer for unknown, revoked and expired."""
    now = timezone.now()
    return (
        ApiKey.objects.select_related("tenant")
        .filter(key_hash=key_hash(raw_key, pepper=settings.API_KEY_PEPPER), revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )


def tenant_models(*, tenant: Tenant) -> QuerySet[CatalogModel]:
    """Active catalog models this tenant may call, with their active deployments."""
    qs = CatalogModel.objects.filter(active=True)
    if tenant.allowed_models.exists():
        qs = qs.filter(tenants=tenant)
    if tenant.allowed_providers:
        qs = qs.filter(provider__in=tenant.allowed_providers)
    return qs.order_by("name")


def model_deployments(*, model: CatalogModel, region: str = "") -> list[Deployment]:
    qs = model.deployments.filter(active=True)
    if region:
        qs = qs.filter(region=region)
    return list(qs.order_by("priority", "id"))


def api_key_models(*, key: ApiKey) -> QuerySet[CatalogModel]:
    """Active catalog models this key may call: its tenant's, narrowed by the key's own scope.

    A key's scope is never wider than its tenant: a model removed from the tenant is gone for
    every key of the tenant, even one that still lists it.
    """
    qs = tenant_models(tenant=key.tenant)
    if key.allowed_models.exists():
        qs = qs.filter(pk__in=key.allowed_models.values("pk"))
    return qs


def model_scope(*, models: Collection[str] = (), providers: Collection[str] = ()) -> ModelScope:
    """The catalog as validation needs it (tenants.profiles), with the given restrictions."""
    rows = CatalogModel.objects.values_list("name", "provider", "active")
    catalog = {}
    active = set()
    for name, provider, is_active in rows:
        catalog[name] = provider
        if is_active:
            active.add(name)
    return ModelScope(
        catalog=catalog, active=frozenset(active), models=frozenset(models), providers=frozenset(providers)
    )


def tenant_model_scope(*, tenant: Tenant) -> ModelScope:
    """What this tenant may use now, for validating a key's scope or an alias."""
    return model_scope(
        models=set(tenant.allowed_models.values_list("name", flat=True)),
        providers=set(tenant.allowed_providers or []),
    )


def credential_secret(*, tenant_id: int | None, provider: str) -> tuple[str, str] | None:
    """(secret, base_url) of the active credential of this tenant (None: the platform's own) for
    this provider, decrypted; None when there is none. No fallback from a tenant to the platform:
    the caller decides whether a tenant without its own key may use the platform's.
    """
    row = (
        ProviderCredential.objects.filter(tenant_id=tenant_id, provider=provider, active=True)
        .values_list("encrypted_secret", "base_url")
        .first()
    )
    if row is None:
        return None
    return decrypt(row[0]), row[1]


def platform_policy() -> PlatformPolicy:
    """The platform policy; an unsaved default when staff never set one (reading writes nothing)."""
    return PlatformPolicy.objects.filter(pk=1).first() or PlatformPolicy()


# A conversation longer than this many stored responses is refused rather than walked.
RESPONSE_CHAIN_MAX = 500


def stored_response_get(*, tenant_id: int, response_id: str) -> StoredResponse | None:
    """This tenant's stored response of that id, with its deployment; None for another tenant's
    (which, for this tenant, does not exist), an expired or an unknown one."""
    return (
        StoredResponse.objects.select_related("deployment")
        .filter(tenant_id=tenant_id, response_id=response_id, expires_at__gt=timezone.now())
        .first()
    )


def stored_response_chain(*, tenant_id: int, response_id: str) -> list[StoredResponse] | None:
    """The conversation that ends with `response_id`, oldest first, following `previous_response_id`
    within this tenant only; None when a link is missing (deleted, expired, another tenant's)."""
    chain: list[StoredResponse] = []
    next_id = response_id
    while next_id:
        if len(chain) >= RESPONSE_CHAIN_MAX:
            return None
        row = stored_response_get(tenant_id=tenant_id, response_id=next_id)
        if row is None:
            return None
        chain.append(row)
        next_id = row.previous_response_id
    chain.reverse()
    return chain
