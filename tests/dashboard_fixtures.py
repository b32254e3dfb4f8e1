"""Usage for the dashboard tests: three tenants over the last days (rolled up) and today (raw),
with errors, response-cache hits, cached prompts and spread latencies; and the oracle, which
computes every figure the pages show from the raw UsageRecords alone, in plain Python.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.utils import timezone

from billing.models import Plan, Subscription, UsageRecord
from billing.pricing import Tokens, request_cost
from billing.services import usage_rollup
from tests.billing_fixtures import price_of, save, usage
from tests.conftest import make_tenant

LATENCIES = [40, 120, 180, 260, 420, 650, 900, 1300, 2400, 7000]


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def _at(day: date, index: int) -> datetime:
    moment = datetime.combine(day, time(0, 0), tzinfo=UTC) + timedelta(minutes=7 * index + 1)
    return min(moment, timezone.now() - timedelta(seconds=1)) if day == today() else moment


def dashboard_world(catalog) -> dict:
    """alice (business, 20 % markup, budget 0.01: over it today), bob (starter, budget far away),
    carol (no usage). Days today-3 … today-1 are rolled up; today stays raw."""
    business = Plan.objects.create(name="business", markup_percent=Decimal("20"))
    starter = Plan.objects.create(name="starter", markup_percent=Decimal("10"))
    alice = make_tenant("alice", plan=business)
    bob = make_tenant("bob", plan=starter)
    carol = make_tenant("carol", plan=starter)
    Subscription.objects.filter(tenant=alice).update(monthly_budget=Decimal("0.01"))
    Subscription.objects.filter(tenant=bob).update(monthly_budget=Decimal("1000"))
    gpt, claude = catalog["gpt"], catalog["claude"]
    records = []
    first = today() - timedelta(days=3)
    for offset in range(4):
        day = first + timedelta(days=offset)
        n = 0
        for tenant, model, count in ((alice, gpt, 6 + offset), (alice, claude, 3), (bob, gpt, 4)):
            for i in range(count):
                n += 1
                record = usage(
                    tenant,
                    model,
                    _at(day, n),
                    input_tokens=1000 + 10 * i,
                    cached=400 if i % 3 == 0 else 0,
                    output_tokens=200 + i,
                    cache_hit=(i == 1),
                    endpoint="messages" if i % 2 else "chat",
                )
                record.latency_ms = LATENCIES[(i + offset) % len(LATENCIES)]
                records.append(record)
        for status, error in ((429, "upstream_rate_limit"), (502, "upstream_error"), (502, "upstream_error")):
            n += 1
            record = usage(
                alice if n % 2 else bob, gpt, _at(day, n), status_code=status, error_type=error, priced=False
            )
            record.latency_ms = 15
            records.append(record)
    # A big one today: alice's month-to-date spend passes her budget whatever the day of the month.
    records.append(usage(alice, claude, _at(today(), 0), input_tokens=4000, output_tokens=2000))
    save(*records)
    usage_rollup(since=first, until=today() - timedelta(days=1))
    return {"alice": alice, "bob": bob, "carol": carol, "first": first, "business": business, "starter": starter}


def money(value: Decimal) -> str:
    """As the pages show it: two places, half-up, thousands separated."""
    return f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


@dataclass
class Oracle:
    requests: int
    errors: int
    cache_hits: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    response_cache_savings: Decimal
    prompt_cache_savings: Decimal
    by_tenant: dict[int, Decimal]
    by_model: dict[str, Decimal]
    errors_by_type: Counter
    latencies: list[int]


def oracle(*, start: date, end: date, tenant_id: int | None = None) -> Oracle:
    """Every figure straight from the raw records, one record at a time (tests only)."""
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    records = UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until).select_related("price")
    if tenant_id is not None:
        records = records.filter(tenant_id=tenant_id)
    result = Oracle(0, 0, 0, 0, 0, Decimal(0), Decimal(0), Decimal(0), {}, {}, Counter(), [])
    for r in records:
        result.requests += 1
        failed = r.status_code >= 400 or bool(r.error_type)
        result.errors += failed
        result.cache_hits += r.cache_hit
        result.input_tokens += r.input_tokens
        result.output_tokens += r.output_tokens
        result.cost += r.cost
        result.by_tenant[r.tenant_id] = result.by_tenant.get(r.tenant_id, Decimal(0)) + r.cost
        result.by_model[r.model] = result.by_model.get(r.model, Decimal(0)) + r.cost
        if failed:
            result.errors_by_type[r.error_type] += 1
        else:
            result.latencies.append(r.latency_ms)
        if r.price is not None:
            price = price_of(r.price)
            if r.cache_hit:
                tokens = Tokens(
                    input=r.input_tokens,
                    cached_input=r.cached_input_tokens,
                    cache_write=r.cache_write_tokens,
                    output=r.output_tokens,
                )
                result.response_cache_savings += request_cost(tokens=tokens, price=price)
            elif price.cached_input_per_1m is not None:
                result.prompt_cache_savings += (
                    r.cached_input_tokens * (price.input_per_1m - price.cached_input_per_1m) / 1_000_000
                )
    return result
