"""Writes on billing data: usage records, daily rollups, invoices, credit notes, retention."""

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial

import httpx2
from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from tenants.crypto import decrypt, encrypt
from tenants.models import Tenant

from . import latency
from .aggregates import MoneySum, money_sum_sql
from .invoicing import (
    ZERO,
    CostMismatch,
    Line,
    PriceUsage,
    Terms,
    invoice_lines,
    invoice_total,
    provider_cost,
    shared_cost_allocate,
)
from .models import (
    BudgetAlert,
    Invoice,
    InvoiceLine,
    InvoiceRun,
    ModelPrice,
    Plan,
    Subscription,
    UsageRecord,
    UsageRollup,
    UsageRollupDay,
)
from .periods import PeriodState, day_start, month_end, month_start, period_bounds, period_state, period_str
from .pricing import Price, Tokens, request_cost
from .selectors import BillableUsage, billable_usage, shared_cost_total

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Metered:
    """What the gateway knows about one finished request, ready to be recorded."""

    request_id: str
    created_at: datetime
    tenant_id: int
    api_key_id: int | None
    model: str
    provider: str
    upstream_model: str
    endpoint: str
    status_code: int
    error_type: str
    tokens: Tokens
    price_id: int | None
    price: Price | None
    latency_ms: int
    streamed: bool
    estimated: bool
    cache_hit: bool = False
    # Not stored: for the gateway's request log line and metrics (gateway/observability.py).
    tenant_slug: str = ""
    deployment_id: int | None = None


@transaction.atomic
def subscriptions_set_plan(*, tenants: list, plan: Plan) -> int:
    """Put every given tenant on `plan`, all or nothing; tenants without a subscription get one.

    Invoices already finalized keep the plan they were issued under (they snapshot its terms).
    """
    ids = sorted(t.pk for t in tenants)
    existing = set(
        Subscription.objects.select_for_update().filter(tenant_id__in=ids).values_list("tenant_id", flat=True)
    )
    Subscription.objects.filter(tenant_id__in=existing).update(plan=plan)
    Subscription.objects.bulk_create([Subscription(tenant_id=i, plan=plan) for i in ids if i not in existing])
    return len(ids)


def usage_cost(*, metered: Metered) -> Decimal:
    """The cost `usage_record_create` stores for `metered`: also what a record spooled through a
    database outage (gateway/journal.py) settles its budget with before it is written."""
    if metered.price is None or metered.cache_hit:
        return Decimal(0)
    return request_cost(tokens=metered.tokens, price=metered.price)


def usage_record_create(*, metered: Metered) -> UsageRecord:
    """Record one request with its cost, computed here once and never again (DESIGN §3).

    A request without a price (unknown model, refused before routing) costs nothing; so does a
    cache hit, whose saving is the cost it would have had.
    """
    tokens = metered.tokens
    cost = usage_cost(metered=metered)
    return UsageRecord.objects.create(
        request_id=metered.request_id,
        created_at=metered.created_at,
        tenant_id=metered.tenant_id,
        api_key_id=metered.api_key_id,
        model=metered.model[:100],
        provider=metered.provider,
        upstream_model=metered.upstream_model,
        endpoint=metered.endpoint,
        status_code=metered.status_code,
        error_type=metered.error_type,
        input_tokens=tokens.input,
        cached_input_tokens=tokens.cached_input,
        cache_write_tokens=tokens.cache_write,
        output_tokens=tokens.output,
        cost=cost,
        price_id=metered.price_id,
        latency_ms=metered.latency_ms,
        streamed=metered.streamed,
        estimated=metered.estimated,
        cache_hit=metered.cache_hit,
    )


class BillingError(Exception):
    """An expected refusal (a month not started, a finalized invoice): reported, never retried."""


# --- rollups -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollupResult:
    days: list[date]
    records: int


