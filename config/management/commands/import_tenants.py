"""`manage.py import_tenants PATH [--dry-run]` (docs/design.md#management-commands, a CONTRACT). The work is in
config (schema, apply); this only reads the file and reports."""

from pathlib import Path

from django.core.management.base import CommandError

from config.apply import config_apply
from config.schema import ConfigInvalid, config_parse, config_warnings
from tenants.audit import AuditedCommand


class Command(AuditedCommand):
    help = "Create or update tenants, plans, models and prices from a JSON configuration file."

    def add_arguments(self, parser):
        parser.add_argument("path", help="the JSON configuration file")
        parser.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")

    def handle(self, *args, path: str, dry_run: bool, **options):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        try:
            document = config_parse(text=text)
            for warning in config_warnings(document=document):
                self.stderr.write(f"warning: {warning}")
            changes = config_apply(document=document, dry_run=dry_run, source=path)
        except ConfigInvalid as exc:
            for error in exc.errors:
                self.stderr.write(str(error))
            raise CommandError(str(exc)) from exc
        for change in changes:
            self.stdout.write(change)
        summary = f"{len(changes)} change(s)" if changes else "no changes"
        self.stdout.write(f"dry run, nothing written: {summary}" if dry_run else summary)
