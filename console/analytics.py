"""Read-only selectors for the staff dashboard, the tenant overview and the cross-tenant analytics.

Every figure is a SQL aggregate over "rollups for the closed days plus raw records for the
rest" (`billing.selectors.usage_sources`), merged in the database: the rollup part and the raw part of
a report are one `UNION ALL` query, summed again per key, so that a page costs a few queries
however many records there are. Python only folds the handful of rows that come back.

The closed days are read from the coarsest rows that hold what an aggregate asks for: the daily
summaries per model (`UsageModelDay`) or per tenant and project (`UsageTenantDay`) when their
columns tell every key, condition and measure (`_summary_for`), else the rollups. Summaries are
sums of the rollups, so the figures are the same either way; a day whose summaries are not
current is read from its rollups.

Definitions (the admin pages say them too):
- spend: provider cost, exact (12 decimals), rounded only for display;
- usage revenue: spend × (1 + the plan's markup); base fees, allowances and shared cost are
  monthly and live on the invoices;
- error: status >= 400 or an error type (as in /v1/usage);
- cache hit rate: requests answered from the gateway's response cache / all requests;
- response-cache savings: what the cache hits would have cost at their price row (they are
  recorded with their tokens, cost 0 and the price in force);
- prompt-caching savings: cached input tokens billed at the cached price instead of the input
  price (the provider's discount, already in the spend);
- latency p50/p95: of successful requests, from the latency histogram (billing/latency.py),
  approximate within one bucket.
"""

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import connections
from django.db.models import (
    Case,
    Count,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce, TruncDate

from billing import latency
from billing.aggregates import MoneySum, MoneySumField, money_from_db
from billing.models import BudgetAlert, Invoice, ModelPrice, Subscription, UsageRecord
from billing.periods import day_start, days, month_start
from billing.pricing import Price, Tokens, request_cost
from billing.selectors import SUMMARY_MODELS, usage_sources, utc_today
from gateway.limits import LiveUsage, live_usage_sync
from tenants.models import ApiKey, Project, Tenant

log = logging.getLogger(__name__)

ZERO = Decimal(0)
CENT = Decimal("0.01")
NEAR_BUDGET = Decimal("0.8")  # "near": 80 % of the monthly budget spent; "over": 100 %
CHART_DAYS = 30

_ERROR = Q(status_code__gte=400) | ~Q(error_type="")
_SUCCESS = Q(status_code__lt=400) & Q(error_type="")


def money(amount: Decimal | None) -> str:
    """Two places, half-up, for display and CSV: "12.35"."""
    return f"{(amount or ZERO).quantize(CENT, rounding=ROUND_HALF_UP):f}"


def ratio(part: int | Decimal, whole: int | Decimal) -> float | None:
    """For display only (rates, shares); None when there is nothing to divide by."""
    return float(part) / float(whole) if whole else None


# --- one aggregate over rollups plus raw records ------------------------------------------


@dataclass(frozen=True, slots=True)
class Measure:
    """One column of a report: a sum of a rollup column, and over raw records a sum of the
    same column or (`raw_field` None) a count of records. `where` filters both; `raw_where`
    and `rollup_where` only one side (e.g. a latency bucket, or a period split by day).

    On a daily summary, the same as on rollups (`rollup_where` too) when the summary has the
    columns; or the sum of `counted`, a summary column that holds the measure with its `where`
    already applied (the errors of `UsageTenantDay`, which keeps no status)."""

    rollup_field: str
    raw_field: str | None = None
    kind: type = int
    where: Q | None = None
    rollup_where: Q | None = None
    raw_where: Q | None = None
    counted: str | None = None

    @property
    def _sum(self) -> type[Sum]:
        return MoneySum if self.kind is Decimal else Sum  # money: exact on SQLite too

    @property
    def rollup(self) -> Sum:
        return self._sum(self.rollup_field, filter=_and(self.where, self.rollup_where))

    @property
    def raw(self) -> Sum | Count:
        where = _and(self.where, self.raw_where)
        return Count("id", filter=where) if self.raw_field is None else self._sum(self.raw_field, filter=where)

    def summary(self, columns: frozenset[str]) -> Sum | None:
        """Over a summary with these columns (`_columns`); None when its rows cannot tell it."""
        if not _fields(self.rollup_where) <= columns:
            return None
        if self.counted in columns:
            return self._sum(self.counted, filter=self.rollup_where)
        if self.rollup_field in columns and _fields(self.where) <= columns:
            return self.rollup
        return None

    def restricted(self, *, rollup_where: Q, raw_where: Q) -> "Measure":
        return replace(
            self,
            rollup_where=_and(self.rollup_where, rollup_where),
            raw_where=_and(self.raw_where, raw_where),
        )


def _and(*conditions: Q | None) -> Q | None:
    present = [c for c in conditions if c is not None]
    if not present:
        return None
    result = present[0]
    for condition in present[1:]:
        result &= condition
    return result


def _fields(condition: Q | None) -> set[str]:
    """The fields a condition reads: {"status_code", "error_type"} for `_ERROR`."""
    if condition is None:
        return set()
    fields = set()
    for child in condition.children:
        fields |= _fields(child) if isinstance(child, Q) else {child[0].split(LOOKUP_SEP)[0]}
    return fields


def _columns(model) -> frozenset[str]:
    """What a query on `model` may group, filter and sum by: its fields' names and columns."""
    return frozenset(name for field in model._meta.concrete_fields for name in (field.name, field.attname))


def _requests(where: Q | None = None, *, counted: str | None = None) -> Measure:
    return Measure(rollup_field="requests", where=where, counted=counted)


def _sum(name: str, where: Q | None = None, kind: type = int) -> Measure:
    return Measure(rollup_field=name, raw_field=name, kind=kind, where=where)


def _histogram() -> dict[str, Measure]:
    """Latency bucket counts: the rollup's columns; raw records counted per bucket."""
    measures = {}
    for bucket in latency.BUCKETS:
        within = Q(latency_ms__gte=bucket.lower)
        if bucket.upper is not None:
            within &= Q(latency_ms__lt=bucket.upper)
        measures[bucket.field] = Measure(rollup_field=bucket.field, raw_where=within)
    return measures


_HISTOGRAM = _histogram()


_USAGE = {
    "requests": _requests(),
    "errors": _requests(_ERROR, counted="errors"),
    "cache_hits": _requests(Q(cache_hit=True), counted="cache_hits"),
    "input_tokens": _sum("input_tokens"),
    "output_tokens": _sum("output_tokens"),
    "cost": _sum("cost", kind=Decimal),
}


def _value(kind: type, value):
    if value is None:
        return kind(0)
    if kind is int:
        return int(value)
    return money_from_db(value)  # on SQLite, MoneySum's integer count of 10⁻¹² units


def _day(value) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _summary_for(
    *, keys: Sequence[str], measures: dict[str, Measure], where: Q | None, tenant_id: int | None
) -> type | None:
    """The first (smallest) daily summary whose rows tell every key, condition and measure of an
    aggregate; None: only the rollups do."""
    needed = set(keys) | _fields(where) | ({"tenant_id"} if tenant_id is not None else set())
    for model in SUMMARY_MODELS:
        columns = _columns(model)
        if needed <= columns and all(m.summary(columns) is not None for m in measures.values()):
            return model
    return None


def _expression(measure: Measure, source: str, columns: frozenset[str]) -> Sum | Count:
    if source == "summary":
        return measure.summary(columns)
    return measure.rollup if source == "rollup" else measure.raw


def _aggregate(
    *,
    start: date,
    end: date,
    keys: Sequence[str] = (),
    measures: dict[str, Measure],
    tenant_id: int | None = None,
    where: Q | None = None,
    today: date | None = None,
) -> list[dict]:
    """`measures` per `keys` over [start, end] (UTC days), summaries or rollups plus raw, in one query.

    A key is a column both tables have, or "day" (the rollup's day, the raw record's UTC date).
    Rows come back unordered; every measure is an int or a Decimal, never None.
    """
    summary = _summary_for(keys=keys, measures=measures, where=where, tenant_id=tenant_id)
    sources = usage_sources(start=start, end=end, tenant_id=tenant_id, today=today, summary=summary)
    columns = _columns(summary) if summary is not None else frozenset()
    # Without keys, one constant column: Django leaves a constant out of GROUP BY, so the
    # part is a plain aggregate over all its rows (one row back).
    group_keys = list(keys) or ["_all"]
    parts: list[QuerySet] = []
    for queryset, source in ((sources.summaries, "summary"), (sources.rollups, "rollup"), (sources.raw, "raw")):
        if queryset is None:
            continue
        if where is not None:
            queryset = queryset.filter(where)
        if "day" in keys and source == "raw":
            queryset = queryset.annotate(day=TruncDate("created_at", tzinfo=UTC))
        if not keys:
            queryset = queryset.annotate(_all=Value(1, output_field=IntegerField()))
        annotations = {f"s_{name}": _expression(m, source, columns) for name, m in measures.items()}
        parts.append(queryset.values(*group_keys).annotate(**annotations).values(*group_keys, *annotations).order_by())
    if not parts:
        return [] if keys else [{name: _value(m.kind, None) for name, m in measures.items()}]
    # The parts' own database: the replica inside `reading_replica()` (proxy_platform/replicas.py).
    connection = connections[parts[0].db]
    quote = connection.ops.quote_name
    sqls, params = [], []
    for index, part in enumerate(parts):
        sql, part_params = part.query.sql_with_params()
        sqls.append(f"SELECT * FROM ({sql}) AS part{index}")  # noqa: S608 (SQL of our querysets)
        params.extend(part_params)
    sums = ", ".join(f"SUM({quote('s_' + name)})" for name in measures)
    group = ", ".join(quote(key) for key in group_keys)
    query = f"SELECT {group}, {sums} FROM ({' UNION ALL '.join(sqls)}) AS parts GROUP BY {group}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        rows = cursor.fetchall()
    result = []
    kinds = [(name, m.kind) for name, m in measures.items()]  # thousands of rows: no lookups per cell
    width = len(group_keys)
    for row in rows:
        item = dict(zip(keys, row[: len(keys)], strict=True)) if keys else {}
        if "day" in item:
            item["day"] = _day(item["day"])
        for (name, kind), value in zip(kinds, row[width:], strict=True):
            item[name] = _value(kind, value)
        result.append(item)
    if not keys and not result:
        result = [{name: _value(m.kind, None) for name, m in measures.items()}]
    return result


# --- pieces shared by the pages ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = ZERO

    @classmethod
    def of(cls, row: dict) -> "Totals":
        return cls(**{name: row[name] for name in _USAGE})

    @property
    def error_rate(self) -> float | None:
        return ratio(self.errors, self.requests)

    @property
    def cache_hit_rate(self) -> float | None:
        return ratio(self.cache_hits, self.requests)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_per_1k_tokens(self) -> Decimal | None:
        return self.cost * 1000 / self.tokens if self.tokens else None


@dataclass(frozen=True, slots=True)
class Latency:
    p50: latency.Percentile | None
    p95: latency.Percentile | None
    requests: int  # the successful requests the histogram holds


def _latency(row: dict) -> Latency:
    counts = [row[name] for name in latency.FIELDS]
    return Latency(p50=latency.percentile(counts, 0.5), p95=latency.percentile(counts, 0.95), requests=sum(counts))


@dataclass(frozen=True, slots=True)
class Savings:
    """What caching saved: the gateway's response cache and the providers' prompt caching."""

    response_cache: Decimal = ZERO
    prompt_cache: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.response_cache + self.prompt_cache


_SAVINGS = {
    "input_tokens": _sum("input_tokens"),
    "cached_input_tokens": _sum("cached_input_tokens"),
    "cache_write_tokens": _sum("cache_write_tokens"),
    "cache_write_1h_tokens": _sum("cache_write_1h_tokens"),
    "output_tokens": _sum("output_tokens"),
}


def _price(row: ModelPrice) -> Price:
    return Price(
        input_per_1m=row.input_per_1m,
        output_per_1m=row.output_per_1m,
        cached_input_per_1m=row.cached_input_per_1m,
        cache_write_per_1m=row.cache_write_per_1m,
        cache_write_1h_per_1m=row.cache_write_1h_per_1m,
        # No tiers: these are sums over many requests, whose tier no sum can tell (an estimate at base prices).
    )


def _savings(*, start: date, end: date, tenant_id: int | None = None, today: date | None = None) -> Savings:
    """Per price row (a handful): a cache hit's tokens at its price; cached input at input − cached price."""
    rows = _aggregate(
        start=start,
        end=end,
        keys=["price_id", "cache_hit"],
        measures=_SAVINGS,
        tenant_id=tenant_id,
        where=Q(price__isnull=False),
        today=today,
    )
    return _savings_of(rows)


def _savings_of(rows: list[dict]) -> Savings:
    """`_SAVINGS` per price row and cache hit (one row each, price rows only) → the savings."""
    prices = {p.id: _price(p) for p in ModelPrice.objects.filter(id__in={row["price_id"] for row in rows})}
    response_cache = prompt_cache = ZERO
    for row in rows:
        price = prices[row["price_id"]]
        if row["cache_hit"]:
            tokens = Tokens(
                input=row["input_tokens"],
                cached_input=row["cached_input_tokens"],
                cache_write=row["cache_write_tokens"],
                cache_write_1h=row["cache_write_1h_tokens"],
                output=row["output_tokens"],
            )
            response_cache += request_cost(tokens=tokens, price=price)
        elif price.cached_input_per_1m is not None:
            prompt_cache += row["cached_input_tokens"] * (price.input_per_1m - price.cached_input_per_1m) / 1_000_000
    return Savings(response_cache=response_cache, prompt_cache=prompt_cache)


@dataclass(frozen=True, slots=True)
class DayPoint:
    day: date
    requests: int
    errors: int
    cost: Decimal


def _daily(*, start: date, end: date, tenant_id: int | None = None, today: date | None = None) -> list[DayPoint]:
    """One point per day of [start, end], days without usage included (as zeros)."""
    measures = {"requests": _USAGE["requests"], "errors": _USAGE["errors"], "cost": _USAGE["cost"]}
    rows = {
        row["day"]: row
        for row in _aggregate(start=start, end=end, keys=["day"], measures=measures, tenant_id=tenant_id, today=today)
    }
    empty = {"requests": 0, "errors": 0, "cost": ZERO}
    return [DayPoint(day=day, **{name: rows.get(day, empty)[name] for name in measures}) for day in days(start, end)]


@dataclass(frozen=True, slots=True)
class Share:
    """A tenant's or a model's part of the period."""

    key: str
    totals: Totals
    share: float | None  # of the period's spend
    tenant_id: int | None = None
    revenue: Decimal = ZERO


# How each endpoint (UsageRecord.endpoint) is named on the staff pages: what it is, then its path.
# "responses" is listed ahead of its endpoint, so that no page ever shows a bare value.
ENDPOINT_LABELS = {
    "chat": "Chat Completions (/v1/chat/completions)",
    "messages": "Messages (/v1/messages)",
    "embeddings": "Embeddings (/v1/embeddings)",
    "responses": "Responses (/v1/responses)",
}


def endpoint_label(endpoint: str) -> str:
    """A readable name for an endpoint value; an unlisted one by its UsageRecord choice, else as stored."""
    if endpoint in ENDPOINT_LABELS:
        return ENDPOINT_LABELS[endpoint]
    return dict(UsageRecord.Endpoint.choices).get(endpoint, endpoint or "(none)")


def _fold(rows: list[dict], key: str) -> list[dict]:
    """Rows of `_USAGE` per several keys (model and endpoint, tenant and project), summed per
    `key` (one of them)."""
    folded: dict[str, dict] = {}
    for row in rows:
        into = folded.get(row[key])
        if into is None:
            into = folded[row[key]] = {key: row[key], **{name: _value(m.kind, None) for name, m in _USAGE.items()}}
        for name in _USAGE:
            into[name] += row[name]
    return list(folded.values())


def _largest(rows: list[dict], top: int | None, name) -> list[dict]:
    """Rows of `_USAGE` by spend, then requests, then `name(row)`, largest first; the first `top`
    only (`sorted(...)[:top]`, without sorting thousands of tenants for the ten shown)."""

    def key(row: dict) -> tuple:
        return (-row["cost"], -row["requests"], name(row))

    return sorted(rows, key=key) if top is None else heapq.nsmallest(top, rows, key=key)


def _shares(rows: list[dict], key: str, total_cost: Decimal) -> list[Share]:
    """Per `key`, by spend then requests, largest first."""
    shares = [
        Share(key=row[key], totals=Totals.of(row), share=ratio(row["cost"], total_cost)) for row in _fold(rows, key)
    ]
    return sorted(shares, key=lambda s: (-s.totals.cost, -s.totals.requests, s.key))


NO_PROJECT = "(no project)"


def project_shares(
    *,
    start: date,
    end: date,
    total_cost: Decimal | None = None,
    tenant_id: int | None = None,
    today: date | None = None,
    qualified: bool = False,
    rows: list[dict] | None = None,
    slugs: dict[int, str] | None = None,
    top: int | None = None,
) -> list[Share]:
    """Usage per tenant and project, largest spend first (one aggregate, one query for the names).

    Rollups keep the project id without a constraint: an id whose project is gone, or records
    without a project, make one "(no project)" row per tenant, as the raw records read once a
    project is deleted. `qualified`: rows named "tenant/project" (the dashboard, across tenants).
    `total_cost` None: shares of these rows' own total. `rows`: that aggregate (`_USAGE` per
    tenant_id and project_id over the period), and `slugs` the tenants' (for `qualified`), when
    the caller has them already. `top`: the largest `top` only.
    """
    if rows is None:
        rows = _aggregate(
            start=start, end=end, keys=["tenant_id", "project_id"], measures=_USAGE, tenant_id=tenant_id, today=today
        )
    ids = {row["project_id"] for row in rows if row["project_id"] is not None}
    names = {
        (project_tenant, project_id): name
        for project_id, project_tenant, name in Project.objects.filter(id__in=ids).values_list(
            "id", "tenant_id", "name"
        )
    }
    if qualified and slugs is None:
        slugs = dict(Tenant.objects.values_list("id", "slug"))
    folded: dict[tuple[int, str], dict] = {}
    for row in rows:
        name = names.get((row["tenant_id"], row["project_id"]), NO_PROJECT)
        if qualified:
            name = f"{slugs.get(row['tenant_id'], row['tenant_id'])}/{name}"
        into = folded.get((row["tenant_id"], name))
        if into is None:
            empty = {name_: _value(m.kind, None) for name_, m in _USAGE.items()}
            into = folded[(row["tenant_id"], name)] = {"tenant_id": row["tenant_id"], "key": name, **empty}
        for measure in _USAGE:
            into[measure] += row[measure]
    if total_cost is None:
        total_cost = sum((row["cost"] for row in folded.values()), ZERO)
    return [
        Share(key=row["key"], tenant_id=row["tenant_id"], totals=Totals.of(row), share=ratio(row["cost"], total_cost))
        for row in _largest(list(folded.values()), top, name=lambda row: row["key"])
    ]


def _markups() -> dict[int, Decimal]:
    """Markup percent per tenant with a subscription (one small query)."""
    return dict(Subscription.objects.values_list("tenant_id", "plan__markup_percent"))


def _revenue(cost: Decimal, markup_percent: Decimal | None) -> Decimal:
    return cost * (1 + (markup_percent or ZERO) / 100)


@dataclass(frozen=True, slots=True)
class BudgetLine:
    tenant_id: int
    slug: str
    budget: Decimal
    spend: Decimal

    @property
    def used(self) -> float:
        return float(self.spend / self.budget) if self.budget else float("inf")

    @property
    def over(self) -> bool:
        return self.spend >= self.budget


def _month_to_date(*, today: date, tenant_id: int | None = None) -> dict[int, Decimal]:
    rows = _aggregate(
        start=month_start(today),
        end=today,
        keys=["tenant_id"],
        measures={"cost": _USAGE["cost"]},
        tenant_id=tenant_id,
        today=today,
    )
    return {row["tenant_id"]: row["cost"] for row in rows}


def budget_lines(
    *, today: date | None = None, near: Decimal = NEAR_BUDGET, spend: dict[int, Decimal] | None = None
) -> list[BudgetLine]:
    """Tenants whose month-to-date spend is at least `near` × their budget, fullest first.
    `spend`: the month-to-date spend per tenant, when the caller has it already."""
    today = today or utc_today()
    if spend is None:
        spend = _month_to_date(today=today)
    lines = []
    # Only subscriptions with a budget (their own, or their plan's): with thousands of tenants
    # on budget-less plans, loading every one of them cost a quarter of the dashboard's time.
    subscriptions = (
        Subscription.objects.filter(Q(monthly_budget__isnull=False) | Q(plan__default_monthly_budget__isnull=False))
        .select_related("tenant", "plan")
        .order_by("tenant__slug")
    )
    for subscription in subscriptions:
        budget = subscription.effective_budget
        if budget is None or budget <= 0:
            continue
        mtd = spend.get(subscription.tenant_id, ZERO)
        if mtd >= budget * near:
            lines.append(BudgetLine(subscription.tenant_id, subscription.tenant.slug, budget, mtd))
    return sorted(lines, key=lambda line: (-line.used, line.slug))


# --- the dashboard's platform-wide figures: one aggregate, folded ------------------------------

# Per model, endpoint, outcome and price row: the key of `UsageModelDay`. Every platform-wide
# figure of the dashboard (per model and endpoint, errors by type, latency, savings) is a fold
# of these few hundred rows, so that today's raw records (which no summary holds yet) are read
# once for all of them, not once each.
_PLATFORM_KEYS = ["model", "endpoint", "status_code", "error_type", "cache_hit", "price_id"]
_PLATFORM = {
    "requests": _requests(),
    **{name: _sum(name) for name in _SAVINGS},
    "cost": _sum("cost", kind=Decimal),
    **_HISTOGRAM,
}


def _failed(row: dict) -> bool:
    """`_ERROR` on a row of `_PLATFORM_KEYS`."""
    return row["status_code"] >= 400 or row["error_type"] != ""


def _platform_usage(rows: list[dict]) -> list[dict]:
    """`_USAGE` per model and endpoint, as `_aggregate(keys=["model", "endpoint"], measures=_USAGE)`."""
    folded: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["model"], row["endpoint"])
        into = folded.get(key)
        if into is None:
            empty = {name: _value(m.kind, None) for name, m in _USAGE.items()}
            into = folded[key] = {"model": key[0], "endpoint": key[1], **empty}
        requests = row["requests"]
        into["requests"] += requests
        into["errors"] += requests if _failed(row) else 0
        into["cache_hits"] += requests if row["cache_hit"] else 0
        into["input_tokens"] += row["input_tokens"]
        into["output_tokens"] += row["output_tokens"]
        into["cost"] += row["cost"]
    return list(folded.values())


