"""What the hot path needs from the database, as small immutable snapshots cached in process.

A request must not pay for several queries, so keys, tenants and the catalog are read once
and kept for `GATEWAY_AUTH_CACHE_SECONDS` (4 s by default). That bound is the promise: a
revoked key, a suspended tenant or a new price reaches every gateway process within it. A key
changed or revoked (key API, admin, services) is sooner: it is announced to every process at once
over Redis (tenants/key_events.py, gateway/key_events.py) and forgotten there (`keys_forget`).
Each loader runs in one `db_call` hop, so a cache miss costs one thread switch, and one
process reads a missing entry once at a time (`_shared`): the requests that miss it meanwhile wait
for that read.
"""

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing.aggregates import MoneySum
from billing.models import ModelPrice, Subscription, UsageRecord
from billing.pricing import Price
from billing.selectors import month_to_date_spend_by_key
from tenants.crypto import decrypt
from tenants.keys import key_hash, key_is_well_formed
from tenants.models import ApiKey, CatalogModel, Deployment, PlatformPolicy, ProviderCredential, Tenant

from .db import db_call
from .lru import LRU


@dataclass(frozen=True, slots=True)
class TenantView:
    id: int
    slug: str
    active: bool
    region: str
    allowed_providers: frozenset[str]
    allowed_model_ids: frozenset[int]  # empty: every active catalog model
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent: int | None
    model_aliases: dict[str, str]
    default_params: dict
    max_tokens_cap: int | None
    log_requests: bool
    monthly_budget: Decimal | None  # the subscription's budget, or its plan's default; None: no budget
    # provider -> (secret, base_url) of the tenant's own account (bring your own key)
    credentials: dict[str, tuple[str, str]]
    response_cache_seconds: int | None = None  # None: no response cache
    end_user_limits: "EndUserLimits | None" = None  # each end user's limits; None: none
    hash_end_user_ids: bool = False  # record (and count) a keyed hash of the end user's id

    def may_use(self, model: "ModelView") -> bool:
        if self.allowed_providers and model.provider not in self.allowed_providers:
            return False
        return not self.allowed_model_ids or model.id in self.allowed_model_ids


@dataclass(frozen=True, slots=True)
class KeyView:
    id: int
    tenant_id: int
    allowed_model_ids: frozenset[int]  # empty: whatever the tenant may use
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent: int | None
    monthly_budget: Decimal | None = None  # the key's own, on top of the tenant's; None: none of its own
    is_admin: bool = False  # a tenant admin key: manages the tenant's keys (/v1/keys), calls no model
    daily_budget: Decimal | None = None  # per UTC day, the key's own; None: none
    project: "ProjectView | None" = None


@dataclass(frozen=True, slots=True)
class ProjectView:
    """A key's project (tenants.Project): its name and limits, loaded with the key."""

    id: int
    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    monthly_budget: Decimal | None = None

    @property
    def limited(self) -> bool:
        return any(
            v is not None
            for v in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent, self.monthly_budget)
        )


