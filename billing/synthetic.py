"""Plausible usage records for demos and benchmarks, priced exactly like real ones.

Every record is what the gateway would have written for such a request: the price in force
at its time, the cost from `pricing.request_cost`, a realistic mix of errors, streams and
cached prompts. Deterministic for a given seed.
"""

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction

from tenants.models import ApiKey, CatalogModel, Tenant

from .models import ModelPrice, UsageRecord
from .pricing import Price, Tokens, request_cost

_ERRORS = [
    (429, "upstream_rate_limit"),
    (400, "upstream_invalid_request"),
    (502, "upstream_error"),
    (404, "model_not_found"),
]


def _prices_by_model() -> dict[int, list[ModelPrice]]:
    prices: dict[int, list[ModelPrice]] = {}
    for price in ModelPrice.objects.order_by("-effective_from"):
        prices.setdefault(price.model_id, []).append(price)
    return prices


def _tenant_models(tenant: Tenant, models: list[CatalogModel]) -> list[CatalogModel]:
    allowed = {m.id for m in tenant.allowed_models.all()}
    usable = [m for m in models if (not allowed or m.id in allowed)]
    if tenant.allowed_providers:
        usable = [m for m in usable if m.provider in tenant.allowed_providers]
    return usable or models


def synthetic_values(*, start: datetime, end: datetime, requests_per_tenant_day: int, seed: int = 7) -> Iterator[dict]:
    """The field values of records spread over [start, end) for every active tenant.

    All reads happen before the first value is yielded (so that a caller may stream the values
    into a COPY on the same connection).
    """
    rng = random.Random(seed)
    models = list(CatalogModel.objects.filter(active=True).prefetch_related("deployments"))
    prices = _prices_by_model()
    keys = dict(ApiKey.objects.filter(revoked_at__isnull=True).values_list("tenant_id", "id"))
    tenants = list(Tenant.objects.filter(status=Tenant.Status.ACTIVE).prefetch_related("allowed_models"))
    usable_by_tenant = {tenant.id: [m for m in _tenant_models(tenant, models) if m.id in prices] for tenant in tenants}
    deployments = {model.id: next(iter(model.deployments.all()), None) for model in models}
    price_values = {
        row.id: Price(
            input_per_1m=row.input_per_1m,
            output_per_1m=row.output_per_1m,
            cached_input_per_1m=row.cached_input_per_1m,
            cache_write_per_1m=row.cache_write_per_1m,
        )
        for rows in prices.values()
        for row in rows
    }
    days = max(1, (end - start).days)
    for tenant in tenants:
        usable = usable_by_tenant[tenant.id]
        if not usable:
            continue
        weight = rng.uniform(0.4, 1.6)  # tenants differ in size
        for day in range(days):
            day_start = start + timedelta(days=day)
            for _ in range(int(requests_per_tenant_day * weight * rng.uniform(0.7, 1.3))):
                at = day_start + timedelta(seconds=rng.randrange(86_400))
                if at >= end:
                    continue
                model = rng.choice(usable)
                yield _values(
                    rng, tenant.id, keys.get(tenant.id), model, deployments[model.id], prices, price_values, at
                )


def synthetic_records(
    *, start: datetime, end: datetime, requests_per_tenant_day: int, seed: int = 7
) -> Iterator[UsageRecord]:
    """Unsaved records spread over [start, end) for every active tenant."""
    for values in synthetic_values(start=start, end=end, requests_per_tenant_day=requests_per_tenant_day, seed=seed):
        yield UsageRecord(**values)


def _values(
    rng: random.Random, tenant_id: int, key_id, model: CatalogModel, deployment, prices, price_values, at: datetime
) -> dict:
    price_row = next((p for p in prices[model.id] if p.effective_from <= at), prices[model.id][-1])
    streamed = rng.random() < 0.4
    failed = rng.random() < 0.03
    status, error = rng.choice(_ERRORS) if failed else (200, "")
    tokens = Tokens()
    if not failed:
        prompt = int(rng.lognormvariate(6.5, 0.9)) + 10
        cached = int(prompt * rng.uniform(0.3, 0.9)) if rng.random() < 0.25 else 0
        tokens = Tokens(input=prompt, cached_input=cached, output=int(rng.lognormvariate(5.3, 0.8)) + 1)
    return {
        "request_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "created_at": at,
        "tenant_id": tenant_id,
        "api_key_id": key_id,
        "model": model.name,
        "provider": deployment.provider if deployment else model.provider,
        "upstream_model": deployment.upstream if deployment else "",
        "endpoint": UsageRecord.Endpoint.MESSAGES if rng.random() < 0.25 else UsageRecord.Endpoint.CHAT,
        "status_code": status,
        "error_type": error,
        "input_tokens": tokens.input,
        "cached_input_tokens": tokens.cached_input,
        "cache_write_tokens": 0,
        "output_tokens": tokens.output,
        "cost": request_cost(tokens=tokens, price=price_values[price_row.id]) if not failed else Decimal(0),
        "price_id": price_row.id if not failed else None,
        "latency_ms": int(rng.lognormvariate(6.6, 0.5)) if not failed else rng.randrange(20, 400),
        "streamed": streamed,
        "estimated": False,
        "cache_hit": False,
    }


def synthetic_usage_create(
    *, start: datetime, end: datetime, requests_per_tenant_day: int, seed: int = 7, batch_size: int = 5000
) -> int:
    """Write synthetic records in batches; returns how many."""
    count = 0
    batch: list[UsageRecord] = []
    with transaction.atomic():
        for record in synthetic_records(
            start=start, end=end, requests_per_tenant_day=requests_per_tenant_day, seed=seed
        ):
            batch.append(record)
            if len(batch) >= batch_size:
                UsageRecord.objects.bulk_create(batch)
                count += len(batch)
                batch = []
        UsageRecord.objects.bulk_create(batch)
    return count + len(batch)
