"""Reads on billing data.

Usage of past days comes from the daily rollups (`UsageRollup`), usage of today and of days
not rolled up yet from the raw records: every report here is "rollups plus raw", and gives
what the raw records alone would give once the rollup is current.
"""

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connections
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Q, QuerySet, Sum, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone

from tenants.crypto import decrypt
from tenants.models import ApiKey

from .aggregates import MoneySum, money_from_db
from .invoicing import TOKEN_TYPES, ZERO
from .models import (
    Invoice,
    InvoiceCostCentre,
    InvoiceRun,
    ModelPrice,
    SharedCost,
    Subscription,
    UsageModelDay,
    UsageRecord,
    UsageRollup,
    UsageRollupDay,
    UsageTenantDay,
)
from .periods import PeriodState, day_runs, day_start, days, month_start, period_bounds, period_state, previous_month

_ZERO = Decimal(0)


def price_in_force(*, model_id: int, at: datetime) -> ModelPrice | None:
    return ModelPrice.objects.filter(model_id=model_id, effective_from__lte=at).order_by("-effective_from").first()


def money_str(amount: Decimal) -> str:
    """A decimal string with at least two places and no trailing noise: "0.0000123", "12.50"."""
    text = f"{amount:f}"
    if "." not in text:
        return text + ".00"
    whole, fraction = text.split(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction.ljust(2, '0')}"


def utc_today() -> date:
    return timezone.now().astimezone(UTC).date()


# --- where usage comes from ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageSources:
    """Rollup rows for the rolled-up days of a range, raw records for the others; with a
    summary model asked for, its rows for the rolled-up days whose summaries are current."""

    rollups: QuerySet | None
    raw: QuerySet | None
    summaries: QuerySet | None = None


SUMMARY_MODELS = (UsageModelDay, UsageTenantDay)


def usage_sources(
    *,
    start: date,
    end: date,
    tenant_id: int | None = None,
    today: date | None = None,
    raw_only: bool = False,
    summary: type[UsageModelDay | UsageTenantDay] | None = None,
) -> UsageSources:
    """Days before today with a rollup are read from rollups; the rest (today included) raw.

    `raw_only`: every day from the raw records (what rollups do not keep: keys, end users, tags);
    the caller makes sure no day of the range is pruned (`usage_pruned_through`).
    `summary` (one of SUMMARY_MODELS, or None): the rolled-up days whose summaries are current
    (`UsageRollupDay.summarized_at`) are read from it instead of their rollups; the caller makes
    sure it holds what the report needs (console/analytics.py `_summary_for`).
    """
    today = today or utc_today()
    rolled: dict[date, bool] = {}  # day: its summaries are current
    if not raw_only:
        rolled = dict(
            UsageRollupDay.objects.filter(day__gte=start, day__lte=end, day__lt=today)
            .annotate(current=ExpressionWrapper(Q(summarized_at=F("rolled_up_at")), output_field=BooleanField()))
            .values_list("day", "current")
        )
    summarized = sorted(day for day, current in rolled.items() if current and summary is not None)
    unsummarized = sorted(set(rolled) - set(summarized))
    rollups = raw = summaries = None
    if summarized:
        summaries = summary.objects.filter(day__in=summarized)
        if tenant_id is not None:
            summaries = summaries.filter(tenant_id=tenant_id)
    if unsummarized:
        rollups = UsageRollup.objects.filter(day__in=unsummarized)
        if tenant_id is not None:
            rollups = rollups.filter(tenant_id=tenant_id)
    runs = day_runs(day for day in days(start, end) if day not in rolled)
    if runs:
        where = Q()
        for first, last in runs:
            where |= Q(created_at__gte=day_start(first), created_at__lt=day_start(last + timedelta(days=1)))
        raw = UsageRecord.objects.filter(where)
        if tenant_id is not None:
            raw = raw.filter(tenant_id=tenant_id)
    return UsageSources(rollups=rollups, raw=raw, summaries=summaries)


