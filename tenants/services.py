"""Writes on tenants and their keys."""

from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .keys import key_display_parts, key_generate, key_hash, key_is_well_formed
from .models import ApiKey, Tenant


class InvalidKey(ValueError):
    pass


def api_key_create(
    *, tenant: Tenant, name: str = "default", raw_key: str | None = None, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never available again.

    `raw_key` is for keys that come from a configuration file; otherwise one is generated.
    """
    raw = raw_key or key_generate()
    if not key_is_well_formed(raw):
        raise InvalidKey("the key is malformed (characters, length or checksum)")
    prefix, last4 = key_display_parts(raw)
    key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        key_hash=key_hash(raw, pepper=settings.API_KEY_PEPPER),
        prefix=prefix,
        last4=last4,
        expires_at=expires_at,
    )
    return key, raw


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])
    return tenant