def _platform_errors(rows: list[dict]) -> dict[str, int]:
    """Failed requests per error type."""
    errors: dict[str, int] = {}
    for row in rows:
        if _failed(row):
            errors[row["error_type"]] = errors.get(row["error_type"], 0) + row["requests"]
    return errors


def _platform_histogram(rows: list[dict]) -> dict:
    """The latency buckets of successful requests."""
    histogram = dict.fromkeys(latency.FIELDS, 0)
    for row in rows:
        if not _failed(row):
            for field in latency.FIELDS:
                histogram[field] += row[field]
    return histogram


def _platform_savings(rows: list[dict]) -> Savings:
    """`_savings_of` the rows with a price, summed per price row and cache hit first (a cost is
    computed once per price row, as from the aggregate by price row)."""
    folded: dict[tuple[int, bool], dict] = {}
    for row in rows:
        if row["price_id"] is None:
            continue
        key = (row["price_id"], row["cache_hit"])
        into = folded.setdefault(key, {"price_id": key[0], "cache_hit": key[1], **dict.fromkeys(_SAVINGS, 0)})
        for name in _SAVINGS:
            into[name] += row[name]
    return _savings_of(list(folded.values()))


def _platform_fold(rows: list[dict]) -> list[dict]:
    """Rows of `_PLATFORM_KEYS` and "day" summed over their days: the rows of `_PLATFORM_KEYS`."""
    folded: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[name] for name in _PLATFORM_KEYS)
        into = folded.get(key)
        if into is None:
            folded[key] = {name: row[name] for name in (*_PLATFORM_KEYS, *_PLATFORM)}
            continue
        for name in _PLATFORM:
            into[name] += row[name]
    return list(folded.values())