def _union_grouped(parts: list[QuerySet], key: str, columns: dict[str, type]) -> list[dict]:
    """Re-group per-source groupings in SQL, so that the order is the database's, as before.

    Each part is `.values(key).annotate(s_<column>=..., in the order of `columns`)`; the outer
    query sums each column per key and orders by key with the database's collation.
    """
    # The parts' own database: the replica inside `reading_replica()` (proxy_platform/replicas.py).
    connection = connections[parts[0].db]
    sqls, params = [], []
    for index, part in enumerate(parts):
        sql, part_params = part.order_by().query.sql_with_params()
        sqls.append(f"SELECT * FROM ({sql}) AS part{index}")  # noqa: S608 (SQL of our querysets)
        params.extend(part_params)
    quote = connection.ops.quote_name
    sums = ", ".join(f"COALESCE(SUM({quote('s_' + name)}), 0)" for name in columns)
    query = (
        f"SELECT {quote(key)}, {sums} FROM ({' UNION ALL '.join(sqls)}) AS parts "  # noqa: S608 (our own names)
        f"GROUP BY {quote(key)} ORDER BY {quote(key)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        rows = cursor.fetchall()
    return [
        {key: row[0], **{name: _as(kind, value) for (name, kind), value in zip(columns.items(), row[1:], strict=True)}}
        for row in rows
    ]


def _as(kind: type, value):
    if kind is int:
        return int(value)
    return money_from_db(value)  # on SQLite, MoneySum's integer count of 10⁻¹² units


def _merge_totals(totals: Iterable[dict]) -> dict:
    merged: dict = {}
    for part in totals:
        for alias, value in part.items():
            name = alias.removeprefix("s_")
            merged[name] = merged.get(name, 0) + value
    return merged


# Aliased s_<name>: an aggregate may not take the name of a field it sums.
_RAW_TOTALS = {
    "s_requests": Count("id"),
    "s_errors": Count("id", filter=Q(status_code__gte=400) | ~Q(error_type="")),
    "s_cache_hits": Count("id", filter=Q(cache_hit=True)),
    "s_input_tokens": Coalesce(Sum("input_tokens"), 0),
    "s_output_tokens": Coalesce(Sum("output_tokens"), 0),
    "s_cost": Coalesce(MoneySum("cost"), _ZERO),
}
_ROLLUP_TOTALS = {
    "s_requests": Coalesce(Sum("requests"), 0),
    "s_errors": Coalesce(Sum("requests", filter=Q(status_code__gte=400) | ~Q(error_type="")), 0),
    "s_cache_hits": Coalesce(Sum("requests", filter=Q(cache_hit=True)), 0),
    "s_input_tokens": Coalesce(Sum("input_tokens"), 0),
    "s_output_tokens": Coalesce(Sum("output_tokens"), 0),
    "s_cost": Coalesce(MoneySum("cost"), _ZERO),
}


GROUPINGS = ("project", "end_user", "key")


class UsageGroupingUnavailable(Exception):
    """The grouping needs raw records that the retention job has deleted."""


TAG_PREFIX = "tag:"


@dataclass(frozen=True, slots=True)
class UsageGrouping:
    """What `/v1/usage?group_by=` breaks the usage down by: "project", "end_user", "key", or a
    tag's value ("tag", with the tag's name)."""

    kind: str
    tag: str = ""

    @property
    def label(self) -> str:
        return TAG_PREFIX + self.tag if self.kind == "tag" else self.kind

    @property
    def raw_only(self) -> bool:
        """Rollups keep the project only: keys, end users and tags are read from raw records."""
        return self.kind != "project"


def usage_pruned_through(*, start: date, end: date) -> date | None:
    """The last day of [start, end] whose raw records the retention job deleted, if any."""
    return (
        UsageRollupDay.objects.filter(day__gte=start, day__lte=end, pruned=True)
        .order_by("-day")
        .values_list("day", flat=True)
        .first()
    )


def _group_expression(grouping: UsageGrouping):
    """The SQL value a grouping groups by (NULL: no project, end user or tag)."""
    if grouping.kind == "project":
        return F("project__name")  # a LEFT JOIN: a deleted project's id finds no name
    if grouping.kind == "end_user":
        return NullIf(F("end_user"), Value(""))
    if grouping.kind == "key":
        return F("api_key_id")
    return KeyTextTransform(grouping.tag, "tags")  # one key, never a path: "a__b" is a name


def _usage_groups(parts: list[tuple[QuerySet, bool]], grouping: UsageGrouping, tenant_id: int) -> list[dict]:
    rows = _union_grouped(
        [
            qs.annotate(attribution=_group_expression(grouping))
            .values("attribution")
            .annotate(
                s_requests=Sum("requests") if is_rollup else Count("id"),
                s_input_tokens=Sum("input_tokens"),
                s_output_tokens=Sum("output_tokens"),
                s_cost=MoneySum("cost"),
            )
            for qs, is_rollup in parts
        ],
        "attribution",
        {"requests": int, "input_tokens": int, "output_tokens": int, "cost": Decimal},
    )
    groups = [
        {
            "group": row["attribution"],
            "requests": row["requests"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cost": money_str(row["cost"]),
        }
        for row in rows
    ]
    if grouping.kind == "key":
        # By the key's display form and name: never a secret, and a key of this tenant only.
        keys = ApiKey.objects.filter(tenant_id=tenant_id).in_bulk([g["group"] for g in groups if g["group"]])
        for group in groups:
            key = keys.get(group["group"])
            group["key_id"] = key.id if key else None
            group["name"] = key.name if key else None
            group["group"] = key.display if key else None
    return groups


def usage_summary(*, tenant_id: int, start: date, end: date, grouping: UsageGrouping | None = None) -> dict:
    """A tenant's usage between two dates, both included (UTC days), in the /v1/usage shape.

    With a `grouping`, "groups" breaks the same usage down (their sums are the totals). A
    grouping that rollups do not keep reads every day from the raw records, and is refused
    (`UsageGroupingUnavailable`) for a range that reaches a day whose raw records were pruned.
    """
    if grouping is not None and grouping.raw_only:
        pruned = usage_pruned_through(start=start, end=end)
        if pruned is not None:
            raise UsageGroupingUnavailable(
                f"Usage by {grouping.label} is kept for the last {settings.BILLING_USAGE_RETENTION_DAYS} days: "
                f"start after {pruned.isoformat()}, or group by project."
            )
    sources = usage_sources(
        start=start, end=end, tenant_id=tenant_id, raw_only=grouping is not None and grouping.raw_only
    )
    raw, rollups = sources.raw, sources.rollups
    parts = []
    if rollups is not None:
        parts.append((rollups, True))
    if raw is not None:
        parts.append((raw, False))

    totals = _merge_totals(qs.aggregate(**(_ROLLUP_TOTALS if is_rollup else _RAW_TOTALS)) for qs, is_rollup in parts)
    totals["cost"] = money_str(_as(Decimal, totals["cost"]))
    by_model = _union_grouped(
        [
            qs.values("model").annotate(
                s_requests=Sum("requests") if is_rollup else Count("id"),
                s_input_tokens=Sum("input_tokens"),
                s_output_tokens=Sum("output_tokens"),
                s_cost=MoneySum("cost"),
            )
            for qs, is_rollup in parts
        ],
        "model",
        {"requests": int, "input_tokens": int, "output_tokens": int, "cost": Decimal},
    )
    by_endpoint = _union_grouped(
        [
            qs.values("endpoint").annotate(
                s_requests=Sum("requests") if is_rollup else Count("id"),
                s_errors=(
                    Coalesce(Sum("requests", filter=Q(status_code__gte=400)), 0)
                    if is_rollup
                    else Count("id", filter=Q(status_code__gte=400))
                ),
                s_cost=MoneySum("cost"),
            )
            for qs, is_rollup in parts
        ],
        "endpoint",
        {"requests": int, "errors": int, "cost": Decimal},
    )
    by_error_type = _union_grouped(
        [
            qs.exclude(error_type="")
            .values("error_type")
            .annotate(s_requests=Sum("requests") if is_rollup else Count("id"))
            for qs, is_rollup in parts
        ],
        "error_type",
        {"requests": int},
    )
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    summary = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "currency": subscription.plan.currency if subscription else "USD",
        "totals": totals,
        "by_model": [{**row, "cost": money_str(row["cost"])} for row in by_model],
        "by_endpoint": [{**row, "cost": money_str(row["cost"])} for row in by_endpoint],
        "by_error_type": by_error_type,
    }
    if grouping is not None:
        summary["group_by"] = grouping.label
        summary["groups"] = _usage_groups(parts, grouping, tenant_id)
    return summary


# --- usage by end user ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndUserUsage:
    end_user: str  # "" for requests that named no end user
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


def usage_by_end_user(*, tenant_id: int, period: date) -> list[EndUserUsage]:
    """A tenant's usage of one month per end user, from the raw records (rollups keep no end
    users), largest cost first: one aggregate over the index (tenant, created_at).

    Raises UsageGroupingUnavailable when a day of the month was pruned by the retention job.
    """
    start, end = period_bounds(period)
    last = end.date() - timedelta(days=1)
    pruned = usage_pruned_through(start=period, end=last)
    if pruned is not None:
        raise UsageGroupingUnavailable(
            f"the raw records of {pruned.isoformat()} were pruned (retention): no end users left for {period:%Y-%m}"
        )
    rows = (
        UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
        .values("end_user")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400) | ~Q(error_type="")),
            input_sum=Coalesce(Sum("input_tokens"), 0),
            output_sum=Coalesce(Sum("output_tokens"), 0),
            cost_sum=Coalesce(MoneySum("cost"), _ZERO),
        )
        .order_by()
    )
    usages = [
        EndUserUsage(
            end_user=row["end_user"],
            requests=row["requests"],
            errors=row["errors"],
            input_tokens=int(row["input_sum"]),
            output_tokens=int(row["output_sum"]),
            cost=_as(Decimal, row["cost_sum"]),
        )
        for row in rows
    ]
    return sorted(usages, key=lambda u: (-u.cost, u.end_user))


