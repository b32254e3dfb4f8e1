"""Plausible usage records for demos and benchmarks, priced exactly like real ones.

Every record is what the gateway would have written for such a request: the price in force
at its time, the cost from `pricing.request_cost`, a realistic mix of errors, streams and
cached prompts. Deterministic for a given seed.
"""

import itertools
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction

from tenants import audit
from tenants.models import ApiKey, CatalogModel, Tenant

from .models import ModelPrice, Plan, Subscription, UsageRecord
from .pricing import Tokens, request_cost

_ERRORS = [
    (429, "upstream_rate_limit"),
    (400, "upstream_invalid_request"),
    (502, "upstream_error"),
    (404, "model_not_found"),
]


def _prices_by_model() -> dict[int, list[ModelPrice]]:
    prices: dict[int, list[ModelPrice]] = {}
    for price in ModelPrice.objects.prefetch_related("tiers").order_by("-effective_from"):
        prices.setdefault(price.model_id, []).append(price)
    return prices


def _tenant_models(tenant: Tenant, models: list[CatalogModel]) -> list[CatalogModel]:
    allowed = {m.id for m in tenant.allowed_models.all()}
    usable = [m for m in models if (not allowed or m.id in allowed)]
    if tenant.allowed_providers:
        usable = [m for m in usable if m.provider in tenant.allowed_providers]
    return usable or models


def _day_counts(
    rng: random.Random,
    tenant_ids: list[int],
    *,
    start: datetime,
    end: datetime,
    per_tenant_day: float | None,
    total: int | None,
) -> list[tuple[int, datetime, datetime, int]]:
    """(tenant, from, until, records) per tenant and day of [start, end).

    Tenants differ in size and trend (some grow over the range, some shrink), days vary; a
    last, shorter day gets its share. With `total`, the counts are scaled to add up to
    exactly that many records (largest remainder).
    """
    length = end - start
    day_count = max(1, -(-length // timedelta(days=1)))  # ceiling
    cells: list[tuple[int, datetime, datetime, float]] = []
    for tenant_id in tenant_ids:
        size, trend = rng.uniform(0.4, 1.6), rng.uniform(-0.8, 0.8)
        for day in range(day_count):
            begin = start + timedelta(days=day)
            until = min(begin + timedelta(days=1), end)
            fraction = (until - begin) / timedelta(days=1)
            position = (day + 0.5) / day_count - 0.5  # -0.5 … 0.5 across the range
            cells.append((tenant_id, begin, until, size * (1 + trend * position) * rng.uniform(0.7, 1.3) * fraction))
    if total is None:
        return [(t, b, u, int((per_tenant_day or 0) * weight)) for t, b, u, weight in cells]
    weights = sum(weight for *_, weight in cells) or 1.0
    exact = [weight * total / weights for *_, weight in cells]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(cells)), key=lambda i: exact[i] - counts[i], reverse=True)
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return [(t, b, u, count) for (t, b, u, _), count in zip(cells, counts, strict=True)]


def synthetic_values(
    *,
    start: datetime,
    end: datetime,
    requests_per_tenant_day: int | None = None,
    total: int | None = None,
    seed: int = 7,
) -> Iterator[dict]:
    """The field values of records spread over [start, end) for every active tenant: about
    `requests_per_tenant_day` per tenant and day, or exactly `total` in all.

    All reads happen before the first value is yielded (so that a caller may stream the values
    into a COPY on the same connection).
    """
    if (requests_per_tenant_day is None) == (total is None):
        raise ValueError("give requests_per_tenant_day or total")
    rng = random.Random(seed)
    models = list(CatalogModel.objects.filter(active=True).prefetch_related("deployments"))
    prices = _prices_by_model()
    keys = dict(ApiKey.objects.filter(revoked_at__isnull=True).values_list("tenant_id", "id"))
    tenants = list(Tenant.objects.filter(status=Tenant.Status.ACTIVE).prefetch_related("allowed_models"))
    usable_by_tenant = {tenant.id: [m for m in _tenant_models(tenant, models) if m.id in prices] for tenant in tenants}
    deployments = {model.id: next(iter(model.deployments.all()), None) for model in models}
    price_values = {row.id: row.as_price() for rows in prices.values() for row in rows}
    tenant_ids = [tenant.id for tenant in tenants if usable_by_tenant[tenant.id]]
    plan = _day_counts(rng, tenant_ids, start=start, end=end, per_tenant_day=requests_per_tenant_day, total=total)
    for tenant_id, begin, until, count in plan:
        usable = usable_by_tenant[tenant_id]
        seconds = max(1, int((until - begin).total_seconds()))
        for _ in range(count):
            at = begin + timedelta(seconds=rng.randrange(seconds))
            model = rng.choice(usable)
            yield _values(rng, tenant_id, keys.get(tenant_id), model, deployments[model.id], prices, price_values, at)


def synthetic_records(
    *,
    start: datetime,
    end: datetime,
    requests_per_tenant_day: int | None = None,
    total: int | None = None,
    seed: int = 7,
) -> Iterator[UsageRecord]:
    """Unsaved records spread over [start, end) for every active tenant."""
    for values in synthetic_values(
        start=start, end=end, requests_per_tenant_day=requests_per_tenant_day, total=total, seed=seed
    ):
        yield UsageRecord(**values)