_ROLLUP_KEY = ["tenant_id", "model", "endpoint", "status_code", "error_type", "cache_hit", "price_id"]
_ROLLUP_SUMS = ["input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "cost", "latency_ms"]


def _rollup_insert_sql() -> str:
    quote = connection.ops.quote_name
    key = ", ".join(quote(c) for c in _ROLLUP_KEY)
    columns = [
        "day",
        *_ROLLUP_KEY,
        "requests",
        "streamed",
        "estimated",
        *_ROLLUP_SUMS,
    ]
    sums = ", ".join(money_sum_sql(quote(c)) if c == "cost" else f"SUM({quote(c)})" for c in _ROLLUP_SUMS)
    histogram = latency.bucket_sql(quote("latency_ms"))
    columns += [name for name, _ in histogram]
    buckets = ", ".join(expression for _, expression in histogram)
    return (
        f"INSERT INTO {quote(UsageRollup._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
        f"SELECT %s, {key}, COUNT(*), "
        f"SUM(CASE WHEN {quote('streamed')} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {quote('estimated')} THEN 1 ELSE 0 END), {sums}, {buckets} "
        f"FROM {quote(UsageRecord._meta.db_table)} "
        f"WHERE {quote('created_at')} >= %s AND {quote('created_at')} < %s "
        f"GROUP BY {key}"
    )


def _raw_count(day: date) -> int:
    start = day_start(day)
    return UsageRecord.objects.filter(created_at__gte=start, created_at__lt=start + timedelta(days=1)).count()


def usage_rollup_day(*, day: date, now: datetime | None = None) -> int:
    """Roll up one UTC day whole: delete its rollups and aggregate its records again, in SQL.

    The day's `UsageRollupDay` row is locked for the transaction, so two runs of the same day
    take turns; the second finds the day current and leaves it. Returns the records rolled up.
    """
    now = now or timezone.now()
    with transaction.atomic():
        UsageRollupDay.objects.get_or_create(day=day)
        marker = UsageRollupDay.objects.select_for_update().get(day=day)
        if marker.pruned:
            return marker.records  # its raw records are gone: the rollup is all there is
        if marker.rolled_up_at is not None and marker.records == _raw_count(day):
            return marker.records
        UsageRollup.objects.filter(day=day).delete()
        field = UsageRecord._meta.get_field("created_at")
        start = day_start(day)
        params = [
            UsageRollup._meta.get_field("day").get_db_prep_value(day, connection),
            field.get_db_prep_value(start, connection),
            field.get_db_prep_value(start + timedelta(days=1), connection),
        ]
        with connection.cursor() as cursor:
            cursor.execute(_rollup_insert_sql(), params)
        # Counted from the rows just written, not from the raw table again: a record committed
        # in between would otherwise be counted without being rolled up, and never picked up.
        marker.records = UsageRollup.objects.filter(day=day).aggregate(n=Coalesce(Sum("requests"), 0))["n"]
        marker.rolled_up_at = now
        marker.save(update_fields=["records", "rolled_up_at"])
    return marker.records


def usage_rollup(*, since: date | None = None, until: date | None = None, now: datetime | None = None) -> RollupResult:
    """Roll up every closed UTC day in [since, until] whose raw records changed since its rollup.

    Without `since`, the last BILLING_ROLLUP_LOOKBACK_DAYS days: a late record (a request
    recorded after its day was rolled up) changes its day's count, and the next run does that
    day again. Today is never rolled up: reports read it raw.
    """
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    first = since or today - timedelta(days=settings.BILLING_ROLLUP_LOOKBACK_DAYS)
    last = min(until or today, today - timedelta(days=1))
    if first > last:
        return RollupResult(days=[], records=0)
    counts = dict(
        UsageRecord.objects.filter(created_at__gte=day_start(first), created_at__lt=day_start(last + timedelta(days=1)))
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("day", "n")
    )
    markers = {
        m.day: m for m in UsageRollupDay.objects.filter(day__gte=first, day__lte=last).only("day", "records", "pruned")
    }
    dirty = sorted(
        day
        for day in set(counts) | set(markers)
        if day not in markers or (not markers[day].pruned and markers[day].records != counts.get(day, 0))
    )
    records = 0
    for day in dirty:
        records += usage_rollup_day(day=day, now=now)
    if dirty:
        log.info("rolled up %d days (%d records)", len(dirty), records)
    return RollupResult(days=dirty, records=records)


# --- invoices ------------------------------------------------------------------------------


@dataclass
class InvoiceRunResult:
    period: date
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    finalized: int = 0
    kept: int = 0  # finalized before this run: never touched
    rolled_up_days: int = 0
    numbers: list[str] = field(default_factory=list)


def invoice_number(*, tenant_id: int, period: date, sequence: int, kind: str = Invoice.Kind.INVOICE) -> str:
    """Stable across runs: "INV-2024-05-000042", then "-2" for a reissue after a credit note."""
    if kind == Invoice.Kind.CREDIT_NOTE:
        return f"CN-{period:%Y-%m}-{tenant_id:06d}-{sequence}"
    base = f"INV-{period:%Y-%m}-{tenant_id:06d}"
    return base if sequence == 1 else f"{base}-{sequence}"


def _terms(subscription: Subscription | None) -> Terms:
    if subscription is None:
        return Terms()
    plan = subscription.plan
    return Terms(
        currency=plan.currency,
        base_fee=plan.monthly_base_fee,
        included_allowance=plan.included_allowance,
        markup_percent=plan.markup_percent,
        minimum_commitment=plan.minimum_commitment,
    )


_LINE_FIELDS = ["position", "line_type", "model", "price_id", "description", "quantity", "unit", "unit_price", "amount"]


def _line_values(line: InvoiceLine) -> tuple:
    return tuple(getattr(line, name) for name in ["key", *_LINE_FIELDS])


def _invoice_write(
    *,
    tenant: Tenant,
    period: date,
    current: Invoice | None,
    credited: bool,
    subscription: Subscription | None,
    lines: list[Line],
    provider_cost: Decimal,
    now: datetime,
) -> tuple[Invoice | None, str]:
    """Create or update one draft; "created", "updated", "unchanged" or "kept" (finalized)."""
    if current is not None and current.is_finalized and not credited:
        return current, "kept"
    terms = _terms(subscription)
    total = invoice_total(lines)
    fields = {
        "currency": terms.currency,
        "plan_name": subscription.plan.name if subscription else "",
        "provider_cost": provider_cost,
        "subtotal": total,
        "total": total,
    }
    if current is None or current.is_finalized:
        sequence = current.sequence + 1 if current else 1
        invoice = Invoice.objects.create(
            number=invoice_number(tenant_id=tenant.id, period=period, sequence=sequence),
            kind=Invoice.Kind.INVOICE,
            sequence=sequence,
            tenant=tenant,
            period=period,
            period_end=month_end(period),
            status=Invoice.Status.DRAFT,
            generated_at=now,
            **fields,
        )
        outcome = "created"
    else:
        invoice = current
        outcome = "unchanged"
    rows = [
        InvoiceLine(
            invoice=invoice,
            key=line.key,
            position=position,
            line_type=line.line_type,
            model=line.model,
            price_id=line.price_id,
            description=line.description[:200],
            quantity=line.quantity,
            unit=line.unit,
            unit_price=line.unit_price,
            amount=line.amount,
        )
        for position, line in enumerate(lines, start=1)
    ]
    if outcome == "unchanged":
        stored = {_line_values(line) for line in invoice.lines.all()}
        same_lines = stored == {_line_values(row) for row in rows}
        same_fields = all(getattr(invoice, name) == value for name, value in fields.items())
        if same_lines and same_fields:
            return invoice, "unchanged"  # a re-run writes nothing: the same rows, to the timestamp
        outcome = "updated"
        for name, value in fields.items():
            setattr(invoice, name, value)
        invoice.generated_at = now
        invoice.save(update_fields=[*fields, "generated_at"])
    if rows:
        InvoiceLine.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["invoice", "key"], update_fields=_LINE_FIELDS
        )
    invoice.lines.exclude(key__in=[row.key for row in rows]).delete()
    return invoice, outcome


