"""`manage.py rollup_usage [--since DAY] [--until DAY]` (docs/design.md#management-commands): what the
beat task does."""

from datetime import date

from django.core.management.base import CommandError

from billing.services import usage_rollup
from tenants.audit import AuditedCommand


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"a day is YYYY-MM-DD, not {value!r}") from None


class Command(AuditedCommand):
    help = (
        "Roll up the usage of closed UTC days whose records changed since their last rollup "
        "(by default the last BILLING_ROLLUP_LOOKBACK_DAYS days), and the daily summaries of any day rolled up "
        "without them. Safe to run at any time, and twice."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", type=_day, help="first day to look at (YYYY-MM-DD)")
        parser.add_argument("--until", type=_day, help="last day to look at (YYYY-MM-DD); never today or later")

    def handle(self, *args, since: date | None, until: date | None, **options):
        result = usage_rollup(since=since, until=until)
        if result.days:
            self.stdout.write(
                f"rolled up {len(result.days)} days ({result.days[0]} to {result.days[-1]}), {result.records} records"
            )
        else:
            self.stdout.write("nothing to roll up: every day is current")
        if result.summarized:
            days = result.summarized
            self.stdout.write(f"built the summaries of {len(days)} days rolled up before ({days[0]} to {days[-1]})")
