"""Staff admin for tenants, their keys and the model catalog. Thin: writes that matter go
through `tenants.services`; nothing here knows about billing (billing/admin.py extends the
tenant page with the subscription).

Key secrets: only `api_key_create` ever sees one, and the add view shows it once on a page
of its own (never in a message: the default message storage keeps messages in a cookie).
`key_hash` is in no form, list, search or read-only field.
"""

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from .models import ApiKey, CatalogModel, Deployment, Provider, Tenant
from .services import api_key_create, api_key_revoke, tenant_set_status


def save_changed_fields(obj: models.Model, form: forms.ModelForm, *, exclude: tuple[str, ...] = ()) -> None:
    """Save only the columns the staff member changed.

    A plain `save()` writes every column back as it was when the form was loaded, which would
    undo a concurrent write: a key revoked meanwhile would come back to life, a tenant
    suspended meanwhile would be active again, `last_used_at` would go back in time.
    """
    concrete = {f.name for f in obj._meta.concrete_fields}
    fields = [name for name in form.changed_data if name in concrete and name not in exclude]
    if fields:
        fields += [f.name for f in obj._meta.concrete_fields if getattr(f, "auto_now", False)]
        obj.save(update_fields=fields)


# --- keys ----------------------------------------------------------------------------------


def api_key_status(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return "expired"
    return "active"


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        not_expired = models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        match self.value():
            case "active":
                return queryset.filter(not_expired, revoked_at__isnull=True)
            case "expired":
                return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
            case "revoked":
                return queryset.filter(revoked_at__isnull=False)
        return queryset


class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["display", "tenant", "name", "status", "created_at", "expires_at", "last_used_at"]
    list_display_links = ["display"]
    list_select_related = ["tenant"]
    list_filter = [ApiKeyStatusFilter, "tenant"]
    # What staff can see of a key is what they can search for: never the hash.
    search_fields = ["name", "prefix", "last4", "tenant__slug", "tenant__name"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["tenant"]
    actions = ["revoke_keys"]

    add_fields = ["tenant", "name", "expires_at"]
    change_fields = ["tenant", "name", "display", "status", "created_at", "expires_at", "last_used_at", "revoked_at"]
    change_readonly_fields = ["tenant", "display", "status", "created_at", "last_used_at", "revoked_at"]
    key_created_template = "admin/tenants/apikey/key_created.html"

    @admin.display(description="key")
    def display(self, obj: ApiKey) -> str:
        return obj.display

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return api_key_status(obj)

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else self.change_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.change_readonly_fields

    def get_actions(self, request):
        actions = super().get_actions(request)
        # Keys are revoked, not deleted: a deleted key loses its trail in the usage records.
        actions.pop("delete_selected", None)
        return actions

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if object_id is None:
            # Whatever button is pressed, the next page is the one-time page with the secret.
            extra_context = {
                **(extra_context or {}),
                "show_save_and_continue": False,
                "show_save_and_add_another": False,
            }
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        if change:
            save_changed_fields(obj, form)
            return
        key, raw_key = api_key_create(
            tenant=form.cleaned_data["tenant"],
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_at"],
        )
        # The admin goes on with `obj` (log entry, response): make it the row just created.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))
        obj._state.adding, obj._state.db = False, key._state.db
        obj._raw_key = raw_key  # lives as long as this request, never stored

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        raw_key = getattr(obj, "_raw_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "Copy the new API key now",
            "opts": self.opts,
            "key": obj,
            "raw_key": raw_key,
            "change_url": reverse("admin:tenants_apikey_change", args=[obj.pk], current_app=self.admin_site.name),
            "add_url": reverse("admin:tenants_apikey_add", current_app=self.admin_site.name),
            "tenant_url": reverse(
                "admin:tenants_tenant_change", args=[obj.tenant_id], current_app=self.admin_site.name
            ),
        }
        response = TemplateResponse(request, self.key_created_template, context)
        add_never_cache_headers(response)  # admin_view does it too; this page must never be cached
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)


class ApiKeyInline(admin.TabularInline):
    """The tenant's keys, read-only: keys are created and revoked from the API key admin."""

    model = ApiKey
    fields = ["name", "display", "status", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="key")
    def display(self, obj: ApiKey) -> str:
        return obj.display

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return api_key_status(obj)

    def has_add_permission(self, request, obj=None):
        return False


# --- tenants -------------------------------------------------------------------------------


class TenantForm(forms.ModelForm):
    allowed_providers = forms.MultipleChoiceField(
        choices=Provider.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every provider.",
    )

    class Meta:
        model = Tenant
        fields = [
            "slug",
            "name",
            "status",
            "region",
            "allowed_providers",
            "allowed_models",
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent",
        ]


class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["slug", "name", "status", "region", "requests_per_minute", "tokens_per_minute", "max_concurrent"]
    list_filter = ["status", "region"]
    list_select_related: list[str] = []
    search_fields = ["slug", "name"]
    filter_horizontal = ["allowed_models"]
    readonly_fields = ["api_key_add_link", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "status", "region"]}),
        ("Access", {"fields": ["allowed_providers", "allowed_models"]}),
        ("Limits", {"fields": ["requests_per_minute", "tokens_per_minute", "max_concurrent"]}),
        (None, {"fields": ["api_key_add_link", "created_at", "updated_at"]}),
    ]
    inlines = [ApiKeyInline]
    actions = ["suspend_tenants", "resume_tenants"]

    @admin.display(description="API keys")
    def api_key_add_link(self, obj: Tenant) -> str:
        if obj.pk is None:
            return "Save the tenant first."
        url = reverse("admin:tenants_apikey_add", current_app=self.admin_site.name)
        return format_html('<a class="addlink" href="{}?tenant={}">Create an API key</a>', url, obj.pk)

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        save_changed_fields(obj, form, exclude=("status",))
        if "status" in form.changed_data:
            tenant_set_status(tenant=obj, status=form.cleaned_data["status"])

    def _set_status(self, request, queryset, status: str, verb: str) -> None:
        changed = 0
        for tenant in queryset.exclude(status=status):
            tenant_set_status(tenant=tenant, status=status)
            changed += 1
        self.message_user(request, f"{verb} {changed} tenant(s).", messages.SUCCESS)

    @admin.action(description="Suspend selected tenants", permissions=["change"])
    def suspend_tenants(self, request, queryset):
        self._set_status(request, queryset, Tenant.Status.SUSPENDED, "Suspended")

    @admin.action(description="Resume selected tenants", permissions=["change"])
    def resume_tenants(self, request, queryset):
        self._set_status(request, queryset, Tenant.Status.ACTIVE, "Resumed")


# --- catalog -------------------------------------------------------------------------------


class DeploymentInline(admin.TabularInline):
    model = Deployment
    fields = ["provider", "upstream", "region", "base_url", "priority", "active"]
    extra = 0
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class CatalogModelAdmin(admin.ModelAdmin):
    list_display = ["name", "provider", "active", "context_window", "deployment_count"]
    list_filter = ["provider", "active"]
    search_fields = ["name"]
    readonly_fields = ["created_at"]
    inlines = [DeploymentInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_deployments=models.Count("deployments"))

    @admin.display(description="deployments", ordering="_deployments")
    def deployment_count(self, obj: CatalogModel) -> int:
        return obj._deployments


admin.site.register(Tenant, TenantAdmin)
admin.site.register(ApiKey, ApiKeyAdmin)
admin.site.register(CatalogModel, CatalogModelAdmin)
