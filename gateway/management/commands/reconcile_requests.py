"""`manage.py reconcile_requests [--older-than SECONDS]`: what Celery beat runs every
GATEWAY_RECONCILE_INTERVAL_SECONDS, by hand (gateway/journal.py, README "Operations")."""

import argparse

from django.conf import settings
from django.core.management.base import CommandError

from gateway.journal import reconcile_requests_sync
from tenants.audit import AuditedCommand


def seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return seconds


class Command(AuditedCommand):
    help = (
        "Write usage records spooled through a database outage, and record requests whose gateway "
        "process died (traces older than --older-than seconds without a usage record) as `interrupted`, "
        "giving back their concurrency slots and budget holds. Safe to run at any time, also while beat runs."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=seconds_arg,
            default=None,
            metavar="SECONDS",
            help="age of a trace after which its request counts as interrupted "
            "(default GATEWAY_RECONCILE_AFTER_SECONDS; 0 takes every trace: only when no gateway is serving)",
        )

    def handle(self, *args, older_than: float | None, **options):
        seconds = settings.GATEWAY_RECONCILE_AFTER_SECONDS if older_than is None else older_than
        try:
            result = reconcile_requests_sync(older_than_seconds=seconds)
        except Exception as exc:
            raise CommandError(f"reconcile failed (what was done stays done; run it again): {exc}") from exc
        self.stdout.write(
            f"{result.replayed} spooled usage records written, {result.interrupted} interrupted requests recorded, "
            f"{result.released} slots and holds given back"
        )