# --- billable usage ------------------------------------------------------------------------


@dataclass(slots=True)
class BillableUsage:
    """Sums of a tenant's billable records at one price row and long-context tier, of one project
    (cache hits and unpriced excluded); `price_tier_id` None: the base prices; `project_id` None:
    keys without a project (a deleted project's id is left for the caller to find no project by)."""

    tenant_id: int
    price_id: int
    price_tier_id: int | None = None
    project_id: int | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = _ZERO


def billable_usage(*, start: date, end: date, today: date | None = None) -> list[BillableUsage]:
    """Per tenant, price row, tier and project, in SQL over rollups plus raw records; a handful of rows."""
    sources = usage_sources(start=start, end=end, today=today)
    merged: dict[tuple[int, int, int, int], BillableUsage] = {}
    for qs in (sources.rollups, sources.raw):
        if qs is None:
            continue
        rows = (
            qs.filter(cache_hit=False, price__isnull=False)
            .values("tenant_id", "price_id", "price_tier_id", "project_id")
            .annotate(
                input_sum=Sum("input_tokens"),
                cached_sum=Sum("cached_input_tokens"),
                write_sum=Sum("cache_write_tokens"),
                write_1h_sum=Sum("cache_write_1h_tokens"),
                output_sum=Sum("output_tokens"),
                cost_sum=MoneySum("cost"),
            )
            .order_by()
        )
        for row in rows:
            key = (row["tenant_id"], row["price_id"], row["price_tier_id"] or 0, row["project_id"] or 0)
            usage = merged.setdefault(
                key,
                BillableUsage(
                    tenant_id=key[0],
                    price_id=key[1],
                    price_tier_id=row["price_tier_id"],
                    project_id=row["project_id"],
                ),
            )
            usage.input_tokens += int(row["input_sum"])
            usage.cached_input_tokens += int(row["cached_sum"])
            usage.cache_write_tokens += int(row["write_sum"])
            usage.cache_write_1h_tokens += int(row["write_1h_sum"])
            usage.output_tokens += int(row["output_sum"])
            usage.cost += _as(Decimal, row["cost_sum"])
    return [merged[key] for key in sorted(merged)]


