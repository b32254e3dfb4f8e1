"""Writes on tenants, their keys, profiles, provider credentials, the platform policy and the
data kept for tenants (request logs, prompt templates).

Expected refusals raise `Refused` (or its subclass `InvalidKey`) with every problem listed;
nothing is written then. Writes to several rows are one transaction, locking rows in primary
key order (two bulk edits over overlapping tenants then queue instead of deadlocking).
"""

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from . import audit
from .crypto import encrypt, reencrypt
from .key_events import api_keys_changed
from .keys import key_display_parts, key_generate, key_hash, key_is_well_formed
from .models import (
    ApiKey,
    CatalogModel,
    PlatformPolicy,
    Project,
    PromptTemplate,
    Provider,
    ProviderCredential,
    RequestLog,
    StoredResponse,
    Tenant,
)
from .profiles import (
    POLICY_FIELDS,
    PROVIDERS,
    Problem,
    key_models_problems,
    model_aliases_problems,
    policy_problems,
    positive_int_problems,
    positive_money_problems,
)
from .selectors import model_scope, tenant_model_scope

LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
CREDENTIAL_SECRET_MIN = 8  # shorter, and `last4` would give away half of it


class Refused(ValueError):
    """An expected refusal: the input breaks a rule. `problems` says which, one line each;
    `param` is the field of the first one, when it names one (an API's 400 names it)."""

    def __init__(self, problems: Iterable[str | Problem]) -> None:
        problems = list(problems)
        self.problems = [p if isinstance(p, str) else f"{'.'.join(map(str, p.path))}: {p.message}" for p in problems]
        first = problems[0] if problems else None
        self.param = ".".join(map(str, first.path)) if isinstance(first, Problem) else None
        super().__init__("; ".join(self.problems))


class InvalidKey(Refused):
    def __init__(self, message: str) -> None:
        super().__init__([message])


# --- API keys ---------------------------------------------------------------------------------


def _limits_problems(limits: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for name, value in limits.items():
        if name not in LIMIT_FIELDS:
            raise TypeError(f"unknown limit {name!r}")
        problems += positive_int_problems(value, name)
    return problems


def _api_key_insert(
    *,
    tenant: Tenant,
    name: str,
    raw: str,
    expires_at: datetime | None,
    models: Collection[CatalogModel],
    limits: Mapping[str, int | None],
    monthly_budget: Decimal | None,
    daily_budget: Decimal | None = None,
    project: Project | None = None,
    is_admin: bool = False,
) -> ApiKey:
    prefix, last4 = key_display_parts(raw)
    key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        key_hash=key_hash(raw, pepper=settings.API_KEY_PEPPER),
        prefix=prefix,
        last4=last4,
        expires_at=expires_at,
        monthly_budget=monthly_budget,
        daily_budget=daily_budget,
        project=project,
        is_admin=is_admin,
        **limits,
    )
    if models:
        key.allowed_models.set(models)
    return key


def _project_problems(project: Project | None, tenant_id: int) -> list[Problem]:
    if project is not None and project.tenant_id != tenant_id:
        return [Problem(("project",), f"unknown project {json.dumps(project.name)}")]
    return []


def _budgets_problems(*, monthly_budget: Any, daily_budget: Any) -> list[Problem]:
    return positive_money_problems(monthly_budget, "monthly_budget") + positive_money_problems(
        daily_budget, "daily_budget"
    )