def _platform_daily(rows: list[dict], *, start: date, end: date) -> list[DayPoint]:
    """`_daily` from rows of `_PLATFORM_KEYS` and "day" that cover [start, end]."""
    totals: dict[date, dict] = {}
    for row in rows:
        if start <= row["day"] <= end:
            into = totals.setdefault(row["day"], {"requests": 0, "errors": 0, "cost": ZERO})
            into["requests"] += row["requests"]
            into["errors"] += row["requests"] if _failed(row) else 0
            into["cost"] += row["cost"]
    empty = {"requests": 0, "errors": 0, "cost": ZERO}
    return [DayPoint(day=day, **totals.get(day, empty)) for day in days(start, end)]


# --- the dashboard ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dashboard:
    start: date
    end: date
    totals: Totals
    revenue: Decimal
    errors_by_type: list[tuple[str, int, float | None]]  # type, requests, share of all requests
    savings: Savings
    latency: Latency
    top_tenants: list[Share]
    top_models: list[Share]
    top_projects: list[Share]  # "tenant/project", across tenants
    by_endpoint: list[Share]  # keyed by UsageRecord.endpoint; shown by `endpoint_label`
    budgets: list[BudgetLine]
    alerts: list[BudgetAlert]
    invoices: list[Invoice]
    daily: list[DayPoint]  # the last CHART_DAYS days, whatever the period
    tenants: int = 0
    active_tenants: int = 0


