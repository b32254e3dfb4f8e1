"""`manage.py generate_usage --records N [--days D] [--tenants T] [--seed S] [--no-rollup]`.

Synthetic usage for load tests, benchmarks and demos: exactly N records over the last D days
up to now, priced like the gateway's (billing/synthetic.py), written with COPY on PostgreSQL,
then rolled up so that reports read rollups for the closed days (today stays raw).
"""

import random
from datetime import UTC, timedelta

from django.core.management.base import CommandError
from django.utils import timezone

from billing.services import usage_rollup
from billing.synthetic import synthetic_tenants_ensure, synthetic_usage_create
from tenants.audit import AuditedCommand


class Command(AuditedCommand):
    help = "Generate N synthetic usage records over the last D days (COPY on PostgreSQL), then roll them up."

    def add_arguments(self, parser):
        parser.add_argument("--records", type=int, required=True, help="how many records, exactly")
        parser.add_argument("--days", type=int, default=30, help="spread over the last D days up to now (30)")
        parser.add_argument(
            "--tenants", type=int, default=0, help="make sure at least T active tenants exist (synthetic-NNN)"
        )
        parser.add_argument("--seed", type=int, help="for a repeatable run (a new random seed by default)")
        parser.add_argument("--no-rollup", action="store_true", help="leave the new records raw")

    def handle(self, *args, records: int, days: int, tenants: int, seed: int | None, no_rollup: bool, **options):
        if records < 1:
            raise CommandError("--records must be at least 1")
        if not 1 <= days <= 400:
            raise CommandError("--days must be between 1 and 400")
        if tenants < 0:
            raise CommandError("--tenants cannot be negative")
        created = synthetic_tenants_ensure(count=tenants) if tenants else 0
        if created:
            self.stdout.write(f"created {created} synthetic tenants")
        end = timezone.now()
        start = end - timedelta(days=days)
        seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        try:
            count = synthetic_usage_create(start=start, end=end, total=records, seed=seed)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if count == 0:
            raise CommandError("no active tenant can use a priced model: nothing generated")
        self.stdout.write(f"generated {count} usage records from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC")
        if not no_rollup:
            result = usage_rollup(since=start.astimezone(UTC).date(), now=end)
            self.stdout.write(f"rolled up {len(result.days)} days ({result.records} records); today stays raw")