def _price_usage(usages: list[BillableUsage], prices: dict[int, ModelPrice]) -> list[PriceUsage]:
    result = []
    for usage in usages:
        row = prices[usage.price_id]
        result.append(
            PriceUsage(
                price_id=row.id,
                model=row.model.name,
                effective_from=row.effective_from,
                price=Price(
                    input_per_1m=row.input_per_1m,
                    output_per_1m=row.output_per_1m,
                    cached_input_per_1m=row.cached_input_per_1m,
                    cache_write_per_1m=row.cache_write_per_1m,
                ),
                input_tokens=usage.input_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                output_tokens=usage.output_tokens,
                cost=usage.cost,
            )
        )
    return result


def invoices_generate(
    *,
    period: date,
    finalize: bool = False,
    finalize_tenant_ids: Collection[int] | None = None,
    close: bool = False,
    now: datetime | None = None,
) -> InvoiceRunResult:
    """Generate (or regenerate) the drafts of a month, and finalize them when asked.

    One transaction for the whole month, under the lock of its `InvoiceRun` row: a run that
    dies half-way (a killed worker) leaves the month as it was before, and two runs of the
    same month take turns, the second finding nothing to change. The usage of the month's
    closed days is rolled up first, in the same transaction.

    Billed: every tenant with a subscription that existed before the month ended, and every
    tenant with usage in the month. A finalized invoice is kept as it is; after a credit note
    cancelled it, the tenant gets a new draft. `finalize` finalizes every draft (or those of
    `finalize_tenant_ids`), and is refused while the month is open. `close` marks the month
    closed for the automatic job.
    """
    now = now or timezone.now()
    period = month_start(period)
    state = period_state(period, now=now, grace_days=settings.BILLING_INVOICE_GRACE_DAYS)
    if state is PeriodState.FUTURE:
        raise BillingError(f"{period_str(period)} has not started yet")
    if (finalize or close) and state is PeriodState.OPEN:
        raise BillingError(f"{period_str(period)} is still open: its invoices can be finalized once it has ended")
    result = InvoiceRunResult(period=period)
    InvoiceRun.objects.get_or_create(period=period)
    start, end = period_bounds(period)
    today = now.astimezone(UTC).date()
    with transaction.atomic():
        run = InvoiceRun.objects.select_for_update().get(period=period)
        result.rolled_up_days = len(usage_rollup(since=period, until=month_end(period), now=now).days)
        usages = billable_usage(start=period, end=min(month_end(period), today), today=today)
        prices = ModelPrice.objects.select_related("model").in_bulk({u.price_id for u in usages})
        by_tenant: dict[int, list[BillableUsage]] = {}
        for usage in usages:
            by_tenant.setdefault(usage.tenant_id, []).append(usage)
        subscriptions = {
            s.tenant_id: s
            for s in Subscription.objects.select_related("plan").filter(
                Q(tenant__created_at__lt=end) | Q(tenant_id__in=by_tenant)
            )
        }
        tenants = Tenant.objects.filter(id__in=set(subscriptions) | set(by_tenant)).order_by("id")
        tenants = list(tenants)
        price_usage = {tenant.id: _price_usage(by_tenant.get(tenant.id, []), prices) for tenant in tenants}
        shares = _shared_cost_shares(period=period, tenants=tenants, subscriptions=subscriptions, usage=price_usage)

        # Locked in primary-key order, like the tenants below, so two runs cannot deadlock.
        invoices = list(
            Invoice.objects.select_for_update()
            .filter(period=period, kind=Invoice.Kind.INVOICE, tenant__in=tenants)
            .annotate(_credited=Exists(Invoice.objects.filter(corrects=OuterRef("pk"))))
            .order_by("id")
        )
        current: dict[int, Invoice] = {}
        for invoice in invoices:
            if invoice.tenant_id not in current or invoice.sequence > current[invoice.tenant_id].sequence:
                current[invoice.tenant_id] = invoice
        for tenant in tenants:
            existing = current.get(tenant.id)
            subscription = subscriptions.get(tenant.id)
            try:
                lines = invoice_lines(
                    usage=price_usage[tenant.id], terms=_terms(subscription), shared_cost=shares.get(tenant.id, ZERO)
                )
            except CostMismatch as exc:
                raise BillingError(f"{tenant.slug}: {exc}") from exc
            invoice, outcome = _invoice_write(
                tenant=tenant,
                period=period,
                current=existing,
                credited=bool(existing and existing._credited),
                subscription=subscription,
                lines=lines,
                provider_cost=provider_cost(price_usage[tenant.id]),
                now=now,
            )
            setattr(result, outcome, getattr(result, outcome) + 1)
            if finalize and outcome != "kept" and (finalize_tenant_ids is None or tenant.id in finalize_tenant_ids):
                invoice.status = Invoice.Status.FINALIZED
                invoice.finalized_at = now
                invoice.save(update_fields=["status", "finalized_at"])
                result.finalized += 1
            result.numbers.append(invoice.number)
        run.generated_at = now
        if close:
            run.closed_at = now
        run.save(update_fields=["generated_at", "closed_at"])
    log.info(
        "invoices of %s: %d created, %d updated, %d unchanged, %d finalized, %d kept",
        period_str(period),
        result.created,
        result.updated,
        result.unchanged,
        result.finalized,
        result.kept,
    )
    return result