def _tenant_figures(*, start: date, end: date, today: date) -> tuple[list[dict], dict[int, Decimal] | None]:
    """`_USAGE` per tenant and project over [start, end], and the month-to-date spend per tenant,
    in one aggregate when the two ranges overlap or touch (every period the form offers but a
    custom one that ends before last month's last day): thousands of tenants make each pass over
    their rows count, and today's raw records are read once. The month-to-date spend is None
    when it needs its own query (`budget_lines` makes it)."""
    month = month_start(today)
    keys = ["tenant_id", "project_id"]
    if month > end + timedelta(days=1):
        return _aggregate(start=start, end=end, keys=keys, measures=_USAGE, today=today), None
    first = min(start, month)
    measures = dict(_USAGE)
    if (first, today) != (start, end):  # the period's measures: its own days only
        until = day_start(end + timedelta(days=1))
        for name, m in _USAGE.items():
            measures[name] = m.restricted(
                rollup_where=Q(day__gte=start, day__lte=end),
                raw_where=Q(created_at__gte=day_start(start), created_at__lt=until),
            )
    measures["month_to_date"] = _USAGE["cost"]
    if first != month:
        measures["month_to_date"] = _USAGE["cost"].restricted(
            rollup_where=Q(day__gte=month), raw_where=Q(created_at__gte=day_start(month))
        )
    rows = _aggregate(start=first, end=today, keys=keys, measures=measures, today=today)
    spend: dict[int, Decimal] = {}
    for row in rows:
        if row["month_to_date"]:
            spend[row["tenant_id"]] = spend.get(row["tenant_id"], ZERO) + row["month_to_date"]
    # A row with no request in the period is one the period's own aggregate would not have had.
    return [row for row in rows if row["requests"]], spend


