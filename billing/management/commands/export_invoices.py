"""`manage.py export_invoices --period YYYY-MM [--output FILE]` (docs/design.md#management-commands): the finance CSV
(columns in the README and in billing/exports.py)."""

import io

from django.core.management.base import BaseCommand, CommandError

from billing.exports import invoices_csv_write
from billing.management.commands.generate_invoices import period_arg
from billing.selectors import invoices_for_period
from proxy_platform.replicas import reading_replica


class Command(BaseCommand):
    help = "Write the invoices and credit notes of a month as CSV, one row per line (standard output by default)."

    def add_arguments(self, parser):
        parser.add_argument("--period", required=True, type=period_arg, help="the month, YYYY-MM")
        parser.add_argument("--output", help="file to write; standard output when left out")

    def handle(self, *args, period, output: str | None, **options):
        # An export: read on the replica when there is one (docs/database.md).
        with reading_replica():
            invoices = invoices_for_period(period=period)
            if output is None:
                buffer = io.StringIO(newline="")
                count = invoices_csv_write(invoices=invoices, out=buffer)
                self.stdout.write(buffer.getvalue(), ending="")
            else:
                try:
                    with open(output, "w", encoding="utf-8", newline="") as stream:
                        count = invoices_csv_write(invoices=invoices, out=stream)
                except OSError as exc:
                    raise CommandError(f"cannot write {output}: {exc}") from exc
            self.stderr.write(f"{count} lines of {invoices.count()} invoices of {period:%Y-%m}")