@dataclass(frozen=True, slots=True)
class EndUserLimits:
    """Tenant.end_user_limits, parsed (validated when saved: tenants.profiles.end_user_limits_clean)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    monthly_budget: Decimal | None = None
    daily_budget: Decimal | None = None

    @classmethod
    def parse(cls, raw: dict | None) -> "EndUserLimits | None":
        if not raw:
            return None

        def money(name: str) -> Decimal | None:
            value = raw.get(name)
            return None if value in (None, "") else Decimal(str(value))

        limits = cls(
            requests_per_minute=raw.get("requests_per_minute"),
            tokens_per_minute=raw.get("tokens_per_minute"),
            max_concurrent=raw.get("max_concurrent"),
            monthly_budget=money("monthly_budget"),
            daily_budget=money("daily_budget"),
        )
        return None if limits == cls() else limits


@dataclass(frozen=True, slots=True)
class Caller:
    key: KeyView
    tenant: TenantView

    @property
    def key_id(self) -> int:
        return self.key.id

    def may_use(self, model: "ModelView") -> bool:
        if self.key.allowed_model_ids and model.id not in self.key.allowed_model_ids:
            return False
        return self.tenant.may_use(model)


@dataclass(frozen=True, slots=True)
class PolicyView:
    blocked_models: frozenset[str]
    blocked_providers: frozenset[str]
    killed_providers: frozenset[str]
    max_tokens_cap: int | None
    maintenance_message: str


@dataclass(frozen=True, slots=True)
class DeploymentView:
    id: int
    provider: str
    upstream: str
    region: str
    base_url: str
    priority: int = 0
    weight: int = 1  # for `weighted`
    requests_per_minute: int | None = None  # the provider account's quota (None: none)
    tokens_per_minute: int | None = None
    timeout_seconds: float | None = None  # None: GATEWAY_UPSTREAM_TIMEOUT
    # The circuit breaker's own settings (None: GATEWAY_BREAKER_FAILURES, _WINDOW_SECONDS, _COOLDOWN_SECONDS).
    breaker_failures: int | None = None
    breaker_window_seconds: float | None = None
    breaker_cooldown_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class PriceView:
    id: int
    effective_from: datetime
    price: Price


@dataclass(frozen=True, slots=True)
class ModelView:
    id: int
    name: str
    provider: str
    deployments: tuple[DeploymentView, ...]
    prices: tuple[PriceView, ...]  # newest first
    kind: str = "chat"  # CatalogModel.Kind: "chat" or "embedding"
    created_at: datetime | None = None  # when the catalog entry was made: /v1/models' `created`
    context_window: int | None = None  # input tokens, when the catalog says
    routing: str = "priority"  # priority | weighted | least_busy | latency | cost
    fallbacks: tuple[str, ...] = ()  # catalog model names, in order
    affinity: str = ""  # "" or "prefix"

    def price_at(self, at: datetime) -> PriceView | None:
        for price in self.prices:
            if price.effective_from <= at:
                return price
        return None

    def deployments_in(self, region: str) -> list[DeploymentView]:
        return [d for d in self.deployments if not region or d.region == region]


class _TTLCache:
    """A bounded LRU whose entries also expire (gateway/lru.py). Within a process a missing entry
    is read once at a time (`_shared`); processes racing each other may both read, harmlessly."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._entries = LRU(size)

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry

    def put(self, key, value, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + ttl, value)

    def __len__(self) -> int:
        return len(self._entries)

    def drop(self, key) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def _key_cache_size() -> int:
    return settings.GATEWAY_KEY_CACHE_SIZE


def _tenant_cache_size() -> int:
    return settings.GATEWAY_TENANT_CACHE_SIZE


# Keys by digest (unknown digests too), tenants by id: each at most its setting's number of
# entries, the least recently used dropped first, so memory does not grow with the key count.
_keys = _TTLCache(_key_cache_size)
# Which digest each cached key is under, so that a key changed elsewhere (announced by its id,
# gateway/key_events.py) can be forgotten; and a count of those announcements, so that a look-up
# that was reading the database while one arrived does not cache what it read (maybe the old row).
# Bounded like _keys: a key whose digest was dropped here is dropped from _keys only by expiry.
_key_digests = LRU(_key_cache_size)
_key_evictions = 0
_tenants = _TTLCache(_tenant_cache_size)
_catalog = _TTLCache(lambda: 2)  # "all" and "policy"


def _ttl() -> float:
    return settings.GATEWAY_AUTH_CACHE_SECONDS


def clear_caches() -> None:
    for cache in (_keys, _tenants, _catalog):
        cache.clear()
    _key_digests.clear()
    _loads.clear()  # reads under way finish, but no request joins them any more


# The reads under way in this process, by what they read: ("key", digest, announcements seen),
# ("tenant", id), ("catalog",), ("policy",). An entry expires for every request at once, so with
# 50 requests in flight each would otherwise read the database itself: 50 reads of the key, the
# tenant and the catalog every GATEWAY_AUTH_CACHE_SECONDS, a quarter of a busy gateway's CPU.
_loads: dict[tuple, asyncio.Task] = {}


async def _shared(name: tuple, fetch: Callable, *args):
    """`fetch(*args)`, run once for every request that needs `name` while it runs. It runs on a
    task of its own: a request that gives up (a hang-up) does not cancel the others' read."""
    loop = asyncio.get_running_loop()
    task = _loads.get(name)
    if task is None or task.get_loop() is not loop:
        task = _loads[name] = loop.create_task(fetch(*args))
        task.add_done_callback(lambda done: _loaded(name, done))
    return await asyncio.shield(task)