def dashboard_summary(*, start: date, end: date, today: date | None = None, top: int = 10) -> Dashboard:
    """Every tenant over [start, end] (UTC days, both included), for the admin's home page."""
    today = today or utc_today()
    by_project, month_to_date = _tenant_figures(start=start, end=end, today=today)
    by_tenant = _fold(by_project, "tenant_id")
    totals = Totals.of(
        {name: sum((row[name] for row in by_tenant), _value(m.kind, None)) for name, m in _USAGE.items()}
    )
    markups = _markups()
    slugs = dict(Tenant.objects.values_list("id", "slug"))
    revenue = ZERO
    for row in by_tenant:
        revenue += _revenue(row["cost"], markups.get(row["tenant_id"]))

    def slug(row: dict) -> str:
        return slugs.get(row["tenant_id"], str(row["tenant_id"]))

    tenants = [
        Share(
            key=slug(row),
            tenant_id=row["tenant_id"],
            totals=Totals.of(row),
            share=ratio(row["cost"], totals.cost),
            revenue=_revenue(row["cost"], markups.get(row["tenant_id"])),
        )
        for row in _largest(by_tenant, top, name=slug)
    ]

    # One query for the platform-wide figures: per model and endpoint (folded each way), errors
    # by type, latency, savings; and, when the period holds the chart's days (the default
    # periods do), for the chart too, per day: today's raw records are read once for both.
    chart_start = today - timedelta(days=CHART_DAYS - 1)
    if start <= chart_start and end >= today:
        per_day = _aggregate(start=start, end=end, keys=[*_PLATFORM_KEYS, "day"], measures=_PLATFORM, today=today)
        platform = _platform_fold(per_day)
        daily = _platform_daily(per_day, start=chart_start, end=today)
    else:
        platform = _aggregate(start=start, end=end, keys=_PLATFORM_KEYS, measures=_PLATFORM, today=today)
        daily = _daily(start=chart_start, end=today, today=today)
    by_model_endpoint = _platform_usage(platform)
    models = _shares(by_model_endpoint, "model", totals.cost)
    errors_by_type = sorted(
        (
            (error_type or "(none)", requests, ratio(requests, totals.requests))
            for error_type, requests in _platform_errors(platform).items()
        ),
        key=lambda item: (-item[1], item[0]),
    )
    # Successful requests only: an error answered in 2 ms says nothing about the providers' latency.
    histogram = _platform_histogram(platform)
    status_counts = dict(Tenant.objects.values_list("status").annotate(n=Count("id")).order_by())
    return Dashboard(
        start=start,
        end=end,
        totals=totals,
        revenue=revenue,
        errors_by_type=errors_by_type,
        savings=_platform_savings(platform),
        latency=_latency(histogram),
        top_tenants=tenants[:top],
        top_models=models[:top],
        top_projects=project_shares(
            start=start,
            end=end,
            total_cost=totals.cost,
            today=today,
            qualified=True,
            rows=by_project,
            slugs=slugs,
            top=top,
        ),
        by_endpoint=_shares(by_model_endpoint, "endpoint", totals.cost),
        budgets=budget_lines(today=today, spend=month_to_date),
        alerts=list(BudgetAlert.objects.select_related("tenant").order_by("-created_at", "-id")[:10]),
        invoices=list(Invoice.objects.select_related("tenant").order_by("-generated_at", "-id")[:10]),
        daily=daily,
        tenants=sum(status_counts.values()),
        active_tenants=status_counts.get(Tenant.Status.ACTIVE, 0),
    )


