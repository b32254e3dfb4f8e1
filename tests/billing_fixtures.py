"""Helpers for the billing tests: usage records priced exactly as the gateway prices them,
price rows, and the old raw-records-only usage summary (the oracle for the rollup-based one).
"""

import itertools
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from billing.models import ModelPrice, Subscription, UsageRecord
from billing.pricing import Price, Tokens, request_cost
from billing.selectors import money_str

_ids = itertools.count(1)


def add_price(model, effective_from: datetime, *, input_per_1m, output_per_1m, cached=None, cache_write=None):
    return ModelPrice.objects.create(
        model=model,
        effective_from=effective_from,
        input_per_1m=Decimal(input_per_1m),
        output_per_1m=Decimal(output_per_1m),
        cached_input_per_1m=None if cached is None else Decimal(cached),
        cache_write_per_1m=None if cache_write is None else Decimal(cache_write),
    )


def price_of(row: ModelPrice) -> Price:
    return row.as_price()


def usage(
    tenant,
    model,
    at: datetime,
    *,
    input_tokens=0,
    cached=0,
    cache_write=0,
    cache_write_1h=0,
    output_tokens=0,
    status_code=200,
    error_type="",
    cache_hit=False,
    endpoint="chat",
    priced=True,
    streamed=False,
) -> UsageRecord:
    """An unsaved record as `usage_record_create` writes it: the price in force at `at`, its
    cost computed once (nothing for a cache hit, nothing and no price when unpriced)."""
    price_row = model.prices.filter(effective_from__lte=at).order_by("-effective_from").first() if priced else None
    tokens = Tokens(
        input=input_tokens,
        cached_input=cached,
        cache_write=cache_write,
        cache_write_1h=cache_write_1h,
        output=output_tokens,
    )
    cost = Decimal(0)
    tier = None
    if price_row is not None and not cache_hit:
        price = price_of(price_row)
        cost = request_cost(tokens=tokens, price=price)
        tier = price.tier_for(tokens.input)
    return UsageRecord(
        request_id=f"req-{next(_ids):09d}-{at.timestamp():.0f}",
        created_at=at,
        tenant=tenant,
        model=model.name,
        provider=model.provider,
        upstream_model=model.name,
        endpoint=endpoint,
        status_code=status_code,
        error_type=error_type,
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        output_tokens=output_tokens,
        cost=cost,
        price=price_row,
        price_tier_id=None if tier is None else tier.id,
        latency_ms=100,
        streamed=streamed,
        cache_hit=cache_hit,
    )


def save(*records: UsageRecord) -> list[UsageRecord]:
    return UsageRecord.objects.bulk_create(records)


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


# --- the oracle: /v1/usage computed over raw records only (the implementation before rollups)


def usage_summary_raw(*, tenant_id: int, start: date, end: date) -> dict:
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    qs = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=since, created_at__lt=until)
    totals = qs.aggregate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status_code__gte=400) | ~Q(error_type="")),
        cache_hits=Count("id", filter=Q(cache_hit=True)),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cost=Coalesce(Sum("cost"), Decimal(0)),
    )
    totals["cost"] = money_str(totals["cost"])
    by_model = [
        {**row, "cost": money_str(row["cost"])}
        for row in qs.values("model")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost"),
        )
        .order_by("model")
    ]
    by_endpoint = [
        {**row, "cost": money_str(row["cost"])}
        for row in qs.values("endpoint")
        .annotate(requests=Count("id"), errors=Count("id", filter=Q(status_code__gte=400)), cost=Sum("cost"))
        .order_by("endpoint")
    ]
    by_error_type = list(
        qs.exclude(error_type="").values("error_type").annotate(requests=Count("id")).order_by("error_type")
    )
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "currency": subscription.plan.currency if subscription else "USD",
        "totals": totals,
        "by_model": by_model,
        "by_endpoint": by_endpoint,
        "by_error_type": by_error_type,
    }