def spend_by_tenant(*, start: date, end: date, today: date | None = None) -> dict[int, Decimal]:
    """Exact provider cost per tenant over a range of days (rollups plus raw)."""
    spend: dict[int, Decimal] = {}
    for usage in billable_usage(start=start, end=end, today=today):
        spend[usage.tenant_id] = spend.get(usage.tenant_id, _ZERO) + usage.cost
    return spend


# --- invoices ------------------------------------------------------------------------------


def invoices_for_period(*, period: date) -> QuerySet[Invoice]:
    """Every invoice and credit note of a month, in a stable order (by number)."""
    return Invoice.objects.filter(period=period).select_related("tenant").order_by("number")


@dataclass(frozen=True, slots=True)
class CostCentreTotal:
    """A project's part of an invoice's usage lines: the sum of its shares of every line."""

    project: str  # "" for keys without a project
    tokens: Decimal
    amount: Decimal


def invoice_cost_centres(*, invoice_id: int) -> list[CostCentreTotal]:
    """The invoice's usage per project (cost centre), largest amount first: one query. Their
    amounts add up to the invoice's usage lines; empty for an invoice finalized before cost
    centres were recorded."""
    rows = (
        InvoiceCostCentre.objects.filter(line__invoice_id=invoice_id)
        .values("project")
        .annotate(tokens=Sum("quantity"), total=Sum("amount"))
        .order_by()
    )
    totals = [CostCentreTotal(project=row["project"], tokens=row["tokens"], amount=row["total"]) for row in rows]
    return sorted(totals, key=lambda c: (-abs(c.amount), c.project))


