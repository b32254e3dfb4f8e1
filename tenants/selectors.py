"""Reads on tenants: the one place that decides what a tenant may see."""

from collections.abc import Collection

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .crypto import decrypt
from .keys import key_hash
from .models import (
    ApiKey,
    CatalogModel,
    Deployment,
    PlatformPolicy,
    Project,
    ProviderCredential,
    StoredResponse,
    Tenant,
)
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


def tenant_api_keys(*, tenant_id: int, after: int | None = None, limit: int = 100) -> list[ApiKey]:
    """This tenant's keys (revoked and expired ones too), oldest first, after the key id `after`,
    with their project and models: two queries, whatever their number."""
    qs = ApiKey.objects.filter(tenant_id=tenant_id).select_related("project").prefetch_related("allowed_models")
    if after is not None:
        qs = qs.filter(pk__gt=after)
    return list(qs.order_by("pk")[:limit])


def tenant_api_key(*, tenant_id: int, key_id: int) -> ApiKey | None:
    """This tenant's key of that id; None for another tenant's, which for this tenant does not exist."""
    return (
        ApiKey.objects.filter(tenant_id=tenant_id, pk=key_id)
        .select_related("tenant", "project")
        .prefetch_related("allowed_models")
        .first()
    )


def tenant_project(*, tenant_id: int, name: str) -> Project | None:
    """This tenant's project of that name; another tenant's project of the same name is not it."""
    return Project.objects.filter(tenant_id=tenant_id, name=name).first()


def catalog_models_named(*, names: Collection[str]) -> list[CatalogModel]:
    """The catalog models of these names (any that does not exist is simply absent)."""
    return list(CatalogModel.objects.filter(name__in=set(names)).order_by("name"))


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
    if "\x00" in response_id:
        return None  # no id holds one, and PostgreSQL refuses NUL in a query's text
    return (
        StoredResponse.objects.select_related("deployment")
        .filter(tenant_id=tenant_id, response_id=response_id, expires_at__gt=timezone.now())
        .first()
    )


def stored_response_chain(*, tenant_id: int, response_id: str) -> list[StoredResponse] | None:
    """The conversation that ends with `response_id`, oldest first, following `previous_response_id`
    within this tenant only; None when a link is missing (deleted, expired, another tenant's) or
    the chain is longer than RESPONSE_CHAIN_MAX. One query (a recursive CTE), whatever its length."""
    if "\x00" in response_id:
        return None
    table = StoredResponse._meta.db_table
    now = timezone.now()
    rows = list(
        StoredResponse.objects.raw(
            f"""
            WITH RECURSIVE chain AS (
                SELECT id, previous_response_id, 1 AS depth FROM {table}
                WHERE tenant_id = %s AND response_id = %s AND expires_at > %s
                UNION ALL
                SELECT s.id, s.previous_response_id, c.depth + 1 FROM {table} s
                JOIN chain c ON s.response_id = c.previous_response_id
                WHERE s.tenant_id = %s AND s.expires_at > %s AND c.depth <= %s
            )
            SELECT r.*, chain.depth AS depth FROM {table} r JOIN chain ON chain.id = r.id
            ORDER BY chain.depth DESC
            """,  # noqa: S608 (the table name is the model's own; every value is a parameter)
            [tenant_id, response_id, now, tenant_id, now, RESPONSE_CHAIN_MAX],
        )
    )
    if not rows or len(rows) > RESPONSE_CHAIN_MAX or rows[0].previous_response_id:
        return None  # missing, too long, or the oldest one continues a response that is gone
    return rows