# --- one tenant ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyLine:
    id: int
    name: str
    display: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    monthly_budget: Decimal | None = None  # the key's own budget; None: none of its own
    month_to_date: Decimal | None = None  # the key's spend this month, only for a key with a budget

    @property
    def budget_used(self) -> float | None:
        return ratio(self.month_to_date, self.monthly_budget) if self.monthly_budget else None


@dataclass(frozen=True, slots=True)
class TenantOverview:
    tenant: Tenant
    subscription: Subscription | None
    start: date
    end: date
    totals: Totals
    revenue: Decimal
    by_model: list[Share]
    by_endpoint: list[Share]  # keyed by UsageRecord.endpoint; shown by `endpoint_label`
    by_project: list[Share]  # keyed by project name, NO_PROJECT for keys without one
    errors_by_type: list[tuple[str, int, float | None]]
    savings: Savings
    latency: Latency
    daily: list[DayPoint]
    month_to_date: Decimal
    budget: Decimal | None
    keys: list[KeyLine]
    alerts: list[BudgetAlert]
    invoices: list[Invoice]
    recent_errors: list[UsageRecord]

    @property
    def budget_used(self) -> float | None:
        return ratio(self.month_to_date, self.budget) if self.budget else None


def _key_month_spend(*, tenant_id: int, today: date):
    """A key's cost this month from its raw records (rollups are not per key), in the key query
    itself: evaluated only for keys with a budget of their own, NULL for the others."""
    spend = (
        UsageRecord.objects.filter(
            tenant_id=tenant_id, api_key_id=OuterRef("pk"), created_at__gte=day_start(month_start(today))
        )
        .values("api_key_id")
        .annotate(total=MoneySum("cost"))
        .values("total")
    )
    return Case(
        When(monthly_budget__isnull=False, then=Coalesce(Subquery(spend), Value(ZERO))),
        default=Value(None),
        output_field=MoneySumField(),  # a DecimalField would misread SQLite's scaled integer
    )