def _shared_cost_shares(
    *,
    period: date,
    tenants: list[Tenant],
    subscriptions: dict[int, Subscription],
    usage: dict[int, list[PriceUsage]],
) -> dict[int, Decimal]:
    """Each tenant's share of the month's shared cost in its currency, to the cent."""
    shares: dict[int, Decimal] = {}
    totals = shared_cost_total(period=period)
    for currency, total in totals.items():
        billed = [t for t in tenants if _terms(subscriptions.get(t.id)).currency == currency]
        weights = {t.slug: provider_cost(usage[t.id]) for t in billed}
        allocated = shared_cost_allocate(total=total, weights=weights)
        for tenant in billed:
            shares[tenant.id] = allocated[tenant.slug]
        if not billed and total:
            log.warning("shared cost of %s in %s: no tenant billed in that currency", period_str(period), currency)
    return shares


def invoices_finalize(*, invoice_ids: Collection[int], now: datetime | None = None) -> int:
    """Finalize these drafts, each month regenerated first so that they are current."""
    periods: dict[date, set[int]] = {}
    for period, tenant_id in Invoice.objects.filter(
        id__in=invoice_ids, kind=Invoice.Kind.INVOICE, status=Invoice.Status.DRAFT
    ).values_list("period", "tenant_id"):
        periods.setdefault(period, set()).add(tenant_id)
    finalized = 0
    for period in sorted(periods):
        finalized += invoices_generate(
            period=period, finalize=True, finalize_tenant_ids=periods[period], now=now
        ).finalized
    return finalized


