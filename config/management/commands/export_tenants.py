"""`manage.py export_tenants [PATH]` (docs/design.md#management-commands, a CONTRACT): the configuration in the import
format, keys never included. Sorted and indented, so that two exports diff cleanly."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from config.export import config_dumps, config_export


class Command(BaseCommand):
    help = "Write tenants, plans, models and prices as a JSON configuration file (API keys are never exported)."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="output file; standard output when left out")

    def handle(self, *args, path: str | None, **options):
        text = config_dumps(document=config_export())
        if path is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc}") from exc
        self.stderr.write(f"exported to {path}")
