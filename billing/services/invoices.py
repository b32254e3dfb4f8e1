"""Invoices: monthly generation (drafts regenerated until the period closes), finalization and
credit notes. Figures come from `billing.invoicing` (pure) over reads from `billing.selectors`.
"""

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from billing.invoicing import (
    ZERO,
    CostCentreShare,
    CostMismatch,
    Line,
    PriceUsage,
    Terms,
    cost_centres,
    invoice_lines,
    invoice_total,
    provider_cost,
    shared_cost_allocate,
)
from billing.models import Invoice, InvoiceCostCentre, InvoiceLine, InvoiceRun, ModelPrice, Subscription
from billing.periods import PeriodState, month_end, month_start, period_bounds, period_state, period_str
from billing.selectors import BillableUsage, billable_usage, shared_cost_total
from tenants.models import Project, Tenant

from .errors import BillingError
from .rollups import usage_rollup

log = logging.getLogger(__name__)


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


_LINE_FIELDS = [
    "position",
    "line_type",
    "model",
    "price_id",
    "price_tier_id",
    "description",
    "quantity",
    "unit",
    "unit_price",
    "amount",
]


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
    shares: list[CostCentreShare],
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
            price_tier_id=line.price_tier_id,
            description=line.description[:200],
            quantity=line.quantity,
            unit=line.unit,
            unit_price=line.unit_price,
            amount=line.amount,
        )
        for position, line in enumerate(lines, start=1)
    ]
    wanted_shares = {(share.line_key, share.project, share.quantity, share.amount) for share in shares}
    if outcome == "unchanged":
        stored = {_line_values(line) for line in invoice.lines.all()}
        same_lines = stored == {_line_values(row) for row in rows}
        same_fields = all(getattr(invoice, name) == value for name, value in fields.items())
        same_shares = _stored_shares(invoice) == wanted_shares
        if same_lines and same_fields and same_shares:
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
    # A draft created just now has no other lines or cost centres to delete or compare: two
    # queries per tenant saved in a month's first run (5,000 tenants: bench/tenants_scale.py).
    fresh = outcome == "created"
    if not fresh:
        invoice.lines.exclude(key__in=[row.key for row in rows]).delete()
    if bool(wanted_shares) if fresh else _stored_shares(invoice) != wanted_shares:
        if not fresh:
            InvoiceCostCentre.objects.filter(line__invoice=invoice).delete()
        line_ids = dict(invoice.lines.values_list("key", "id"))
        InvoiceCostCentre.objects.bulk_create(
            InvoiceCostCentre(
                line_id=line_ids[share.line_key], project=share.project, quantity=share.quantity, amount=share.amount
            )
            for share in shares
        )
    return invoice, outcome


def _stored_shares(invoice: Invoice) -> set[tuple]:
    return set(
        InvoiceCostCentre.objects.filter(line__invoice=invoice).values_list(
            "line__key", "project", "quantity", "amount"
        )
    )


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's billable usage of the month: per price row and tier (the usage lines), and the
    same split per project name (the cost centres)."""

    by_price: list[PriceUsage]
    by_project: dict[tuple[int, int | None], dict[str, PriceUsage]]


def _price_usage(
    usages: list[BillableUsage], prices: dict[int, ModelPrice], project_names: dict[int, str]
) -> TenantUsage:
    def as_price_usage(row: ModelPrice, price_tier_id: int | None, parts: list[BillableUsage]) -> PriceUsage:
        price = row.as_price()
        tier = None
        if price_tier_id is not None:
            tier = next(t for t in price.tiers if t.id == price_tier_id)
        return PriceUsage(
            price_id=row.id,
            model=row.model.name,
            effective_from=row.effective_from,
            price=price,
            input_tokens=sum(u.input_tokens for u in parts),
            cached_input_tokens=sum(u.cached_input_tokens for u in parts),
            cache_write_tokens=sum(u.cache_write_tokens for u in parts),
            cache_write_1h_tokens=sum(u.cache_write_1h_tokens for u in parts),
            output_tokens=sum(u.output_tokens for u in parts),
            cost=sum((u.cost for u in parts), ZERO),
            tier=tier,
        )

    grouped: dict[tuple[int, int | None], dict[str, list[BillableUsage]]] = {}
    for usage in usages:
        project = project_names.get(usage.project_id, "") if usage.project_id is not None else ""
        grouped.setdefault((usage.price_id, usage.price_tier_id), {}).setdefault(project, []).append(usage)
    by_price, by_project = [], {}
    for (price_id, tier_id), projects in grouped.items():
        row = prices[price_id]
        by_price.append(as_price_usage(row, tier_id, [u for parts in projects.values() for u in parts]))
        by_project[(price_id, tier_id)] = {
            project: as_price_usage(row, tier_id, parts) for project, parts in projects.items()
        }
    return TenantUsage(by_price=by_price, by_project=by_project)


def _project_names(usages: list[BillableUsage]) -> dict[int, str]:
    """The names of the projects the usage was attributed to, each of its own tenant only: an id
    that finds no project of the usage's tenant (a deleted one) is "no project"."""
    wanted = {(u.tenant_id, u.project_id) for u in usages if u.project_id is not None}
    if not wanted:
        return {}
    rows = Project.objects.filter(id__in={project_id for _, project_id in wanted}).values_list(
        "id", "tenant_id", "name"
    )
    return {project_id: name for project_id, tenant_id, name in rows if (tenant_id, project_id) in wanted}


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
        prices = (
            ModelPrice.objects.select_related("model").prefetch_related("tiers").in_bulk({u.price_id for u in usages})
        )
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
        project_names = _project_names(usages)
        tenant_usage = {
            tenant.id: _price_usage(by_tenant.get(tenant.id, []), prices, project_names) for tenant in tenants
        }
        price_usage = {tenant_id: usage.by_price for tenant_id, usage in tenant_usage.items()}
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
                shares=cost_centres(lines=lines, usage_by_project=tenant_usage[tenant.id].by_project),
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
                price_tier_id=line.price_tier_id,
                description=line.description,
                quantity=-line.quantity,
                unit=line.unit,
                unit_price=line.unit_price,
                amount=-line.amount,
            )
            for line in invoice.lines.order_by("position")
        )
        note_lines = dict(note.lines.values_list("key", "id"))
        InvoiceCostCentre.objects.bulk_create(
            InvoiceCostCentre(
                line_id=note_lines[share.line.key],
                project=share.project,
                quantity=-share.quantity,
                amount=-share.amount,
            )
            for share in InvoiceCostCentre.objects.filter(line__invoice=invoice).select_related("line")
        )
        # Written as a draft, then finalized: the database refuses lines added to a finalized document.
        note.status = Invoice.Status.FINALIZED
        note.finalized_at = now
        note.save(update_fields=["status", "finalized_at"])
    return note
