"""Reads on tenants: the one place that decides what a tenant may see."""

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .keys import key_hash
from .models import ApiKey, CatalogModel, Deployment, Tenant


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