def shared_cost_total(*, period: date) -> dict[str, Decimal]:
    """The month's shared infrastructure cost per currency."""
    rows = SharedCost.objects.filter(period=period).values("currency").annotate(total=MoneySum("amount")).order_by()
    return {row["currency"]: row["total"] for row in rows}


@dataclass(frozen=True, slots=True)
class FinanceRow:
    tenant: str
    number: str
    status: str
    currency: str
    revenue: Decimal
    provider_cost: Decimal
    shared_cost: Decimal
    margin: Decimal


def finance_summary(*, period: date) -> list[FinanceRow]:
    """Revenue, provider cost, shared cost and margin per tenant for a month.

    Revenue is what the tenant's documents of the month come to (invoices plus credit notes);
    provider cost is the sum of the usage lines, what the providers charge us for that usage;
    margin = revenue − provider cost − shared infrastructure cost.
    """
    usage_types = [str(line_type) for line_type in TOKEN_TYPES]
    invoices = (
        Invoice.objects.filter(period=period)
        .select_related("tenant")
        .annotate(
            usage_amount=Coalesce(MoneySum("lines__amount", filter=Q(lines__line_type__in=usage_types)), _ZERO),
            shared_amount=Coalesce(MoneySum("lines__amount", filter=Q(lines__line_type="shared_cost")), _ZERO),
        )
        .order_by("tenant__slug", "number")
    )
    rows = []
    for invoice in invoices:
        rows.append(
            FinanceRow(
                tenant=invoice.tenant.slug,
                number=invoice.number,
                status=invoice.get_status_display() if invoice.kind == Invoice.Kind.INVOICE else "credit note",
                currency=invoice.currency,
                revenue=invoice.total,
                provider_cost=invoice.usage_amount,
                shared_cost=invoice.shared_amount,
                margin=invoice.total - invoice.usage_amount - invoice.shared_amount,
            )
        )
    return rows


def period_has_finalized_invoices(*, period: date) -> bool:
    return Invoice.objects.filter(period=period, status=Invoice.Status.FINALIZED).exists()


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    tenant: str
    budget: Decimal
    spend: Decimal

    @property
    def ratio(self) -> float:
        return float(self.spend / self.budget) if self.budget else float("inf")


