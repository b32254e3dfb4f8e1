"""Billing throughput: one million usage records rolled up and invoiced on PostgreSQL.

Self-contained: creates (if missing) and migrates a PostgreSQL database of its own, sets up
tenants on three plans and a mid-month price change, generates a month of records with
`billing.synthetic.synthetic_usage_create` (priced exactly like the gateway's, COPY on
PostgreSQL; also behind `manage.py generate_usage`), then times:

    the rollup of the month (SQL aggregation per UTC day),
    the invoice generation of the month (every tenant, from the rollups),
    both again (nothing to do: the re-run must be cheap and change no row),
    a month of /v1/usage for one tenant, from rollups and from raw records.

Target: rollup + invoices under 60 s on a 2-core machine.

    .venv/bin/python bench/billing_rollup.py [--records 1000000] [--tenants 40] [--keep]

BENCH_BILLING_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/bench_billing) is the
database; it is emptied of usage and invoices first (--keep reuses the records already there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

from benchdb import ensure_database, setup_django

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_billing"
PERIOD = date(2024, 5, 1)
PERIOD_END = date(2024, 5, 31)
AFTER = datetime(2024, 6, 20, tzinfo=UTC)  # the month is closed: everything is rolled up


def clock(label: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    elapsed = time.perf_counter() - started
    print(f"  {label:<46} {elapsed:8.2f} s")
    return result, elapsed


def prepare(tenant_count: int):
    from billing.models import ModelPrice, Plan, Subscription
    from tenants.models import CatalogModel, Tenant

    plans = [
        Plan.objects.update_or_create(name=name, defaults=terms)[0]
        for name, terms in [
            ("bench-starter", {"monthly_base_fee": Decimal("25"), "included_allowance": Decimal("10"),
                               "markup_percent": Decimal("25"), "minimum_commitment": Decimal("100")}),
            ("bench-business", {"monthly_base_fee": Decimal("100"), "included_allowance": Decimal("50"),
                                "markup_percent": Decimal("20")}),
            ("bench-enterprise", {"monthly_base_fee": Decimal("250"), "included_allowance": Decimal("100"),
                                  "markup_percent": Decimal("15"), "minimum_commitment": Decimal("1000")}),
        ]
    ]  # fmt: skip
    for i in range(tenant_count):
        tenant, _ = Tenant.objects.get_or_create(slug=f"bench-{i:03d}", defaults={"name": f"Bench {i}"})
        Tenant.objects.filter(pk=tenant.pk).update(created_at=datetime(2024, 1, 1, tzinfo=UTC))
        Subscription.objects.update_or_create(tenant=tenant, defaults={"plan": plans[i % len(plans)]})
    # Tenants of an earlier, bigger run stay (invoiced for their base fee) but make no traffic.
    Tenant.objects.filter(slug__startswith="bench-").exclude(
        slug__in=[f"bench-{i:03d}" for i in range(tenant_count)]
    ).update(status="suspended")
    Tenant.objects.filter(slug__in=[f"bench-{i:03d}" for i in range(tenant_count)]).update(status="active")
    # A price change in the middle of the month: its records are billed on two lines.
    model = CatalogModel.objects.filter(active=True, prices__isnull=False).order_by("name").first()
    current = model.prices.order_by("-effective_from").first()
    if not model.prices.filter(effective_from=datetime(2024, 5, 15, tzinfo=UTC)).exists():
        ModelPrice.objects.create(
            model=model,
            effective_from=datetime(2024, 5, 15, tzinfo=UTC),
            input_per_1m=current.input_per_1m * Decimal("0.8"),
            output_per_1m=current.output_per_1m * Decimal("0.8"),
            cached_input_per_1m=current.cached_input_per_1m,
        )
    return model.name


def empty(keep: bool) -> None:
    from django.db import connection

    tables = [
        "billing_invoiceline",
        "billing_invoice",
        "billing_invoicerun",
        "billing_sharedcost",
        "billing_usagerollup",
        "billing_usagerollupday",
    ]
    if not keep:
        tables.append("billing_usagerecord")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(tables))


def load(records: int) -> int:
    """Exactly `records` records of the month, generated and COPYed by billing.synthetic."""
    from billing.synthetic import synthetic_usage_create

    start = datetime(2024, 5, 1, tzinfo=UTC)
    end = start + timedelta(days=(PERIOD_END - PERIOD).days + 1)
    return synthetic_usage_create(start=start, end=end, total=records, seed=11)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the usage records already loaded")
    options = parser.parse_args()

    url = os.environ.get("BENCH_BILLING_DATABASE_URL", DEFAULT_URL)
    ensure_database(url)
    setup_django(url)

    from django.core.management import call_command
    from django.db.models import Count, Sum

    from billing.models import Invoice, InvoiceLine, SharedCost, UsageRecord, UsageRollup
    from billing.selectors import usage_summary
    from billing.services import invoices_generate, usage_rollup

    call_command("migrate", verbosity=0)
    changed_model = prepare(options.tenants)
    empty(options.keep)
    print(f"database {urlparse(url).path.lstrip('/')}, {options.tenants} tenants, month {PERIOD:%Y-%m}")
    if not (options.keep and UsageRecord.objects.exists()):
        count, _ = clock(f"generate and COPY ~{options.records:,} records", load, options.records)
    count = UsageRecord.objects.count()
    SharedCost.objects.create(period=PERIOD, description="bench cluster", amount=Decimal("12345.67"))
    print(f"{count:,} usage records; {changed_model} changes price on 2024-05-15")

    rollup, t_rollup = clock("rollup of the month", usage_rollup, since=PERIOD, until=PERIOD_END, now=AFTER)
    result, t_invoice = clock("invoices of the month", invoices_generate, period=PERIOD, now=AFTER)
    total = t_rollup + t_invoice
    print(f"  {'rollup + invoices':<46} {total:8.2f} s   ({count / total:,.0f} records/s)")
    again, t_again = clock("rollup again (nothing to do)", usage_rollup, since=PERIOD, until=PERIOD_END, now=AFTER)
    second, t_second = clock("invoices again (nothing to change)", invoices_generate, period=PERIOD, now=AFTER)

    tenant_id = Invoice.objects.order_by("number").values_list("tenant_id", flat=True).first()
    clock("/v1/usage of a month (rollups)", usage_summary, tenant_id=tenant_id, start=PERIOD, end=PERIOD_END)

    rolled = UsageRollup.objects.aggregate(n=Sum("requests"), c=Sum("cost"))
    raw = UsageRecord.objects.aggregate(n=Count("id"), c=Sum("cost"))
    lines = InvoiceLine.objects.filter(invoice__period=PERIOD)
    print(
        f"{len(rollup.days)} days rolled up into {UsageRollup.objects.count():,} rows; "
        f"{result.created} invoices, {lines.count()} lines, total "
        f"{Invoice.objects.filter(period=PERIOD).aggregate(t=Sum('total'))['t']} USD; "
        f"{lines.filter(line_type='input', model=changed_model).count()} input lines for {changed_model}"
    )
    checks = {
        "rollups hold every record and cent": rolled == {"n": raw["n"], "c": raw["c"]},
        "re-runs change nothing": not again.days and second.unchanged == result.created and not second.updated,
        "under 60 s": total < 60,
    }
    for name, ok in checks.items():
        print(f"  {'ok ' if ok else 'FAILED'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