def _loaded(name: tuple, task: asyncio.Task) -> None:
    if _loads.get(name) is task:
        del _loads[name]
    if not task.cancelled():
        task.exception()  # retrieved: every waiter has it (or they all gave up)


def keys_forget(key_ids: Iterable[int] | None = None) -> None:
    """Forget these keys (None: every key) in this process: their next use reads the database.
    Called when a key was changed or revoked (tenants/key_events.py, gateway/key_events.py)."""
    global _key_evictions
    _key_evictions += 1
    if key_ids is None:
        _keys.clear()
        _key_digests.clear()
        return
    for key_id in key_ids:
        digest = _key_digests.pop(key_id, None)
        if digest is not None:
            _keys.drop(digest)


def _load_key(digest: str) -> tuple[KeyView, float] | None:
    now = timezone.now()
    key = (
        ApiKey.objects.select_related("project")
        .filter(key_hash=digest, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if key is None:
        return None
    view = KeyView(
        id=key.id,
        tenant_id=key.tenant_id,
        allowed_model_ids=frozenset(key.allowed_models.values_list("id", flat=True)),
        requests_per_minute=key.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute,
        max_concurrent=key.max_concurrent,
        monthly_budget=key.monthly_budget,
        is_admin=key.is_admin,
        daily_budget=key.daily_budget,
        project=None
        if key.project is None
        else ProjectView(
            id=key.project.id,
            name=key.project.name,
            requests_per_minute=key.project.requests_per_minute,
            tokens_per_minute=key.project.tokens_per_minute,
            max_concurrent=key.project.max_concurrent,
            monthly_budget=key.project.monthly_budget,
        ),
    )
    # An expiring key is cached no longer than it lives.
    ttl = _ttl() if key.expires_at is None else min(_ttl(), (key.expires_at - now).total_seconds())
    return view, ttl


def _load_tenant(tenant_id: int) -> TenantView | None:
    tenant = Tenant.objects.filter(id=tenant_id).first()
    if tenant is None:
        return None
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    credentials = {
        c.provider: (decrypt(c.encrypted_secret), c.base_url)
        for c in ProviderCredential.objects.filter(tenant_id=tenant_id, active=True)
    }
    return TenantView(
        id=tenant.id,
        slug=tenant.slug,
        active=tenant.is_active,
        region=tenant.region,
        allowed_providers=frozenset(tenant.allowed_providers or ()),
        allowed_model_ids=frozenset(tenant.allowed_models.values_list("id", flat=True)),
        requests_per_minute=tenant.requests_per_minute,
        tokens_per_minute=tenant.tokens_per_minute,
        max_concurrent=tenant.max_concurrent,
        model_aliases=dict(tenant.model_aliases or {}),
        default_params=dict(tenant.default_params or {}),
        max_tokens_cap=tenant.max_tokens_cap,
        log_requests=tenant.log_requests,
        response_cache_seconds=tenant.response_cache_seconds,
        monthly_budget=subscription.effective_budget if subscription else None,
        credentials=credentials,
        end_user_limits=EndUserLimits.parse(tenant.end_user_limits),
        hash_end_user_ids=tenant.hash_end_user_ids,
    )


def _load_policy() -> PolicyView:
    policy = PlatformPolicy.objects.filter(pk=1).first() or PlatformPolicy()
    return PolicyView(
        blocked_models=frozenset(policy.blocked_models or ()),
        blocked_providers=frozenset(policy.blocked_providers or ()),
        killed_providers=frozenset(policy.killed_providers or ()),
        max_tokens_cap=policy.max_tokens_cap,
        maintenance_message=policy.maintenance_message,
    )


def _load_catalog() -> dict[str, ModelView]:
    deployments: dict[int, list[DeploymentView]] = {}
    for d in Deployment.objects.filter(active=True).order_by("priority", "id"):
        deployments.setdefault(d.model_id, []).append(
            DeploymentView(
                id=d.id,
                provider=d.provider,
                upstream=d.upstream,
                region=d.region,
                base_url=d.base_url,
                priority=d.priority,
                weight=d.weight,
                requests_per_minute=d.requests_per_minute,
                tokens_per_minute=d.tokens_per_minute,
                timeout_seconds=d.timeout_seconds,
                breaker_failures=d.breaker_failures,
                breaker_window_seconds=d.breaker_window_seconds,
                breaker_cooldown_seconds=d.breaker_cooldown_seconds,
            )
        )
    prices: dict[int, list[PriceView]] = {}
    for p in ModelPrice.objects.prefetch_related("tiers").order_by("-effective_from"):
        prices.setdefault(p.model_id, []).append(
            PriceView(
                id=p.id,
                effective_from=p.effective_from,
                price=p.as_price(),
            )
        )
    return {
        m.name: ModelView(
            id=m.id,
            name=m.name,
            provider=m.provider,
            deployments=tuple(deployments.get(m.id, ())),
            prices=tuple(prices.get(m.id, ())),
            kind=m.kind,
            created_at=m.created_at,
            context_window=m.context_window,
            routing=m.routing,
            fallbacks=tuple(m.fallbacks or ()),
            affinity=m.affinity,
        )
        for m in CatalogModel.objects.filter(active=True)
    }


def _month_to_date(tenant_id: int) -> Decimal:
    now = timezone.now()
    since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    total = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=since).aggregate(total=MoneySum("cost"))[
        "total"
    ]
    return total or Decimal(0)


async def month_to_date(tenant_id: int) -> Decimal:
    """The tenant's spend this (UTC) month from the database: seeds the budget counter."""
    return await db_call(_month_to_date, tenant_id)


def _key_month_to_date(tenant_id: int, key_id: int) -> Decimal:
    return month_to_date_spend_by_key(tenant_id=tenant_id, key_ids=[key_id], now=timezone.now())[key_id]


async def key_month_to_date(tenant_id: int, key_id: int) -> Decimal:
    """A key's spend this (UTC) month from the database (its own usage records): seeds its budget counter."""
    return await db_call(_key_month_to_date, tenant_id, key_id)


def _spend_since(tenant_id: int, since: datetime, **where) -> Decimal:
    total = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=since, **where).aggregate(
        total=MoneySum("cost")
    )["total"]
    return total or Decimal(0)


