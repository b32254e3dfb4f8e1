"""`manage.py export_end_user_usage TENANT --period YYYY-MM [--output FILE]`: a tenant's usage of a
month per end user, as CSV (columns in the README and in billing/exports.py)."""

import io

from django.core.management.base import BaseCommand, CommandError

from billing.exports import end_user_usage_csv_write
from billing.management.commands.generate_invoices import period_arg
from billing.selectors import UsageGroupingUnavailable
from proxy_platform.replicas import reading_replica
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Write a tenant's usage of a month per end user as CSV (standard output by default)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="the tenant's slug")
        parser.add_argument("--period", required=True, type=period_arg, help="the month, YYYY-MM")
        parser.add_argument("--output", help="file to write; standard output when left out")

    def handle(self, *args, tenant: str, period, output: str | None, **options):
        # An export: read on the replica when there is one (docs/database.md).
        with reading_replica():
            self._export(tenant, period, output)

    def _export(self, tenant: str, period, output: str | None) -> None:
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"no tenant {tenant!r}")
        try:
            if output is None:
                buffer = io.StringIO(newline="")
                count = end_user_usage_csv_write(tenant=found, period=period, out=buffer)
                self.stdout.write(buffer.getvalue(), ending="")
            else:
                try:
                    with open(output, "w", encoding="utf-8", newline="") as stream:
                        count = end_user_usage_csv_write(tenant=found, period=period, out=stream)
                except OSError as exc:
                    raise CommandError(f"cannot write {output}: {exc}") from exc
        except UsageGroupingUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"{count} end users of {found.slug} in {period:%Y-%m}")