def credit_note_create(*, invoice_id: int, reason: str, now: datetime | None = None) -> Invoice:
    """Cancel a finalized invoice with a finalized credit note of the opposite amounts.

    The invoice itself does not change. The next generation of its month issues the tenant a
    new draft (sequence + 1), which is the corrected invoice.
    """
    now = now or timezone.now()
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.kind != Invoice.Kind.INVOICE or not invoice.is_finalized:
            raise BillingError(f"{invoice.number}: only a finalized invoice can be credited; a draft is regenerated")
        if invoice.credit_notes.exists():
            raise BillingError(f"{invoice.number} has been credited already")
        sequence = (
            Invoice.objects.filter(
                tenant_id=invoice.tenant_id, period=invoice.period, kind=Invoice.Kind.CREDIT_NOTE
            ).count()
            + 1
        )
        note = Invoice.objects.create(
            number=invoice_number(
                tenant_id=invoice.tenant_id, period=invoice.period, sequence=sequence, kind=Invoice.Kind.CREDIT_NOTE
            ),
            kind=Invoice.Kind.CREDIT_NOTE,
            sequence=sequence,
            tenant_id=invoice.tenant_id,
            period=invoice.period,
            period_end=invoice.period_end,
            status=Invoice.Status.DRAFT,
            currency=invoice.currency,
            plan_name=invoice.plan_name,
            corrects=invoice,
            note=reason[:200] or f"Cancels {invoice.number}",
            provider_cost=-invoice.provider_cost,
            subtotal=-invoice.subtotal,
            total=-invoice.total,
            generated_at=now,
        )
        InvoiceLine.objects.bulk_create(
            InvoiceLine(
                invoice=note,
                key=line.key,
                position=line.position,
                line_type=line.line_type,
                model=line.model,
                price_id=line.price_id,
                description=line.description,
                quantity=-line.quantity,
                unit=line.unit,
                unit_price=line.unit_price,
                amount=-line.amount,
            )
            for line in invoice.lines.order_by("position")
        )
        # Written as a draft, then finalized: the database refuses lines added to a finalized document.
        note.status = Invoice.Status.FINALIZED
        note.finalized_at = now
        note.save(update_fields=["status", "finalized_at"])
    return note


# --- retention -----------------------------------------------------------------------------


