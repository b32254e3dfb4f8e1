"""`manage.py usage_partitions [--ahead N]` (docs/usage-partitions.md): what the daily beat task does,
then the partitions of usage records as they are."""

from django.core.management.base import CommandError
from django.db import connection

from billing.services import usage_partition_months, usage_partitioned, usage_partitions_ensure
from billing.services.partitions import DEFAULT_PARTITION, usage_partition_name
from tenants.audit import AuditedCommand


class Command(AuditedCommand):
    help = (
        "Create this month's usage partition and the next ones (BILLING_USAGE_PARTITIONS_AHEAD, or --ahead), "
        "moving any of their records out of the default partition; then list the partitions. PostgreSQL only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, help="months after this one (default BILLING_USAGE_PARTITIONS_AHEAD)")

    def handle(self, *args, ahead: int | None, **options):
        if ahead is not None and not 0 <= ahead <= 36:
            raise CommandError("--ahead is a number of months from 0 to 36")
        if not usage_partitioned():
            self.stdout.write("usage records are not partitioned here (SQLite, or before migration 0015)")
            return
        for name in usage_partitions_ensure(ahead=ahead):
            self.stdout.write(f"created {name}")
        names = [usage_partition_name(month) for month in usage_partition_months()] + [DEFAULT_PARTITION]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT relname, reltuples::bigint FROM pg_class WHERE relname = ANY(%s)",
                [names],
            )
            estimates = dict(cursor.fetchall())
            cursor.execute(f"SELECT COUNT(*) FROM {DEFAULT_PARTITION}")  # noqa: S608
            in_default = cursor.fetchone()[0]
        for name in names[:-1]:
            rows = estimates.get(name, -1)
            self.stdout.write(f"{name}: {'unknown' if rows < 0 else f'~{rows}'} records")
        self.stdout.write(f"{DEFAULT_PARTITION}: {in_default} records (a month without a partition)")