def budget_statuses(*, now: datetime) -> list[BudgetStatus]:
    """Month-to-date provider cost of every tenant with a budget, against that budget."""
    today = now.astimezone(UTC).date()
    spend = spend_by_tenant(start=today.replace(day=1), end=today, today=today)
    statuses = []
    for subscription in Subscription.objects.select_related("tenant", "plan").order_by("tenant__slug"):
        budget = subscription.effective_budget
        if budget is None:
            continue
        statuses.append(
            BudgetStatus(tenant=subscription.tenant.slug, budget=budget, spend=spend.get(subscription.tenant_id, _ZERO))
        )
    return statuses


@dataclass(frozen=True, slots=True)
class DuePeriod:
    period: date
    finalize: bool


def invoice_periods_due(*, now: datetime, months_back: int = 3) -> list[DuePeriod]:
    """The months the daily job generates: the open month and a month in grace as drafts; a month
    whose grace has passed is finalized, once (`InvoiceRun.closed_at`), if it has anything to bill.
    Months before the platform's first usage are left alone."""
    grace = settings.BILLING_INVOICE_GRACE_DAYS
    current = month_start(now.astimezone(UTC).date())
    due = [DuePeriod(current, finalize=False)]
    closed = set(InvoiceRun.objects.filter(closed_at__isnull=False).values_list("period", flat=True))
    period = current
    for _ in range(months_back):
        period = previous_month(period)
        state = period_state(period, now=now, grace_days=grace)
        if state is PeriodState.GRACE:
            due.append(DuePeriod(period, finalize=False))
        elif state is PeriodState.CLOSED and period not in closed and _has_usage_or_run(period):
            due.append(DuePeriod(period, finalize=True))
    return due


def _has_usage_or_run(period: date) -> bool:
    start, end = period_bounds(period)
    return (
        InvoiceRun.objects.filter(period=period).exists()
        or UsageRollupDay.objects.filter(day__gte=period, day__lt=end.date()).exists()
        or UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).exists()
    )


# --- spend and alert settings, read on the hot path and by the alert tasks ------------------


def month_to_date_spend(*, tenant_id: int, now: datetime) -> Decimal:
    """The tenant's cost this UTC month, one SQL aggregate over raw records (index tenant, created_at).

    Raw records are enough: retention keeps at least a month plus the grace period of them.
    """
    start, end = period_bounds(month_start(now.astimezone(UTC).date()))
    total = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end).aggregate(
        total=Coalesce(MoneySum("cost"), ZERO)
    )["total"]
    return total


def month_to_date_spend_by_key(*, tenant_id: int, key_ids: Collection[int], now: datetime) -> dict[int, Decimal]:
    """The cost of each of the tenant's `key_ids` this UTC month (0 for a key without records): one
    aggregate over the tenant's raw records of the month (index tenant, created_at), by key.

    Scoped by tenant as well as by key, so that a key id of another tenant counts nothing.
    """
    start, end = period_bounds(month_start(now.astimezone(UTC).date()))
    rows = (
        UsageRecord.objects.filter(
            tenant_id=tenant_id, api_key_id__in=list(key_ids), created_at__gte=start, created_at__lt=end
        )
        .values("api_key_id")
        .annotate(total=MoneySum("cost"))
        .order_by()
    )
    totals = {row["api_key_id"]: row["total"] for row in rows}
    return {key_id: totals.get(key_id) or ZERO for key_id in key_ids}


def spend_since_by(*, tenant_id: int, field: str, ids: Collection[int], since: datetime) -> dict[int, Decimal]:
    """The cost of the tenant's records since `since`, for each id of `field` ("project_id" or
    "api_key_id"; 0 for one without records): one aggregate over the tenant's records (index
    tenant, created_at). For the budget counters of projects (a month) and keys (a day)."""
    if field not in ("project_id", "api_key_id"):
        raise ValueError(field)
    rows = (
        UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=since, **{f"{field}__in": list(ids)})
        .values(field)
        .annotate(total=MoneySum("cost"))
        .order_by()
    )
    totals = {row[field]: row["total"] for row in rows}
    return {ident: totals.get(ident) or ZERO for ident in ids}


def subscription_webhook_secret_get(*, subscription: Subscription) -> str:
    """The alert webhook's signing secret, decrypted for the one caller that signs with it."""
    return decrypt(subscription.alert_webhook_secret) if subscription.alert_webhook_secret else ""