def tenant_overview(
    *, tenant_id: int, start: date, end: date, today: date | None = None, now: datetime | None = None
) -> TenantOverview:
    """One tenant over [start, end]: usage per day and per model, limits, keys, alerts, invoices, errors.

    Raises Tenant.DoesNotExist for an unknown id.
    """
    today = today or utc_today()
    now = now or datetime.now(UTC)
    tenant = Tenant.objects.get(pk=tenant_id)
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    markup = subscription.plan.markup_percent if subscription else None

    rows = _aggregate(
        start=start, end=end, keys=["model", "endpoint"], measures=_USAGE, tenant_id=tenant_id, today=today
    )
    totals = Totals.of({name: sum((row[name] for row in rows), _value(m.kind, None)) for name, m in _USAGE.items()})
    by_model = _shares(rows, "model", totals.cost)
    errors = _aggregate(
        start=start,
        end=end,
        keys=["error_type"],
        measures={"requests": _requests()},
        tenant_id=tenant_id,
        where=_ERROR,
        today=today,
    )
    histogram = _aggregate(start=start, end=end, measures=_HISTOGRAM, tenant_id=tenant_id, where=_SUCCESS, today=today)[
        0
    ]
    keys = [
        KeyLine(
            id=key.id,
            name=key.name,
            display=key.display,
            status=key.status_at(now),
            created_at=key.created_at,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
            monthly_budget=key.monthly_budget,
            month_to_date=key.month_spend,
        )
        for key in ApiKey.objects.filter(tenant_id=tenant_id)
        .annotate(month_spend=_key_month_spend(tenant_id=tenant_id, today=today))
        .order_by("revoked_at", "-created_at")
    ]
    recent_errors = list(
        UsageRecord.objects.filter(_ERROR, tenant_id=tenant_id)
        .only("request_id", "created_at", "model", "endpoint", "status_code", "error_type", "latency_ms")
        .order_by("-created_at")[:20]
    )
    return TenantOverview(
        tenant=tenant,
        subscription=subscription,
        start=start,
        end=end,
        totals=totals,
        revenue=_revenue(totals.cost, markup),
        by_model=by_model,
        by_endpoint=_shares(rows, "endpoint", totals.cost),
        by_project=project_shares(start=start, end=end, total_cost=totals.cost, tenant_id=tenant_id, today=today),
        errors_by_type=sorted(
            ((r["error_type"] or "(none)", r["requests"], ratio(r["requests"], totals.requests)) for r in errors),
            key=lambda item: (-item[1], item[0]),
        ),
        savings=_savings(start=start, end=end, tenant_id=tenant_id, today=today),
        latency=_latency(histogram),
        daily=_daily(start=start, end=end, tenant_id=tenant_id, today=today),
        month_to_date=_month_to_date(today=today, tenant_id=tenant_id).get(tenant_id, ZERO),
        budget=subscription.effective_budget if subscription else None,
        keys=keys,
        alerts=list(BudgetAlert.objects.filter(tenant_id=tenant_id).order_by("-created_at", "-id")[:10]),
        invoices=list(Invoice.objects.filter(tenant_id=tenant_id).order_by("-period", "-sequence", "kind")[:12]),
        recent_errors=recent_errors,
    )


