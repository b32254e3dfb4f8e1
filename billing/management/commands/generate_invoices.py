"""`manage.py generate_invoices --period YYYY-MM [--finalize]` (docs/design.md#management-commands):
what the Celery task does, by hand. Drafts are regenerated; finalized invoices are never touched."""

from django.core.management.base import CommandError

from billing.periods import period_parse
from billing.services import BillingError, invoices_generate
from tenants.audit import AuditedCommand


def period_arg(value: str):
    try:
        return period_parse(value)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


class Command(AuditedCommand):
    help = "Generate (or regenerate) the draft invoices of a month; --finalize finalizes them once the month has ended."

    def add_arguments(self, parser):
        parser.add_argument("--period", required=True, type=period_arg, help="the month, YYYY-MM")
        parser.add_argument("--finalize", action="store_true", help="finalize the drafts (the month must have ended)")

    def handle(self, *args, period, finalize: bool, **options):
        try:
            result = invoices_generate(period=period, finalize=finalize)
        except BillingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{period:%Y-%m}: {result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
            f"{result.finalized} finalized, {result.kept} finalized before (kept)"
        )
