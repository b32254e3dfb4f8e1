"""Admin pages over one million usage records: the dashboard, a tenant page and the analytics page.

Self-contained: creates (if missing) and migrates a PostgreSQL database of its own, makes sure
there are 40 active tenants, generates the last 30 days of usage up to now with
`manage.py generate_usage`'s generator (COPY) and rolls it up, unless that many records of the
last 30 days are there already (--fresh regenerates). Today's records stay raw, as in
production: every page reads rollups for the closed days plus today's raw records.

Then it renders each page through Django's full stack (test client, logged in, middleware,
templates; no network): once cold (the first render in this process) and --runs times warm,
and prints the median and p95 against the 500 ms target, with the machine's load average.

    .venv/bin/python bench/admin_pages.py [--records 1000000] [--tenants 40] [--runs 15] [--fresh]

BENCH_ADMIN_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/bench_dash) is the database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from benchdb import ensure_database, setup_django

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_dash"
TARGET_MS = 500.0


def prepare(*, records: int, tenants: int, fresh: bool) -> None:
    from django.db import connection
    from django.utils import timezone

    from billing.models import UsageRecord
    from billing.services import invoices_generate, usage_rollup
    from billing.synthetic import synthetic_tenants_ensure, synthetic_usage_create

    synthetic_tenants_ensure(count=tenants)
    now = timezone.now()
    start = now - timedelta(days=30)
    present = UsageRecord.objects.filter(created_at__gte=start).count()
    if present >= records and not fresh:
        print(f"reusing {present:,} usage records of the last 30 days")
    else:
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE billing_invoiceline, billing_invoice, billing_invoicerun, billing_usagerollup, "
                "billing_usagerollupday, billing_budgetalert, billing_usagerecord"
            )
        began = time.perf_counter()
        count = synthetic_usage_create(start=start, end=now, total=records, seed=23)
        print(f"generated {count:,} records with COPY in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    result = usage_rollup(since=start.astimezone(UTC).date(), now=now)
    print(f"rolled up {len(result.days)} days in {time.perf_counter() - began:.1f} s")
    invoices_generate(period=now.astimezone(UTC).date().replace(day=1), now=now)


def timed(client, url: str) -> float:
    began = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - began) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return elapsed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--fresh", action="store_true", help="regenerate the records even if they are there")
    options = parser.parse_args()

    url = os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_URL)
    ensure_database(url)
    setup_django(url, DJANGO_ALLOWED_HOSTS="testserver")

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db.models import Sum
    from django.test import Client
    from django.urls import reverse

    from billing.models import UsageRecord, UsageRollup
    from billing.selectors import utc_today

    call_command("migrate", verbosity=0)
    prepare(records=options.records, tenants=options.tenants, fresh=options.fresh)
    today = utc_today()
    start = datetime.combine(today - timedelta(days=29), datetime.min.time(), tzinfo=UTC)
    raw_today = UsageRecord.objects.filter(created_at__gte=datetime.combine(today, datetime.min.time(), tzinfo=UTC))
    in_period = UsageRecord.objects.filter(created_at__gte=start).count()
    print(
        f"database {urlparse(url).path.lstrip('/')}: {UsageRecord.objects.count():,} usage records "
        f"({in_period:,} in the dashboard's 30 days, {raw_today.count():,} of them today, read raw), "
        f"{UsageRollup.objects.count():,} rollup rows"
    )

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench@example.com", "bench-admin-password"
    )
    top = UsageRollup.objects.values("tenant_id").annotate(cost=Sum("cost")).order_by("-cost").first()["tenant_id"]
    pages = [
        ("dashboard (30 days)", reverse("admin:index")),
        ("dashboard (90 days)", reverse("admin:index") + "?range=90d"),
        ("tenant page (30 days)", reverse("admin:tenants_tenant_overview", args=[top])),
        ("analytics (30 vs 30 days)", reverse("admin:analytics")),
    ]
    client = Client()
    client.force_login(user)
    load_before = os.getloadavg()
    rows = []
    for name, page in pages:
        cold = timed(client, page)
        warm = [timed(client, page) for _ in range(options.runs)]
        rows.append((name, cold, statistics.median(warm), p95(warm)))
    load_after = os.getloadavg()

    print(f"\nload average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} ({os.cpu_count()} cores)")  # fmt: skip
    print(f"{'page':<28} {'cold':>9} {'median':>9} {'p95':>9}   target {TARGET_MS:.0f} ms (warm p95)")
    met = True
    for name, cold, median, high in rows:
        ok = high < TARGET_MS
        met &= ok
        print(f"{name:<28} {cold:7.0f}ms {median:7.0f}ms {high:7.0f}ms   {'met' if ok else 'NOT MET'}")
    print(f"({options.runs} warm renders per page; cold = the first render of each page in this process)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