# --- tenants side by side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    tenant_id: int
    slug: str
    name: str
    status: str
    plan: str
    current: Totals
    previous: Totals

    @property
    def spend(self) -> Decimal:
        return self.current.cost

    @property
    def growth(self) -> float | None:
        """Spend growth against the previous period, in percent; None when the previous period
        spent too little to compare with (see `is_new`): nothing, or under a tenth of this one."""
        previous, current = self.previous.cost, self.current.cost
        if previous <= 0 or previous * GROWTH_MIN_PREVIOUS_RATIO < current:
            return None
        return float((current - previous) * 100 / previous)

    @property
    def is_new(self) -> bool:
        """Spending now, next to nothing before: a tenant that started in (or just before) the
        period. Its growth would read +4,328 % or +11,998 %, which says nothing."""
        return self.growth is None and self.current.cost > 0


# A previous period that spent less than a tenth of this one is too small to measure growth
# against: the page says "new" rather than a figure above +900 %.
GROWTH_MIN_PREVIOUS_RATIO = 10


COMPARISON_SORTS = {
    "tenant": lambda row: row.slug,
    "spend": lambda row: row.current.cost,
    "previous": lambda row: row.previous.cost,
    "growth": lambda row: row.growth,
    "requests": lambda row: row.current.requests,
    "error_rate": lambda row: row.current.error_rate,
    "tokens": lambda row: row.current.tokens,
    "cost_per_1k": lambda row: row.current.cost_per_1k_tokens,
}


def previous_period(*, start: date, end: date) -> tuple[date, date]:
    """The period of the same length just before [start, end]."""
    length = (end - start).days + 1
    return start - timedelta(days=length), start - timedelta(days=1)


def tenant_comparison(
    *, start: date, end: date, sort: str = "-spend", today: date | None = None
) -> list[ComparisonRow]:
    """Every tenant over [start, end] against the period of the same length before it.

    One query over both periods (each measure twice, split by day); tenants without usage are
    listed too, with zeros. `sort` is a key of COMPARISON_SORTS, "-" first for descending;
    empty values (no growth, no rate) sort last either way.
    """
    before_start, _ = previous_period(start=start, end=end)
    since = day_start(start)
    measures = {}
    for name, m in _USAGE.items():
        measures[f"cur_{name}"] = m.restricted(rollup_where=Q(day__gte=start), raw_where=Q(created_at__gte=since))
        measures[f"pre_{name}"] = m.restricted(rollup_where=Q(day__lt=start), raw_where=Q(created_at__lt=since))
    rows = {
        row["tenant_id"]: row
        for row in _aggregate(start=before_start, end=end, keys=["tenant_id"], measures=measures, today=today)
    }
    plans = dict(Subscription.objects.values_list("tenant_id", "plan__name"))
    empty = {name: _value(m.kind, None) for name, m in measures.items()}
    current = [(name, f"cur_{name}") for name in _USAGE]
    previous = [(name, f"pre_{name}") for name in _USAGE]
    result = []
    # Tuples, not model instances: one per tenant, thousands of them.
    for tenant_id, slug, name, status in Tenant.objects.order_by("slug").values_list("id", "slug", "name", "status"):
        row = rows.get(tenant_id, empty)
        result.append(
            ComparisonRow(
                tenant_id=tenant_id,
                slug=slug,
                name=name,
                status=status,
                plan=plans.get(tenant_id, ""),
                current=Totals(**{name: row[column] for name, column in current}),
                previous=Totals(**{name: row[column] for name, column in previous}),
            )
        )
    return comparison_sort(result, sort)


def comparison_sort(rows: list[ComparisonRow], sort: str) -> list[ComparisonRow]:
    descending = sort.startswith("-")
    key = COMPARISON_SORTS.get(sort.lstrip("-"))
    if key is None:
        raise ValueError(f"unknown sort {sort!r}")
    present = [row for row in rows if key(row) is not None]
    missing = [row for row in rows if key(row) is None]
    present.sort(key=lambda row: row.slug)  # ties in tenant order, whatever the direction
    present.sort(key=key, reverse=descending)
    return present + missing


# --- live limit counters: read from the store that enforces them (gateway.limits) ----------


@dataclass(frozen=True, slots=True)
class LiveLimits:
    usage: LiveUsage | None
    error: str = ""


def live_limits(*, tenant_id: int) -> LiveLimits | None:
    """The tenant's current-window counters from the limits store (the one that enforces them).
    A store that cannot be read is reported, never raised: the page still renders."""
    try:
        return LiveLimits(usage=live_usage_sync(tenant_id))
    except Exception as exc:  # noqa: BLE001 (Redis down or slow: say so on the page)
        log.warning("live limit counters of tenant %s unreadable: %s", tenant_id, exc)
        return LiveLimits(usage=None, error=f"the limits store could not be read ({type(exc).__name__})")