def api_key_create(
    *,
    tenant: Tenant,
    name: str = "default",
    raw_key: str | None = None,
    expires_at: datetime | None = None,
    allowed_models: Collection[CatalogModel] = (),
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent: int | None = None,
    monthly_budget: Decimal | None = None,
    daily_budget: Decimal | None = None,
    project: Project | None = None,
    is_admin: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never available again.

    `raw_key` is for keys that come from a configuration file; otherwise one is generated.
    `allowed_models` narrows the key to some of the tenant's models (empty: all of the
    tenant's); the limits and the budgets (USD per UTC month, per UTC day) are the key's own, on
    top of the tenant's and its project's (None: none of its own). `project`, one of the tenant's.
    `is_admin` makes a tenant admin key: it manages the tenant's keys (/v1/keys) and calls no
    model; only staff and `manage.py create_api_key --admin` make one, never the key API.
    """
    raw = raw_key or key_generate()
    if not key_is_well_formed(raw):
        raise InvalidKey("the key is malformed (characters, length or checksum)")
    limits = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "max_concurrent": max_concurrent,
    }
    problems = _limits_problems(limits) + _budgets_problems(monthly_budget=monthly_budget, daily_budget=daily_budget)
    problems += _project_problems(project, tenant.pk)
    if allowed_models:
        problems += key_models_problems({m.name for m in allowed_models}, scope=tenant_model_scope(tenant=tenant))
    if problems:
        raise Refused(problems)
    with audit.collecting():  # the key and its models: one audit entry
        key = _api_key_insert(
            tenant=tenant,
            name=name,
            raw=raw,
            expires_at=expires_at,
            models=allowed_models,
            limits=limits,
            monthly_budget=monthly_budget,
            daily_budget=daily_budget,
            project=project,
            is_admin=is_admin,
        )
    return key, raw


# What `api_key_update` may change: the key's own settings. Never its tenant, secret or kind
# (admin or not), nor `revoked_at` (`api_key_revoke`).
KEY_UPDATE_FIELDS = (
    "name",
    "project",
    *LIMIT_FIELDS,
    "monthly_budget",
    "daily_budget",
    "expires_at",
    "allowed_models",
)


def api_key_update(*, key: ApiKey, changes: Mapping[str, Any]) -> ApiKey:
    """Set some of a key's settings (`KEY_UPDATE_FIELDS`; None clears a limit, a budget, the
    project or the expiry; an empty `allowed_models` widens the key back to the tenant's models).

    Checked like a new key's, but for models the key already has (one may have left the tenant
    since: the key simply cannot use it, see `api_key_set_models`). A revoked key stays as it is:
    Refused. Every gateway process forgets the key once this commits (tenants/key_events.py).
    """
    unknown = set(changes) - set(KEY_UPDATE_FIELDS)
    if unknown:
        raise TypeError(f"unknown API key field(s): {', '.join(sorted(unknown))}")
    with transaction.atomic():
        # Locked: a revocation committed meanwhile is seen, and never undone by this write.
        locked = ApiKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
        if locked.revoked_at is not None:
            raise InvalidKey(f"{locked.display} is revoked; a revoked key cannot be changed")
        limits = {name: changes[name] for name in LIMIT_FIELDS if name in changes}
        problems = _limits_problems(limits)
        problems += _budgets_problems(
            monthly_budget=changes.get("monthly_budget"), daily_budget=changes.get("daily_budget")
        )
        problems += _project_problems(changes.get("project"), locked.tenant_id)
        models = changes.get("allowed_models")
        if models is not None:
            added = {m.name for m in models} - set(locked.allowed_models.values_list("name", flat=True))
            if added:
                problems += key_models_problems(added, scope=tenant_model_scope(tenant=locked.tenant))
        if problems:
            raise Refused(problems)
        fields = [name for name in changes if name != "allowed_models"]
        for name in fields:
            setattr(locked, name, changes[name])
        if fields:
            locked.save(update_fields=fields)
        if models is not None:
            locked.allowed_models.set(models)
        api_keys_changed(key_ids=[locked.pk])
    return locked


def api_key_set_models(*, key: ApiKey, models: Collection[CatalogModel]) -> ApiKey:
    """Narrow (or, with no models, widen back to the tenant's) the models a key may use.

    Models added must be the tenant's; models the key keeps are not checked again (one may
    have left the tenant since: the key simply cannot use it, see selectors.api_key_models).
    """
    added = {m.name for m in models} - set(key.allowed_models.values_list("name", flat=True))
    if added:
        problems = key_models_problems(added, scope=tenant_model_scope(tenant=key.tenant))
        if problems:
            raise Refused(problems)
    key.allowed_models.set(models)
    api_keys_changed(key_ids=[key.pk])
    return key


def api_key_rotate(*, key: ApiKey, grace: timedelta) -> tuple[ApiKey, str]:
    """A new key with the same tenant, name, project, kind, model scope, limits, budgets and (future) expiry; the old
    key keeps working for `grace` more (0: ends now), never longer than it would have anyway.

    Only an active key can be rotated: a revoked key stays dead, an expired one gets a new key
    through "create". The new key's secret is returned once, like `api_key_create`.
    """
    if grace < timedelta(0):
        raise Refused(["the grace period must not be negative"])
    with audit.collecting():
        # Locked: two staff members rotating the same key at once get two new keys, but the
        # old one's end is computed from the committed row, never from a stale copy.
        old = ApiKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
        now = timezone.now()
        status = old.status_at(now)
        if status != "active":
            raise InvalidKey(f"{old.display} is {status}; only an active key can be rotated")
        limits = {name: getattr(old, name) for name in LIMIT_FIELDS}
        new = _api_key_insert(
            tenant=old.tenant,
            name=old.name,
            raw=(raw := key_generate()),
            expires_at=old.expires_at,
            models=list(old.allowed_models.all()),
            limits=limits,
            # The new key is a new row, so its month's spend starts from its own (empty) records.
            monthly_budget=old.monthly_budget,
            daily_budget=old.daily_budget,
            project=old.project,
            is_admin=old.is_admin,
        )
        ends = now + grace
        if old.expires_at is None or ends < old.expires_at:
            old.expires_at = ends
            old.save(update_fields=["expires_at"])
            api_keys_changed(key_ids=[old.pk])
    key.expires_at = old.expires_at
    return new, raw


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """End the key now, for good. Every gateway process forgets it as soon as this commits
    (tenants/key_events.py): its next request is refused. Revoking a revoked key changes nothing."""
    if key.revoked_at is None:
        with transaction.atomic():
            # Locked: two revocations at once keep the first one's time.
            locked = ApiKey.objects.select_for_update().get(pk=key.pk)
            if locked.revoked_at is None:
                locked.revoked_at = timezone.now()
                locked.save(update_fields=["revoked_at"])
                api_keys_changed(key_ids=[key.pk])
        key.revoked_at = locked.revoked_at
    return key


# --- tenants ----------------------------------------------------------------------------------


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])
    return tenant


def _locked(tenants: Iterable[Tenant]) -> list[Tenant]:
    ids = sorted({t.pk for t in tenants})
    return list(Tenant.objects.select_for_update().filter(pk__in=ids).order_by("pk"))


def tenants_set_limits(*, tenants: Iterable[Tenant], limits: Mapping[str, int | None]) -> int:
    """Set the given limits (None: clear) on every tenant at once; limits left out are kept.

    One UPDATE: all tenants or none. Returns the number of tenants updated.
    """
    problems = _limits_problems(limits)
    if problems:
        raise Refused(problems)
    if not limits:
        return 0
    ids = sorted({t.pk for t in tenants})
    return audit.queryset_update(Tenant.objects.filter(pk__in=ids), **limits, updated_at=timezone.now())


def tenants_set_models(
    *,
    tenants: Iterable[Tenant],
    enable: Collection[CatalogModel] = (),
    disable: Collection[CatalogModel] = (),
) -> list[str]:
    """Add models to and remove models from the tenants' allowed models, all or nothing.

    Refused whole (Refused, listing every problem) when for any tenant an enabled model is
    inactive or of a provider the tenant excludes, an alias of the tenant would point at a
    disabled model, or disabling would leave an empty list (which means "every model").
    A tenant allowed every model keeps that when models are enabled (it has them already);
    disabling a model turns its "every model" into the explicit list of the others.
    Returns one line per tenant changed.
    """
    enable_names = {m.name for m in enable}
    disable_names = {m.name for m in disable}
    both = sorted(enable_names & disable_names)
    if both:
        raise Refused([f"{', '.join(both)}: cannot be enabled and disabled at once"])
    with audit.collecting():  # a tenant's models replaced: one entry, not a removal and an addition
        locked = _locked(tenants)
        scope = model_scope()
        problems: list[str] = []
        plans: list[tuple[Tenant, set[str], set[str]]] = []
        current_by_tenant: dict[int, set[str]] = {}
        for tenant_id, name in Tenant.allowed_models.through.objects.filter(
            tenant_id__in=[t.pk for t in locked]
        ).values_list("tenant_id", "catalogmodel__name"):
            current_by_tenant.setdefault(tenant_id, set()).add(name)
        for tenant in locked:
            current = current_by_tenant.get(tenant.pk, set())
            providers = set(tenant.allowed_providers or [])
            for model in sorted(enable, key=lambda m: m.name):
                if not model.active:
                    problems.append(f"{tenant.slug}: model {model.name} is not active in the catalog")
                elif providers and model.provider not in providers:
                    problems.append(
                        f"{tenant.slug}: model {model.name} is served by {model.provider}, "
                        "not among the tenant's providers"
                    )
            if current:
                wanted = (current | enable_names) - disable_names
            elif disable_names:
                every = {name for name in scope.active if not providers or scope.catalog[name] in providers}
                wanted = every - disable_names
            else:
                wanted = current  # every model already, the enabled ones included
            if not wanted and (current or disable_names):
                problems.append(
                    f"{tenant.slug}: disabling would leave no model, and an empty list means every model "
                    "(suspend the tenant instead)"
                )
                continue
            # Only aliases this change breaks: one broken before (a catalog edit) is not ours to refuse.
            tenant_scope = dataclasses.replace(scope, models=wanted, providers=providers)
            before = dataclasses.replace(scope, models=current, providers=providers)
            aliases = tenant.model_aliases or {}
            broken_before = {p.path[1] for p in model_aliases_problems(aliases, scope=before)}
            for problem in model_aliases_problems(aliases, scope=tenant_scope):
                if problem.path[1] not in broken_before:
                    problems.append(f"{tenant.slug}: alias {problem.path[1]}: {problem.message}")
            if wanted != current:
                plans.append((tenant, current, wanted))
        if problems:
            raise Refused(problems)
        by_name = {m.name: m for m in CatalogModel.objects.filter(name__in=set().union(*(w for _, _, w in plans)))}
        changes = []
        for tenant, current, wanted in plans:
            tenant.allowed_models.set([by_name[name] for name in sorted(wanted)])
            Tenant.objects.filter(pk=tenant.pk).update(updated_at=timezone.now())
            if current:
                diff = [f"+{n}" for n in sorted(wanted - current)] + [f"-{n}" for n in sorted(current - wanted)]
                changes.append(f"{tenant.slug}: {' '.join(diff)}")
            else:
                changes.append(
                    f"{tenant.slug}: every model → {len(wanted)} listed (without {', '.join(sorted(disable_names))})"
                )
    return changes


# --- provider credentials ---------------------------------------------------------------------


def credential_set(*, tenant: Tenant | None, provider: str, secret: str, base_url: str = "") -> ProviderCredential:
    """Store a provider key (encrypted) as the active one of this tenant (None: the platform's)
    and provider, deactivating the previous one. Staff only: `base_url` is where we connect.

    Two concurrent calls for the same tenant and provider: the loser fails on the unique
    constraint of active credentials and writes nothing.
    """
    secret = secret.strip()  # a pasted key brings a newline along
    problems = []
    if provider not in PROVIDERS:
        problems.append(f"unknown provider {provider!r} (expected one of: {', '.join(PROVIDERS)})")
    if len(secret) < CREDENTIAL_SECRET_MIN or any(c.isspace() for c in secret) or not secret.isprintable():
        problems.append(f"the secret must be at least {CREDENTIAL_SECRET_MIN} printable characters without spaces")
    if base_url:
        try:
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError:
            problems.append("base_url must be an http(s) URL")
    if problems:
        raise Refused(problems)
    with transaction.atomic():
        audit.queryset_update(
            ProviderCredential.objects.filter(tenant=tenant, provider=provider, active=True), active=False
        )
        return ProviderCredential.objects.create(
            tenant=tenant,
            provider=Provider(provider).value,
            encrypted_secret=encrypt(secret),
            last4=secret[-4:],
            base_url=base_url,
        )


def credential_deactivate(*, credential: ProviderCredential) -> ProviderCredential:
    if credential.active:
        credential.active = False
        credential.save(update_fields=["active"])
    return credential


def credentials_reencrypt() -> int:
    """Re-encrypt every credential (active or not) under the newest FIELD_ENCRYPTION_KEYS key,
    so that older keys can then be removed. All or nothing; returns the number of rows.

    Refused (nothing written) when a credential cannot be decrypted with any configured key.
    """
    with transaction.atomic():
        rows = list(ProviderCredential.objects.select_for_update().order_by("pk"))
        before = {row.pk: audit.snapshot(row) for row in rows}
        undecryptable = []
        for row in rows:
            try:
                row.encrypted_secret = reencrypt(row.encrypted_secret)
            except InvalidToken:
                undecryptable.append(row)
        if undecryptable:
            raise Refused(
                [f"credential {row.pk} ({row}) cannot be decrypted with any configured key" for row in undecryptable]
            )
        ProviderCredential.objects.bulk_update(rows, ["encrypted_secret"], batch_size=500)
        for row in rows:
            audit.record_updated(row, before=before[row.pk])  # shown as "[secret]" → "[new secret]"
    return len(rows)


# --- the platform policy ----------------------------------------------------------------------


def platform_policy_update(*, changes: Mapping[str, Any]) -> PlatformPolicy:
    """Set some fields of the platform policy (the one row, created when missing).

    Lists are sets: stored sorted. Refused when a name is unknown (model or provider).
    """
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise TypeError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
    with transaction.atomic():
        policy, _ = PlatformPolicy.objects.select_for_update().get_or_create(pk=1)
        values = {name: getattr(policy, name) for name in POLICY_FIELDS}
        values.update(changes)
        catalog = set(CatalogModel.objects.values_list("name", flat=True))
        problems = policy_problems(catalog=catalog, **values)
        if problems:
            raise Refused(problems)
        for name in changes:
            value = values[name]
            setattr(policy, name, sorted(value) if isinstance(value, list | tuple) else value)
        if changes:
            policy.save(update_fields=[*changes, "updated_at"])
    return policy


# --- data kept for tenants --------------------------------------------------------------------


def tenant_data_purge(*, tenant: Tenant) -> dict[str, int]:
    """Delete every request log (prompts and responses), prompt template and stored Responses API
    response of this tenant.

    Billing (usage records, invoices) is kept: nothing there refers to these rows.
    """
    with transaction.atomic():
        logs, _ = RequestLog.objects.filter(tenant=tenant).delete()
        templates, _ = PromptTemplate.objects.filter(tenant=tenant).delete()
        responses, _ = StoredResponse.objects.filter(tenant=tenant).delete()
    return {"request_logs": logs, "prompt_templates": templates, "stored_responses": responses}


def request_logs_purge_expired(*, now: datetime) -> int:
    """Delete request logs older than their tenant's `log_retention_days`; the number deleted.

    One DELETE per tenant that has logs (on the tenant/created_at index), each committed on its
    own: a long purge holds no lock on other tenants' rows, and a failure keeps what is done.
    """
    deleted = 0
    tenants = (
        Tenant.objects.filter(Exists(RequestLog.objects.filter(tenant_id=OuterRef("pk"))))
        .values_list("pk", "log_retention_days")
        .order_by("pk")
    )
    for tenant_id, days in tenants:
        count, _ = RequestLog.objects.filter(tenant_id=tenant_id, created_at__lt=now - timedelta(days=days)).delete()
        deleted += count
    return deleted


def stored_responses_purge_expired(*, now: datetime) -> int:
    """Delete stored Responses API responses past their `expires_at` (the tenant's
    `log_retention_days` after they were made); the number deleted. Idempotent."""
    count, _ = StoredResponse.objects.filter(expires_at__lt=now).delete()
    return count


# --- stored responses (POST /v1/responses) ----------------------------------------------------


def stored_response_save(
    *,
    tenant_id: int,
    response_id: str,
    api_key_id: int | None,
    model: str,
    deployment_id: int | None,
    created_at: datetime,
    kept_by_gateway: bool,
    previous_response_id: str = "",
    input_items: list | None = None,
    response: dict | None = None,
) -> StoredResponse:
    """Record that `response_id` is this tenant's (and where it is held), kept for the tenant's
    `log_retention_days`. Saving the same id again (a retried write) updates the row."""
    days = Tenant.objects.filter(pk=tenant_id).values_list("log_retention_days", flat=True).first() or 30
    input_items, response = _without_nul(input_items), _without_nul(response)
    stored, _ = StoredResponse.objects.update_or_create(
        response_id=response_id,
        tenant_id=tenant_id,
        defaults={
            "api_key_id": api_key_id,
            "model": model[:100],
            "deployment_id": deployment_id,
            "created_at": created_at,
            "expires_at": created_at + timedelta(days=days),
            "kept_by_gateway": kept_by_gateway,
            "previous_response_id": previous_response_id or "",
            "input_items": input_items,
            "response": response,
        },
    )
    return stored


def stored_response_delete(*, tenant_id: int, response_id: str) -> bool:
    """Forget one of this tenant's responses; False when it has none of that id."""
    deleted, _ = StoredResponse.objects.filter(tenant_id=tenant_id, response_id=response_id).delete()
    return deleted > 0


def _without_nul(value):
    """PostgreSQL's jsonb refuses U+0000, which JSON allows: the stored text keeps the rest."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