def _values(
    rng: random.Random, tenant_id: int, key_id, model: CatalogModel, deployment, prices, price_values, at: datetime
) -> dict:
    price_row = next((p for p in prices[model.id] if p.effective_from <= at), prices[model.id][-1])
    streamed = rng.random() < 0.4
    failed = rng.random() < 0.03
    # A response-cache hit is recorded with the tokens it would have used, its price row and cost 0.
    cache_hit = not failed and rng.random() < 0.05
    status, error = rng.choice(_ERRORS) if failed else (200, "")
    tokens = Tokens()
    if not failed:
        prompt = int(rng.lognormvariate(6.5, 0.9)) + 10
        cached = int(prompt * rng.uniform(0.3, 0.9)) if rng.random() < 0.25 else 0
        tokens = Tokens(input=prompt, cached_input=cached, output=int(rng.lognormvariate(5.3, 0.8)) + 1)
    request_id = uuid.UUID(int=rng.getrandbits(128)).hex
    endpoint = UsageRecord.Endpoint.MESSAGES if rng.random() < 0.25 else UsageRecord.Endpoint.CHAT
    if model.kind == CatalogModel.Kind.EMBEDDING:
        # The same draws as a chat request (so the sequence stays the same), shaped as an embedding.
        tokens, streamed, endpoint = Tokens(input=tokens.input), False, UsageRecord.Endpoint.EMBEDDINGS
    price = price_values[price_row.id]
    tier = None if failed or cache_hit else price.tier_for(tokens.input)
    return {
        "request_id": request_id,
        "created_at": at,
        "tenant_id": tenant_id,
        "api_key_id": key_id,
        "model": model.name,
        "provider": deployment.provider if deployment else model.provider,
        "upstream_model": deployment.upstream if deployment else "",
        "endpoint": endpoint,
        "status_code": status,
        "error_type": error,
        "input_tokens": tokens.input,
        "cached_input_tokens": tokens.cached_input,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "output_tokens": tokens.output,
        "cost": Decimal(0) if failed or cache_hit else request_cost(tokens=tokens, price=price),
        "price_id": price_row.id if not failed else None,
        "price_tier_id": None if tier is None else tier.id,
        "latency_ms": _latency(rng, failed=failed, cache_hit=cache_hit),
        "streamed": streamed,
        "estimated": False,
        "cache_hit": cache_hit,
    }


def _latency(rng: random.Random, *, failed: bool, cache_hit: bool) -> int:
    if failed:
        return rng.randrange(20, 400)
    if cache_hit:
        return rng.randrange(2, 40)
    return int(rng.lognormvariate(6.6, 0.5))


def synthetic_usage_create(
    *,
    start: datetime,
    end: datetime,
    requests_per_tenant_day: int | None = None,
    total: int | None = None,
    seed: int = 7,
    batch_size: int = 5000,
) -> int:
    """Write synthetic records: COPY on PostgreSQL (a million in well under a minute), bulk
    inserts in batches elsewhere (the demo's SQLite). One transaction; returns how many."""
    values = synthetic_values(
        start=start, end=end, requests_per_tenant_day=requests_per_tenant_day, total=total, seed=seed
    )
    with transaction.atomic():
        if connection.vendor == "postgresql":
            return _copy(values)
        count = 0
        batch: list[UsageRecord] = []
        for row in values:
            batch.append(UsageRecord(**row))
            if len(batch) >= batch_size:
                UsageRecord.objects.bulk_create(batch)
                count += len(batch)
                batch = []
        UsageRecord.objects.bulk_create(batch)
        return count + len(batch)


COPY_COLUMNS = [
    "request_id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "model",
    "provider",
    "upstream_model",
    "endpoint",
    "status_code",
    "error_type",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "cost",
    "price_id",
    "price_tier_id",
    "latency_ms",
    "streamed",
    "estimated",
    "cache_hit",
]


def _copy(values: Iterator[dict]) -> int:
    # The generator reads tenants and prices before its first record: not while COPY holds the connection.
    first = next(values, None)
    if first is None:
        return 0
    count = 0
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(name) for name in COPY_COLUMNS)
    with connection.cursor() as cursor:
        with cursor.connection.cursor() as raw, raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in itertools.chain([first], values):
                copy.write_row([row[name] for name in COPY_COLUMNS])
                count += 1
        cursor.execute(f"ANALYZE {table}")
    return count


def synthetic_tenants_ensure(*, count: int, prefix: str = "synthetic") -> int:
    """At least `count` active tenants, creating "<prefix>-000"… (on the first plan, or a new
    "synthetic" plan) as needed; returns how many were created."""
    missing = count - Tenant.objects.filter(status=Tenant.Status.ACTIVE).count()
    if missing <= 0:
        return 0
    plan = Plan.objects.order_by("name").first() or Plan.objects.create(name="synthetic", markup_percent=Decimal(20))
    existing = set(Tenant.objects.filter(slug__startswith=f"{prefix}-").values_list("slug", flat=True))
    slugs = [slug for slug in (f"{prefix}-{i:03d}" for i in range(count + len(existing))) if slug not in existing]
    with transaction.atomic():
        tenants = Tenant.objects.bulk_create(
            [Tenant(slug=slug, name=f"Synthetic {slug.rsplit('-', 1)[1]}") for slug in slugs[:missing]]
        )
        subscriptions = Subscription.objects.bulk_create([Subscription(tenant=tenant, plan=plan) for tenant in tenants])
        audit.record_created([*tenants, *subscriptions])
    return len(tenants)
