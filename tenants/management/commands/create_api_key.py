"""`manage.py create_api_key TENANT [--project P] [--name N] [--admin]`: a new key for a tenant.

For operators and scripts: the new key's secret is the LAST line of the output, alone, so that
`KEY=$(manage.py create_api_key alice | tail -n 1)` takes it; the lines before say what was made
(its display form, tenant, project, kind). The secret is shown this once and stored hashed only.

`--admin` makes a tenant admin key, the only way besides the staff admin: it manages the tenant's
own keys through /v1/keys (docs/keys-api.md) and cannot call models. An unknown tenant or project
is an error (exit status 1) and creates nothing.
"""

from django.core.management.base import CommandError

from tenants.audit import AuditedCommand
from tenants.models import Tenant
from tenants.profiles import KEY_NAME_MAX
from tenants.selectors import tenant_project
from tenants.services import Refused, api_key_create


class Command(AuditedCommand):
    help = "Create an API key for a tenant; the key itself is the last line of the output."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="The tenant's slug.")
        parser.add_argument("--project", help="One of the tenant's projects (by name).")
        parser.add_argument("--name", default="default", help="A name to recognise the key by (default: default).")
        parser.add_argument(
            "--admin",
            action="store_true",
            help="A tenant admin key: manages the tenant's keys (/v1/keys), cannot call models.",
        )

    def handle(self, *args, tenant: str, project: str | None, name: str, admin: bool, **options):
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"unknown tenant {tenant!r}")
        chosen = None
        if project is not None:
            chosen = tenant_project(tenant_id=found.pk, name=project)
            if chosen is None:
                raise CommandError(f"unknown project {project!r} of tenant {tenant!r}")
        if not name.strip() or len(name) > KEY_NAME_MAX:
            raise CommandError(f"--name must be 1 to {KEY_NAME_MAX} characters")
        try:
            key, raw = api_key_create(tenant=found, name=name, project=chosen, is_admin=admin)
        except Refused as exc:
            raise CommandError("; ".join(exc.problems)) from exc
        kind = "admin key" if admin else "key"
        where = f", project {chosen.name}" if chosen else ""
        self.stdout.write(f"Created {kind} {key.display} ({name!r}) for tenant {found.slug}{where}.")
        self.stdout.write("Copy it now: it is shown only this once.")
        self.stdout.write(raw)
