"""The audit trail in the admin: read, filter, export; never added to, changed or deleted.

Entries are written by tenants/audit.py; this page only reads them. Every permission but
"view" is refused (the add, change and delete views answer 403, there are no actions), and on
PostgreSQL the database refuses UPDATE and DELETE anyway (tenants migration 0011_audit_trail).
"""

import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing.csvsafe import csv_writer
from tenants.models import AuditEntry

CSV_COLUMNS = (
    "at",
    "actor_kind",
    "actor_label",
    "staff_user_id",
    "api_key_id",
    "tenant_id",
    "tenant_slug",
    "object_type",
    "object_id",
    "object_repr",
    "action",
    "changes",
)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    # Kind and label, type and name share a column: the list stays within a 1280 px screen.
    list_display = ("at", "actor", "tenant_slug", "target", "action", "summary")
    list_filter = ("actor_kind", "action", "object_type", "tenant_slug", "actor_label")
    date_hierarchy = "at"
    search_fields = ("actor_label", "tenant_slug", "object_repr", "object_id")
    readonly_fields = (*(c for c in CSV_COLUMNS if c != "changes"), "changes_table")
    exclude = ("changes",)
    actions = None
    list_per_page = 100
    show_full_result_count = False  # the trail only grows: no second COUNT(*) of all of it

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="actor", ordering="actor_label")
    def actor(self, entry: AuditEntry) -> str:
        return f"{entry.actor_kind}: {entry.actor_label}"

    @admin.display(description="object", ordering="object_type")
    def target(self, entry: AuditEntry) -> str:
        return f"{entry.object_type}: {entry.object_repr}"

    @admin.display(description="changes")
    def summary(self, entry: AuditEntry) -> str:
        return ", ".join(entry.changes)

    @admin.display(description="changes")
    def changes_table(self, entry: AuditEntry) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((name, _text(pair[0]), _text(pair[1])) for name, pair in entry.changes.items()),
        )
        return format_html("<table><tr><th>field</th><th>before</th><th>after</th></tr>{}</table>", rows)

    def get_urls(self):
        return [
            path("export/", self.admin_site.admin_view(self.export_view), name="tenants_auditentry_export"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        context = {"export_query": request.GET.urlencode(), **(extra_context or {})}
        return super().changelist_view(request, extra_context=context)

    def export_view(self, request):
        """The changelist's entries as CSV, with the same filters, search and dates (its query string)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        entries = self.get_changelist_instance(request).get_queryset(request)
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        writer = csv_writer(response)
        writer.writerow(CSV_COLUMNS)
        for entry in entries.iterator(chunk_size=2000):
            writer.writerow(
                [
                    entry.at.isoformat(),
                    entry.actor_kind,
                    entry.actor_label,
                    entry.staff_user_id,
                    entry.api_key_id,
                    entry.tenant_id,
                    entry.tenant_slug,
                    entry.object_type,
                    entry.object_id,
                    entry.object_repr,
                    entry.action,
                    json.dumps(entry.changes, sort_keys=True, ensure_ascii=False),
                ]
            )
        return response


def _text(value) -> str:
    return "—" if value is None else json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
