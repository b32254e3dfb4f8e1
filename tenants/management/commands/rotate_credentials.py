"""`manage.py rotate_credentials`: re-encrypt every provider credential under the newest key.

Key rotation: put a new Fernet key FIRST in FIELD_ENCRYPTION_KEYS (keep the old ones after it),
deploy, run this command, then remove the old keys. All or nothing: when a credential cannot be
decrypted with any configured key, nothing is changed and the command says which one.
"""

from django.core.management.base import CommandError

from tenants.audit import AuditedCommand
from tenants.services import Refused, credentials_reencrypt


class Command(AuditedCommand):
    help = "Re-encrypt every provider credential with the newest key of FIELD_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        try:
            count = credentials_reencrypt()
        except Refused as exc:
            for problem in exc.problems:
                self.stderr.write(problem)
            raise CommandError("nothing was re-encrypted") from exc
        self.stdout.write(f"re-encrypted {count} credential(s)")