def usage_retention_apply(*, now: datetime | None = None, batch_size: int = 10_000) -> int:
    """Delete raw usage records older than BILLING_USAGE_RETENTION_DAYS (0: keep them all).

    Only days whose rollup is current and whose month has no draft invoice left lose their raw
    records; the rollups stay, and the day is marked pruned so that it is never rolled up again.
    """
    keep = settings.BILLING_USAGE_RETENTION_DAYS
    if not keep:
        return 0
    minimum = settings.BILLING_ROLLUP_LOOKBACK_DAYS + 31 + settings.BILLING_INVOICE_GRACE_DAYS
    if keep < minimum:
        raise BillingError(f"BILLING_USAGE_RETENTION_DAYS must be at least {minimum} (lookback, a month, grace)")
    now = now or timezone.now()
    cutoff = now.astimezone(UTC).date() - timedelta(days=keep)
    deleted = 0
    open_months = set(
        Invoice.objects.filter(status=Invoice.Status.DRAFT, period__lte=cutoff).values_list("period", flat=True)
    )
    for marker in UsageRollupDay.objects.filter(day__lt=cutoff, pruned=False).order_by("day"):
        if month_start(marker.day) in open_months:
            continue
        with transaction.atomic():
            marker = UsageRollupDay.objects.select_for_update().get(pk=marker.pk)
            if marker.pruned or marker.records != _raw_count(marker.day):
                continue  # not current: the next rollup first
            start = day_start(marker.day)
            records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=start + timedelta(days=1))
            while True:
                ids = list(records.values_list("id", flat=True)[:batch_size])
                if not ids:
                    break
                deleted += UsageRecord.objects.filter(id__in=ids)._raw_delete(using="default")
            marker.pruned = True
            marker.save(update_fields=["pruned"])
    return deleted


# --- budget alerts -------------------------------------------------------------------------


class WebhookError(Exception):
    """A budget alert webhook failed (network error or non-2xx answer): the task retries it."""


WEBHOOK_TIMEOUT_SECONDS = 5.0


def subscription_webhook_secret_set(*, subscription: Subscription, secret: str) -> None:
    """Store the alert webhook's signing secret encrypted; an empty secret clears it."""
    subscription.alert_webhook_secret = encrypt(secret) if secret else ""
    subscription.save(update_fields=["alert_webhook_secret"])


def subscription_webhook_secret_get(*, subscription: Subscription) -> str:
    return decrypt(subscription.alert_webhook_secret) if subscription.alert_webhook_secret else ""


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


def _budget_alerts_insert(
    *, tenant_id: int, period: date, thresholds: list[int], spend: Decimal, budget: Decimal, now: datetime
) -> list[int]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the ids of the rows this call inserted.

    Concurrent callers race on the unique constraint (tenant, period, threshold); a row already
    there, or inserted by a concurrent transaction that commits first, comes back to nobody else.
    """
    ops, quote = connection.ops, connection.ops.quote_name
    columns = ["tenant_id", "period", "threshold", "spend", "budget", "created_at", "webhook_attempts"]
    field = BudgetAlert._meta.get_field
    params: list = []
    for threshold in thresholds:
        params += [
            tenant_id,
            ops.adapt_datefield_value(period),
            threshold,
            ops.adapt_decimalfield_value(spend, field("spend").max_digits, field("spend").decimal_places),
            ops.adapt_decimalfield_value(budget, field("budget").max_digits, field("budget").decimal_places),
            ops.adapt_datetimefield_value(now),
            0,
        ]
    values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(thresholds))
    sql = (
        f"INSERT INTO {quote(BudgetAlert._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608 (our own names)
        f"VALUES {values} ON CONFLICT ({quote('tenant_id')}, {quote('period')}, {quote('threshold')}) "
        f"DO NOTHING RETURNING {quote('id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def budget_alerts_check(*, tenant_id: int, now: datetime | None = None) -> list[BudgetAlert]:
    """Raise the tenant's budget alerts crossed this month and not raised yet; return the new ones.

    Cheap enough to call after every metered request: a subscription read, one aggregate, and
    only when a threshold is crossed a read of the month's alerts (and an insert if any is new).
    Each new alert is delivered by `billing.tasks.deliver_budget_alert` once this commits; only
    the caller whose insert created the row queues it, so an alert goes out once per month.
    A budget of zero or none raises nothing.
    """
    from .tasks import deliver_budget_alert  # tasks import services

    now = now or timezone.now()
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    budget = subscription.effective_budget if subscription else None
    if budget is None or budget <= 0:
        return []
    thresholds = sorted({int(t) for t in subscription.alert_thresholds or []})
    if not thresholds:
        return []
    spend = month_to_date_spend(tenant_id=tenant_id, now=now)
    crossed = [t for t in thresholds if spend * 100 >= budget * t]
    if not crossed:
        return []
    period = month_start(now.astimezone(UTC).date())
    raised = set(BudgetAlert.objects.filter(tenant_id=tenant_id, period=period).values_list("threshold", flat=True))
    missing = [t for t in crossed if t not in raised]
    if not missing:
        return []
    with transaction.atomic():
        ids = _budget_alerts_insert(
            tenant_id=tenant_id, period=period, thresholds=missing, spend=spend, budget=budget, now=now
        )
        for alert_id in ids:
            # As `delay_on_commit`, but robust: the caller (the gateway's metering) must not fail
            # because the broker is down or, in eager mode, the webhook is; the alert stays recorded.
            transaction.on_commit(partial(deliver_budget_alert.delay, alert_id), robust=True)
    if not ids:
        return []
    alerts = list(BudgetAlert.objects.filter(id__in=ids).order_by("threshold"))
    for alert in alerts:
        log.info("budget alert: tenant %s at %s%% of %s (spend %s)", tenant_id, alert.threshold, budget, spend)
    return alerts


def budget_alert_payload(*, alert: BudgetAlert, currency: str) -> dict:
    return {
        "id": alert.id,
        "type": "budget.threshold_reached",
        "tenant": alert.tenant.slug,
        "period": period_str(alert.period),
        "threshold_percent": alert.threshold,
        "spend": f"{alert.spend:f}",
        "budget": f"{alert.budget:f}",
        "currency": currency,
        "created_at": alert.created_at.astimezone(UTC).isoformat(),
    }


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<raw body>", hex: the `x-signature-256: sha256=<hex>` header.

    The timestamp (`x-webhook-timestamp`, Unix seconds) is signed too, so that a receiver can
    refuse old deliveries replayed; `x-alert-id` (also `id` in the body) is the idempotency key.
    """
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _alert_email_recipients(subscription: Subscription) -> list[str]:
    return [address.strip() for address in subscription.alert_emails.split(",") if address.strip()]


