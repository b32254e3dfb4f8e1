"""`manage.py purge_tenant_data SLUG [--yes]`: delete a tenant's request logs (prompts and
responses), prompt templates and stored Responses API responses. Billing (usage records, invoices) is kept."""

from django.core.management.base import CommandError

from tenants.audit import AuditedCommand
from tenants.models import PromptTemplate, RequestLog, StoredResponse, Tenant
from tenants.services import tenant_data_purge


class Command(AuditedCommand):
    help = "Delete every request log and prompt template of one tenant (billing data is kept)."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the tenant's slug")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args, slug: str, yes: bool, **options):
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"no tenant {slug!r}")
        logs = RequestLog.objects.filter(tenant=tenant).count()
        templates = PromptTemplate.objects.filter(tenant=tenant).count()
        responses = StoredResponse.objects.filter(tenant=tenant).count()
        self.stdout.write(
            f"tenant {slug}: {logs} request log(s) and {templates} prompt template version(s) will be deleted, "
            f"with {responses} stored response(s); usage records and invoices are kept"
        )
        if not yes:
            answer = input(f"Type the tenant's slug ({slug}) to delete them: ")
            if answer.strip() != slug:
                raise CommandError("not confirmed; nothing was deleted")
        deleted = tenant_data_purge(tenant=tenant)
        self.stdout.write(
            f"deleted {deleted['request_logs']} request log(s), {deleted['prompt_templates']} "
            f"prompt template version(s) and {deleted['stored_responses']} stored response(s) of {slug}"
        )