async def spend_since(tenant_id: int, since: datetime, **where) -> Decimal:
    """A tenant's spend since `since` from the database, narrowed by `where` (project_id=,
    api_key_id=, end_user=): seeds a project's, a key's daily or an end user's budget counter."""
    return await db_call(_spend_since, tenant_id, since, **where)


async def caller_for_key(raw_key: str) -> Caller | None:
    """The caller behind a key, or None: unknown, revoked, expired and malformed look the same."""
    if not key_is_well_formed(raw_key):
        return None
    digest = key_hash(raw_key, pepper=settings.API_KEY_PEPPER)
    entry = _keys.get(digest)
    # A read that began before a key change was announced is not joined: it may be the old row.
    key = await _shared(("key", digest, _key_evictions), _fetch_key, digest) if entry is None else entry[1]
    if key is None:
        return None
    tenant = await tenant_view(key.tenant_id)
    return None if tenant is None else Caller(key=key, tenant=tenant)


async def _fetch_key(digest: str) -> KeyView | None:
    evictions = _key_evictions
    found = await db_call(_load_key, digest)
    key = found[0] if found else None
    if evictions == _key_evictions:  # else a key changed meanwhile: what was read may be the old row
        # Unknown keys are remembered too, so a flood of bad keys does not become a flood of queries.
        _keys.put(digest, key, found[1] if found else _ttl())
        if key is not None:
            _key_digests[key.id] = digest
    return key


async def _fetch(cache: _TTLCache, name, load: Callable, *args):
    value = await db_call(load, *args)
    cache.put(name, value, _ttl())
    return value


async def tenant_view(tenant_id: int) -> TenantView | None:
    entry = _tenants.get(tenant_id)
    if entry is None:
        return await _shared(("tenant", tenant_id), _fetch, _tenants, tenant_id, _load_tenant, tenant_id)
    return entry[1]


async def catalog() -> dict[str, ModelView]:
    entry = _catalog.get("all")
    if entry is None:
        return await _shared(("catalog",), _fetch, _catalog, "all", _load_catalog)
    return entry[1]


async def policy() -> PolicyView:
    entry = _catalog.get("policy")
    if entry is None:
        return await _shared(("policy",), _fetch, _catalog, "policy", _load_policy)
    return entry[1]