def budget_alert_deliver(*, alert_id: int, now: datetime | None = None) -> dict:
    """Send a budget alert by email (once) and to the tenant's webhook (until it answers 2xx).

    The email is sent under the alert's row lock and recorded in the same transaction, so a
    retry for the webhook does not send it again (a crash between the send and the commit
    could; tolerated). The webhook raises `WebhookError` to be retried; receivers deduplicate
    on the alert id.
    """
    try:
        alert = BudgetAlert.objects.select_related("tenant__subscription__plan").get(pk=alert_id)
    except BudgetAlert.DoesNotExist:
        return {"alert": alert_id, "missing": True}
    subscription = alert.tenant.subscription
    currency = subscription.plan.currency
    recipients = _alert_email_recipients(subscription)
    result = {"alert": alert_id, "email": False, "webhook": False}

    if recipients and alert.email_sent_at is None:
        with transaction.atomic():
            locked = BudgetAlert.objects.select_for_update().get(pk=alert_id)
            if locked.email_sent_at is None:
                send_mail(
                    subject=f"Budget alert: {alert.tenant.slug} reached {alert.threshold}% of its monthly budget",
                    message=(
                        f"Tenant {alert.tenant.name} ({alert.tenant.slug}) has spent {alert.spend:.2f} {currency} "
                        f"in {period_str(alert.period)}, {alert.threshold}% or more of its monthly budget of "
                        f"{alert.budget:.2f} {currency}.\n"
                    ),
                    from_email=None,
                    recipient_list=recipients,
                )
                locked.email_sent_at = now or timezone.now()
                locked.save(update_fields=["email_sent_at"])
                result["email"] = True

    url = subscription.alert_webhook_url
    if url and alert.webhook_delivered_at is None:
        attempted = BudgetAlert.objects.filter(pk=alert_id, webhook_delivered_at__isnull=True).update(
            webhook_attempts=F("webhook_attempts") + 1
        )
        if not attempted:
            return result  # delivered meanwhile by a concurrent run
        body = json.dumps(budget_alert_payload(alert=alert, currency=currency), separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "user-agent": "proxy-platform-budget-alerts/1",
            "x-alert-id": str(alert.id),
            "x-webhook-timestamp": timestamp,
        }
        secret = subscription_webhook_secret_get(subscription=subscription)
        if secret:
            headers["x-signature-256"] = "sha256=" + webhook_signature(secret=secret, timestamp=timestamp, body=body)
        try:
            response = httpx2.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS)
        except httpx2.HTTPError as exc:
            raise WebhookError(f"budget alert {alert_id}: webhook unreachable ({type(exc).__name__})") from exc
        if not 200 <= response.status_code < 300:
            raise WebhookError(f"budget alert {alert_id}: webhook answered {response.status_code}")
        BudgetAlert.objects.filter(pk=alert_id).update(webhook_delivered_at=now or timezone.now())
        result["webhook"] = True
    return result
