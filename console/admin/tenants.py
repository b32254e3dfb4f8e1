"""Staff admin for tenants, their keys, profiles and data, provider credentials, the platform
policy and the model catalog. Thin: writes that matter go through `tenants.services`, and
what is valid is decided by `tenants.profiles` (the configuration file import uses the same
checks). `TenantAdmin` is not registered here: console/admin/billing.py registers the tenant
page once, as this class plus the plan, the subscription and the overview.

Secrets: only `api_key_create` / `api_key_rotate` ever see a tenant key, and the admin shows it
once, on the page that answers the POST (never in a message: the default message storage keeps
messages in a cookie). `key_hash` is in no form, list, search or read-only field. A provider
credential's secret goes in through a password field that is never rendered back, and comes
out nowhere: only its last 4 characters are shown.

Bulk actions on tenants (limits, models, suspend/resume) are all or nothing: one transaction,
and a refusal for one tenant changes none.
"""

import json
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.db import models, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from tenants.key_events import api_keys_changed
from tenants.models import (
    ApiKey,
    CatalogModel,
    Deployment,
    PlatformPolicy,
    Project,
    PromptTemplate,
    Provider,
    ProviderCredential,
    RequestLog,
    Tenant,
)
from tenants.profiles import (
    POLICY_FIELDS,
    deployment_family_problems,
    end_user_limits_clean,
    fallbacks_problems,
    key_models_problems,
    policy_problems,
    positive_int_problems,
    positive_money_problems,
    profile_problems,
    project_problems,
)
from tenants.prompting import TemplateError, template_create_version, template_validate_messages, template_validate_name
from tenants.selectors import model_scope, tenant_model_scope
from tenants.services import (
    LIMIT_FIELDS,
    Refused,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_set_models,
    credential_deactivate,
    credential_set,
    platform_policy_update,
    tenant_set_status,
    tenants_set_limits,
    tenants_set_models,
)


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


def adopt(obj: models.Model, saved: models.Model) -> None:
    """Make the admin's `obj` the row a service just wrote, so that the admin goes on with it
    (log entry, redirect) as if it had saved `obj` itself."""
    for field in obj._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding, obj._state.db = False, saved._state.db


def secret_page(request: HttpRequest, template: str, context: dict) -> TemplateResponse:
    """A page that shows a secret: the answer to the POST itself, never cached."""
    response = TemplateResponse(request, template, context)
    add_never_cache_headers(response)  # admin_view does it too; this page must never be cached
    return response


def limits_display(obj) -> str:
    parts = [
        f"{label} {value}"
        for label, value in (
            ("rpm", obj.requests_per_minute),
            ("tpm", obj.tokens_per_minute),
            ("concurrent", obj.max_concurrent),
        )
        if value is not None
    ]
    return ", ".join(parts) or "—"


def add_problems(form: forms.Form, problems) -> None:
    for problem in problems:
        name = problem.field if problem.field in form.fields else None
        form.add_error(name, problem.detail if name else f"{problem.field}: {problem.detail}")


# --- keys ----------------------------------------------------------------------------------


def api_key_status(key: ApiKey) -> str:
    return key.status_at(timezone.now())


# Past this many tenants, a tenant filter lists only the tenant chosen (TenantListFilter).
TENANT_FILTER_CHOICES = 100


class TenantListFilter(admin.RelatedFieldListFilter):
    """The sidebar's tenant filter: every tenant as a link while there are few; past
    TENANT_FILTER_CHOICES only the tenant chosen (from a tenant's page, or `?tenant__id__exact=`),
    so that a list page of a platform with thousands of tenants does not render a link to each
    (and a facet count per tenant). Search finds rows by tenant slug or name instead."""

    def field_choices(self, field, request, model_admin):
        tenants = field.remote_field.model._default_manager
        if tenants.count() <= TENANT_FILTER_CHOICES:
            return super().field_choices(field, request, model_admin)
        chosen = [value for value in self.lookup_val or () if str(value).isdigit()]
        return [(tenant.pk, str(tenant)) for tenant in tenants.filter(pk__in=chosen)] if chosen else []

    def has_output(self):
        return bool(self.lookup_val) or super().has_output()


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        not_expired = models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        not_revoked = models.Q(revoked_at__isnull=True) | models.Q(revoked_at__gt=now)
        match self.value():
            case "active":
                return queryset.filter(not_expired, not_revoked)
            case "expired":
                return queryset.filter(not_revoked, expires_at__lte=now)
            case "revoked":
                return queryset.filter(revoked_at__lte=now)
        return queryset


# What staff set on a key (the add form's fields; `is_admin` is read-only once the key exists).
KEY_FORM_FIELDS = [
    "tenant",
    "project",
    "name",
    "is_admin",
    "expires_at",
    "allowed_models",
    *LIMIT_FIELDS,
    "monthly_budget",
    "daily_budget",
]


class ApiKeyForm(forms.ModelForm):
    """A key's name, expiry, model scope, limits and monthly budget; the scope must lie within
    the tenant's models."""

    class Meta:
        model = ApiKey
        fields = KEY_FORM_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "project" in self.fields:
            # Only the key's tenant's projects: a new key's tenant comes from ?tenant= (the tenant
            # page's "Create an API key" link) or from the posted form.
            tenant = (
                self.instance.tenant_id if self.instance.pk else self.data.get("tenant") or self.initial.get("tenant")
            )
            try:
                tenant_id = int(getattr(tenant, "pk", tenant))
            except (TypeError, ValueError):
                tenant_id = None
            self.fields["project"].queryset = Project.objects.filter(tenant_id=tenant_id).order_by("name")
            self.fields["project"].help_text = "One of the tenant's projects (its limits apply too); empty: none."

    def clean(self):
        cleaned = super().clean()
        for name in LIMIT_FIELDS:
            if name in self.fields:
                add_problems(self, positive_int_problems(cleaned.get(name), name))
        for name in ("monthly_budget", "daily_budget"):
            if name in self.fields and name in cleaned:
                add_problems(self, positive_money_problems(cleaned[name], name))
        tenant = cleaned.get("tenant") if "tenant" in self.fields else self.instance.tenant
        project = cleaned.get("project")
        if project is not None and tenant is not None and project.tenant_id != tenant.pk:
            self.add_error("project", "This project belongs to another tenant.")
        chosen = {m.name for m in cleaned.get("allowed_models") or []}
        if self.instance.pk is not None:
            # Only additions are checked: a model the key already has may have left the tenant or
            # the catalog since; refusing it would block every other edit of the key.
            chosen -= set(self.instance.allowed_models.values_list("name", flat=True))
        if tenant is not None and chosen:
            for problem in key_models_problems(chosen, scope=tenant_model_scope(tenant=tenant)):
                self.add_error("allowed_models", problem.message)
        return cleaned


GRACE_CHOICES = [
    (0, "None: the old key stops working now"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
]


class RotateForm(forms.Form):
    grace = forms.TypedChoiceField(
        label="The old key keeps working for",
        choices=GRACE_CHOICES,
        coerce=int,
        initial=86400,
        widget=forms.RadioSelect,
        help_text="Never longer than an expiry the old key already has.",
    )


class ApiKeyColumns:
    """The columns a key shows wherever it is listed (its own admin, the tenant's inline)."""

    @admin.display(description="key")
    def display(self, obj: ApiKey) -> str:
        return obj.display

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return api_key_status(obj)

    @admin.display(description="models")
    def scope(self, obj: ApiKey) -> str:
        names = [m.name for m in obj.allowed_models.all()]  # prefetched by the queryset
        return ", ".join(names) if names else "the tenant's"


class ApiKeyAdmin(ApiKeyColumns, admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "display",
        "tenant",
        "name",
        "status",
        "scope",
        "project",
        "limits",
        "budgets",
        "created_at",
        "last_used_at",
    ]
    list_display_links = ["display"]
    list_select_related = ["tenant", "project"]
    list_filter = [ApiKeyStatusFilter, ("tenant", TenantListFilter)]
    # What staff can see of a key is what they can search for: never the hash.
    search_fields = ["name", "prefix", "last4", "tenant__slug", "tenant__name"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["tenant"]
    filter_horizontal = ["allowed_models"]
    actions = ["rotate_keys", "revoke_keys"]

    add_fields = KEY_FORM_FIELDS
    change_fields = [
        "tenant",
        "project",
        "name",
        "is_admin",
        "display",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "allowed_models",
        *LIMIT_FIELDS,
        "monthly_budget",
        "daily_budget",
    ]
    # A key's kind is chosen when it is made: an ordinary key never becomes an admin key (nor back).
    change_readonly_fields = ["tenant", "is_admin", "display", "status", "created_at", "last_used_at", "revoked_at"]
    key_created_template = "admin/tenants/apikey/key_created.html"
    rotate_template = "admin/tenants/apikey/rotate.html"
    keys_rotated_template = "admin/tenants/apikey/keys_rotated.html"

    @admin.display(description="budgets (USD)")
    def budgets(self, key: ApiKey) -> str:
        """The key's own budgets in one column (the list stays within a 1280 px screen)."""
        parts = [
            f"{amount} / {per}" for amount, per in ((key.monthly_budget, "month"), (key.daily_budget, "day")) if amount
        ]
        return ", ".join(parts) or "—"

    @admin.display(description="limits")
    def limits(self, obj: ApiKey) -> str:
        return limits_display(obj)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("allowed_models")

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
            api_keys_changed(key_ids=[obj.pk])  # every gateway process forgets the old settings at once
            return
        data = form.cleaned_data
        key, raw_key = api_key_create(
            tenant=data["tenant"],
            name=data["name"],
            is_admin=data["is_admin"],
            expires_at=data["expires_at"],
            allowed_models=list(data["allowed_models"]),
            **{name: data[name] for name in LIMIT_FIELDS},
            monthly_budget=data["monthly_budget"],
            project=data.get("project"),
            daily_budget=data.get("daily_budget"),
        )
        adopt(obj, key)
        obj._raw_key = raw_key  # lives as long as this request, never stored

    def save_related(self, request, form, formsets, change):
        # The key's models are set by the service, which checks them against the tenant's.
        if change and "allowed_models" in form.changed_data:
            api_key_set_models(key=form.instance, models=list(form.cleaned_data["allowed_models"]))

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
        return secret_page(request, self.key_created_template, context)

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)

    @admin.action(description="Rotate selected API keys…", permissions=["change"])
    def rotate_keys(self, request, queryset):
        """First a page to choose the grace period; then every selected active key is replaced
        by a new one (same tenant, name, scope, limits and budget), all or none, and the new secrets
        are shown once on the page that answers that POST."""
        now = timezone.now()
        keys = list(queryset.select_related("tenant").order_by("tenant__slug", "name", "pk"))
        active = [k for k in keys if k.status_at(now) == "active"]
        skipped = [k for k in keys if k.status_at(now) != "active"]
        if not active:
            self.message_user(
                request, "No active key selected: revoked and expired keys cannot be rotated.", messages.WARNING
            )
            return None
        form = RotateForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            grace = timedelta(seconds=form.cleaned_data["grace"])
            try:
                with transaction.atomic():
                    rotated = [(old, *api_key_rotate(key=old, grace=grace)) for old in active]
            except Refused as exc:
                self.message_user(request, f"Nothing was rotated: {exc}", messages.ERROR)
                return None
            for old, new, _raw in rotated:
                ends = timezone.localtime(old.expires_at).isoformat(timespec="seconds")
                self.log_change(request, old, f"Rotated: replaced by {new.display}; works until {ends}.")
                self.log_addition(request, new, f"Created by rotating {old.display}.")
            context = {
                **self.admin_site.each_context(request),
                "title": "Copy the new API keys now",
                "opts": self.opts,
                "rotated": rotated,
                "skipped": skipped,
                "changelist_url": reverse("admin:tenants_apikey_changelist", current_app=self.admin_site.name),
            }
            return secret_page(request, self.keys_rotated_template, context)
        context = {
            **self.admin_site.each_context(request),
            "title": "Rotate API keys",
            "opts": self.opts,
            "keys": active,
            "skipped": skipped,
            "form": form,
            "action": "rotate_keys",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, self.rotate_template, context)


class ApiKeyInline(ApiKeyColumns, admin.TabularInline):
    """The tenant's keys, read-only: keys are created, rotated and revoked from the API key admin."""

    model = ApiKey
    fields = [
        "name",
        "project",
        "display",
        "status",
        "scope",
        "limits",
        "monthly_budget",
        "daily_budget",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="limits")
    def limits(self, obj: ApiKey) -> str:
        return limits_display(obj)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project").prefetch_related("allowed_models")

    def has_add_permission(self, request, obj=None):
        return False


# --- projects ------------------------------------------------------------------------------


class ProjectForm(forms.ModelForm):
    """A project's name, limits and monthly budget, checked by `tenants.profiles.project_problems`
    (the configuration file's import runs the same checks)."""

    class Meta:
        model = Project
        fields = ["tenant", "name", *LIMIT_FIELDS, "monthly_budget"]

    def clean(self):
        cleaned = super().clean()
        values = {name: cleaned.get(name) for name in (*LIMIT_FIELDS, "monthly_budget") if name in cleaned}
        if "name" in cleaned:
            add_problems(self, project_problems(name=cleaned["name"], **values))
        return cleaned


class ProjectAdmin(admin.ModelAdmin):
    form = ProjectForm
    list_display = ["name", "tenant", "requests_per_minute", "tokens_per_minute", "max_concurrent", "monthly_budget"]
    list_select_related = ["tenant"]
    list_filter = ["tenant"]
    search_fields = ["name", "tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["tenant"]  # a project's keys and records stay in its tenant


class ProjectInline(admin.TabularInline):
    """The tenant's projects, editable in place (keys are assigned to them in the key admin)."""

    model = Project
    form = ProjectForm
    fields = ["name", *LIMIT_FIELDS, "monthly_budget"]
    extra = 0
    show_change_link = True


# --- tenants -------------------------------------------------------------------------------


class TenantForm(forms.ModelForm):
    """The tenant, its access and its profile. The profile is checked by `tenants.profiles`
    against the access chosen on the same form (an alias must name a model the tenant keeps)."""

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
            "model_aliases",
            "default_params",
            "max_tokens_cap",
            "log_requests",
            "log_retention_days",
            "response_cache_seconds",
            "end_user_limits",
            "hash_end_user_ids",
        ]
        help_texts = {
            "default_params": (
                "Filled in when a request leaves them out. Allowed: temperature, top_p, max_tokens, "
                'presence_penalty, frequency_penalty, stop, seed, user. E.g. {"temperature": 0.2}.'
            ),
            "log_retention_days": "Request logs older than this are deleted.",
        }

    def clean(self):
        cleaned = super().clean()
        for name in LIMIT_FIELDS:
            add_problems(self, positive_int_problems(cleaned.get(name), name))
        profile_fields = (
            "model_aliases",
            "default_params",
            "max_tokens_cap",
            "log_retention_days",
            "response_cache_seconds",
        )
        if any(name in self.errors for name in (*profile_fields, "allowed_models", "allowed_providers")):
            return cleaned  # a field that did not parse: its own error says it
        scope = None
        access = ("model_aliases", "allowed_models", "allowed_providers")
        if self.instance.pk is None or any(name in self.changed_data for name in access):
            # Aliases are checked when they or the tenant's access change; an alias broken since
            # by a catalog edit does not block unrelated edits (the gateway answers 404 for it).
            scope = model_scope(
                models={m.name for m in cleaned.get("allowed_models") or []},
                providers=set(cleaned.get("allowed_providers") or []),
            )
        values, problems = profile_problems(scope=scope, **{name: cleaned.get(name) for name in profile_fields})
        add_problems(self, problems)
        if not problems:
            cleaned.update(values)  # e.g. {} for an emptied field, not a JSON null
        if "end_user_limits" in self.fields and "end_user_limits" not in self.errors:
            end_user_limits, problems = end_user_limits_clean(cleaned.get("end_user_limits"))
            add_problems(self, problems)
            cleaned["end_user_limits"] = end_user_limits
        return cleaned


class LimitsForm(forms.Form):
    """Blank: leave the tenants' value as it is; "clear": no limit of the tenant's own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in LIMIT_FIELDS:
            label = name.replace("_", " ").capitalize()
            self.fields[name] = forms.IntegerField(label=label, required=False, min_value=1, max_value=2_147_483_647)
            self.fields[f"clear_{name}"] = forms.BooleanField(label=f"Clear {label.lower()}", required=False)

    def clean(self):
        cleaned = super().clean()
        for name in LIMIT_FIELDS:
            if cleaned.get(name) is not None and cleaned.get(f"clear_{name}"):
                self.add_error(name, "Either a value or clear, not both.")
        if not self.errors and not self.limits():
            raise forms.ValidationError("Nothing to change: give a value or tick clear for at least one limit.")
        return cleaned

    def limits(self) -> dict[str, int | None]:
        data = self.cleaned_data
        changes: dict[str, int | None] = {}
        for name in LIMIT_FIELDS:
            if data.get(f"clear_{name}"):
                changes[name] = None
            elif data.get(name) is not None:
                changes[name] = data[name]
        return changes


class ModelsForm(forms.Form):
    enable = forms.ModelMultipleChoiceField(
        queryset=CatalogModel.objects.filter(active=True).order_by("name"),
        required=False,
        widget=FilteredSelectMultiple("models to enable", is_stacked=False),
        help_text="Added to each tenant's models (a tenant allowed every model has them already).",
    )
    disable = forms.ModelMultipleChoiceField(
        queryset=CatalogModel.objects.order_by("name"),
        required=False,
        widget=FilteredSelectMultiple("models to disable", is_stacked=False),
        help_text="Removed from each tenant's models (a tenant allowed every model gets the list of the others).",
    )

    def clean(self):
        cleaned = super().clean()
        enable, disable = set(cleaned.get("enable") or ()), set(cleaned.get("disable") or ())
        if not self.errors and not enable and not disable:
            raise forms.ValidationError("Nothing to change: choose models to enable or to disable.")
        both = sorted(m.name for m in enable & disable)
        if both:
            raise forms.ValidationError(f"Enabled and disabled at once: {', '.join(both)}.")
        return cleaned


class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["slug", "name", "status", "region", "requests_per_minute", "tokens_per_minute", "max_concurrent"]
    list_filter = ["status", "region", "log_requests"]
    list_select_related: list[str] = []
    search_fields = ["slug", "name"]
    filter_horizontal = ["allowed_models"]
    readonly_fields = ["api_key_add_link", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "status", "region"]}),
        ("Access", {"fields": ["allowed_providers", "allowed_models"]}),
        ("Limits", {"fields": ["requests_per_minute", "tokens_per_minute", "max_concurrent"]}),
        ("Profile", {"fields": ["model_aliases", "default_params", "max_tokens_cap", "response_cache_seconds"]}),
        ("Request logs", {"fields": ["log_requests", "log_retention_days"]}),
        ("End users", {"fields": ["end_user_limits", "hash_end_user_ids"]}),
        (None, {"fields": ["api_key_add_link", "created_at", "updated_at"]}),
    ]
    inlines = [ProjectInline, ApiKeyInline]
    actions = ["suspend_tenants", "resume_tenants", "set_limits", "set_models"]
    bulk_action_template = "admin/tenants/tenant/bulk_action.html"

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
        ids = list(queryset.exclude(status=status).values_list("pk", flat=True))
        with transaction.atomic():  # all or none
            for tenant in Tenant.objects.filter(pk__in=ids).order_by("pk").select_for_update():
                tenant_set_status(tenant=tenant, status=status)
                changed += 1
        self.message_user(request, f"{verb} {changed} tenant(s).", messages.SUCCESS)

    @admin.action(description="Suspend selected tenants", permissions=["change"])
    def suspend_tenants(self, request, queryset):
        self._set_status(request, queryset, Tenant.Status.SUSPENDED, "Suspended")

    @admin.action(description="Resume selected tenants", permissions=["change"])
    def resume_tenants(self, request, queryset):
        self._set_status(request, queryset, Tenant.Status.ACTIVE, "Resumed")

    def bulk_action_page(
        self, request, queryset, *, action: str, title: str, form: forms.Form, problems: list[str] = ()
    ) -> TemplateResponse:
        """The intermediate page of a bulk action: the selected tenants, a form, and the problems
        that refused the last attempt (nothing was changed then). Posting it with "apply" runs
        the action again with the form's data. Other apps' tenant actions can use it too."""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "tenants": list(queryset.order_by("slug")),
            "form": form,
            "problems": problems,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, self.bulk_action_template, context)

    @admin.action(description="Set limits of selected tenants…", permissions=["change"])
    def set_limits(self, request, queryset):
        form = LimitsForm(request.POST if "apply" in request.POST else None)
        problems: list[str] = []
        if form.is_bound and form.is_valid():
            try:
                count = tenants_set_limits(tenants=list(queryset), limits=form.limits())
            except Refused as exc:
                problems = exc.problems
            else:
                changes = ", ".join(f"{k} {'cleared' if v is None else v}" for k, v in form.limits().items())
                for tenant in queryset:
                    self.log_change(request, tenant, f"Bulk limits: {changes}.")
                self.message_user(request, f"Set limits of {count} tenant(s): {changes}.", messages.SUCCESS)
                return None
        return self.bulk_action_page(
            request, queryset, action="set_limits", title="Set limits", form=form, problems=problems
        )

    @admin.action(description="Enable or disable models for selected tenants…", permissions=["change"])
    def set_models(self, request, queryset):
        form = ModelsForm(request.POST if "apply" in request.POST else None)
        problems: list[str] = []
        if form.is_bound and form.is_valid():
            try:
                changes = tenants_set_models(
                    tenants=list(queryset),
                    enable=list(form.cleaned_data["enable"]),
                    disable=list(form.cleaned_data["disable"]),
                )
            except Refused as exc:
                problems = exc.problems
            else:
                by_slug = {t.slug: t for t in queryset}
                for change in changes:
                    slug, _, what = change.partition(": ")
                    self.log_change(request, by_slug[slug], f"Bulk models: {what}.")
                summary = "; ".join(changes) if changes else "nothing to change"
                self.message_user(request, f"Models of {len(changes)} tenant(s) changed: {summary}.", messages.SUCCESS)
                return None
        return self.bulk_action_page(
            request, queryset, action="set_models", title="Enable or disable models", form=form, problems=problems
        )


# --- provider credentials ------------------------------------------------------------------


class ProviderCredentialForm(forms.ModelForm):
    secret = forms.CharField(
        label="Secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; never shown again (only its last 4 characters).",
    )
    base_url = forms.URLField(
        label="Base URL",
        required=False,
        max_length=200,
        assume_scheme="https",
        help_text="Staff only. Empty: the provider's endpoint from the environment.",
    )

    class Meta:
        model = ProviderCredential
        fields = ["tenant", "provider", "base_url"]
        help_texts = {
            "tenant": "Empty: the platform's own account.",
        }

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is None and not cleaned.get("secret"):
            self.add_error("secret", "Enter the provider's API key.")
        return cleaned


@method_decorator(sensitive_post_parameters("secret"), name="changeform_view")
class ProviderCredentialAdmin(admin.ModelAdmin):
    """Bring-your-own-key and platform provider keys. A new secret for a tenant and provider is a
    new row (the previous one is deactivated, kept for the record); the secret never comes back."""

    form = ProviderCredentialForm
    list_display = ["owner", "provider", "key", "base_url", "active", "created_at"]
    list_select_related = ["tenant"]
    list_filter = ["provider", "active"]
    search_fields = ["tenant__slug", "tenant__name", "provider", "last4"]
    autocomplete_fields = ["tenant"]
    actions = ["deactivate_credentials"]

    @admin.display(description="owner", ordering="tenant__slug")
    def owner(self, obj: ProviderCredential) -> str:
        return obj.tenant.slug if obj.tenant_id else "platform"

    @admin.display(description="secret")
    def key(self, obj: ProviderCredential) -> str:
        return f"…{obj.last4}"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["tenant", "provider", "secret", "base_url"]
        return ["owner", "provider", "key", "active", "created_at", "secret", "base_url"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["owner", "provider", "key", "active", "created_at"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            form.base_fields["secret"].label = "New secret"
            form.base_fields["secret"].help_text = (
                "Leave empty to keep the current one. A new secret is stored as a new credential "
                "and this one is deactivated."
            )
        return form

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change and not data.get("secret"):
            save_changed_fields(obj, form)
            return
        tenant = data.get("tenant") if not change else obj.tenant
        provider = data.get("provider") if not change else obj.provider
        saved = credential_set(
            tenant=tenant, provider=provider, secret=data["secret"], base_url=data.get("base_url", "")
        )
        adopt(obj, saved)

    @admin.action(description="Deactivate selected credentials", permissions=["change"])
    def deactivate_credentials(self, request, queryset):
        count = 0
        for credential in queryset.filter(active=True):
            credential_deactivate(credential=credential)
            count += 1
        self.message_user(request, f"Deactivated {count} credential(s).", messages.SUCCESS)


# --- the platform policy -------------------------------------------------------------------


class PlatformPolicyForm(forms.ModelForm):
    blocked_models = forms.MultipleChoiceField(
        required=False,
        widget=FilteredSelectMultiple("blocked models", is_stacked=False),
        help_text="Refused for every tenant (403).",
    )
    blocked_providers = forms.MultipleChoiceField(
        choices=Provider.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Every model of these providers is refused (403).",
    )
    killed_providers = forms.MultipleChoiceField(
        choices=Provider.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Kill switch: deployments of these providers are skipped (503 if none is left).",
    )

    class Meta:
        model = PlatformPolicy
        fields = list(POLICY_FIELDS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = list(CatalogModel.objects.order_by("name").values_list("name", flat=True))
        # A blocked name that left the catalog stays visible, so that staff can unblock it.
        extra = [n for n in (self.instance.blocked_models or []) if n not in names]
        self.fields["blocked_models"].choices = [(n, n) for n in [*names, *extra]]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        values = {name: cleaned.get(name) for name in POLICY_FIELDS}
        before = set(self.instance.blocked_models or [])
        catalog = set(CatalogModel.objects.values_list("name", flat=True)) | before  # unblocking is always fine
        add_problems(self, policy_problems(catalog=catalog, **values))
        return cleaned


class PlatformPolicyAdmin(admin.ModelAdmin):
    """One row: the list goes straight to it (or to the add page before it exists)."""

    form = PlatformPolicyForm
    fieldsets = [
        ("Blocking", {"fields": ["blocked_models", "blocked_providers", "killed_providers"]}),
        ("Everyone", {"fields": ["max_tokens_cap", "maintenance_message", "updated_at"]}),
    ]
    readonly_fields = ["updated_at"]

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not PlatformPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        policy = PlatformPolicy.objects.order_by("pk").first()
        if policy is not None:
            return HttpResponseRedirect(reverse("admin:tenants_platformpolicy_change", args=[policy.pk]))
        return HttpResponseRedirect(reverse("admin:tenants_platformpolicy_add"))

    def save_model(self, request, obj, form, change):
        names = [name for name in POLICY_FIELDS if not change or name in form.changed_data]
        saved = platform_policy_update(changes={name: form.cleaned_data[name] for name in names})
        adopt(obj, saved)


# --- prompt templates and request logs -----------------------------------------------------


class PromptTemplateForm(forms.ModelForm):
    class Meta:
        model = PromptTemplate
        fields = ["tenant", "name", "description", "messages"]
        help_texts = {"name": "An existing name gets its next version; a new name starts at version 1."}

    def clean(self):
        cleaned = super().clean()
        checks = (("name", template_validate_name), ("messages", template_validate_messages))
        for name, check in checks:
            if name in cleaned and name not in self.errors:
                try:
                    check(cleaned[name])
                except TemplateError as exc:
                    self.add_error(name, exc.message)
        return cleaned


class PromptTemplateAdmin(admin.ModelAdmin):
    """Staff read every version and add new ones; a saved version never changes (a request may
    name it), so existing rows are read-only and "edit" means "add the next version"."""

    form = PromptTemplateForm
    list_display = ["name", "version", "tenant", "description", "created_at"]
    list_select_related = ["tenant"]
    list_filter = [("tenant", TenantListFilter)]
    search_fields = ["name", "description", "tenant__slug"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["tenant"]
    readonly_fields = ["tenant", "name", "version", "description", "messages_json", "created_at", "new_version"]

    def get_fields(self, request, obj=None):
        return ["tenant", "name", "description", "messages"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return False if obj is not None else super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False  # `manage.py purge_tenant_data` removes a tenant's templates

    @admin.display(description="messages")
    def messages_json(self, obj: PromptTemplate) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.messages, indent=2, ensure_ascii=False))

    @admin.display(description="next version")
    def new_version(self, obj: PromptTemplate) -> str:
        url = reverse("admin:tenants_prompttemplate_add", current_app=self.admin_site.name)
        return format_html('<a class="addlink" href="{}?from={}">Add a new version from this one</a>', url, obj.pk)

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        source_id = request.GET.get("from", "")
        source = PromptTemplate.objects.filter(pk=source_id).first() if source_id.isdigit() else None
        if source is not None:
            initial.update(
                tenant=source.tenant_id, name=source.name, description=source.description, messages=source.messages
            )
        return initial

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        saved = template_create_version(
            tenant_id=data["tenant"].pk, name=data["name"], messages=data["messages"], description=data["description"]
        )
        adopt(obj, saved)


class RequestLogAdmin(admin.ModelAdmin):
    """Read-only. The table is large: no full count, related rows joined, a date drill-down."""

    list_display = ["created_at", "request_id", "tenant", "key", "model", "endpoint", "status_code"]
    list_select_related = ["tenant", "api_key"]
    list_filter = [("tenant", TenantListFilter), "endpoint"]
    search_fields = ["=request_id"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = [
        "created_at",
        "request_id",
        "tenant",
        "key",
        "model",
        "endpoint",
        "status_code",
        "request_json",
        "response_json",
    ]
    readonly_fields = fields

    @admin.display(description="key")
    def key(self, obj: RequestLog) -> str:
        return obj.api_key.display if obj.api_key_id else "—"

    @admin.display(description="request")
    def request_json(self, obj: RequestLog) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.request, indent=2, ensure_ascii=False))

    @admin.display(description="response")
    def response_json(self, obj: RequestLog) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.response, indent=2, ensure_ascii=False))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- catalog -------------------------------------------------------------------------------


class DeploymentFormSet(forms.BaseInlineFormSet):
    """Every active deployment speaks the model's family (tenants.profiles, as the file import)."""

    def clean(self) -> None:
        super().clean()
        kept = [
            form
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE") and form.cleaned_data.get("active", True)
        ]
        provider = self.instance.provider
        for problem in deployment_family_problems(provider, [form.cleaned_data.get("provider") for form in kept]):
            kept[problem.path[1]].add_error("provider", problem.message)


class DeploymentInline(admin.StackedInline):
    """Deployments of a catalog model. base_url is set here by staff only, never by a tenant (SSRF)."""

    model = Deployment
    formset = DeploymentFormSet
    # Stacked, a deployment to a block: its fourteen fields do not fit a 1280 px row.
    fieldsets = [
        (None, {"fields": [("provider", "upstream", "region"), "base_url", "active"]}),
        (
            "Routing and the provider account's quota",
            {"fields": [("priority", "weight"), ("requests_per_minute", "tokens_per_minute"), "timeout_seconds"]},
        ),
        (
            "Circuit breaker (empty: the GATEWAY_BREAKER_* settings)",
            {"fields": [("breaker_failures", "breaker_window_seconds", "breaker_cooldown_seconds")]},
        ),
    ]
    extra = 0
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class CatalogModelForm(forms.ModelForm):
    class Meta:
        model = CatalogModel
        fields = ["name", "provider", "kind", "active", "context_window", "routing", "fallbacks", "affinity"]

    def clean_fallbacks(self):
        # An emptied field is None to the JSON form field; the column wants a list.
        value = self.cleaned_data["fallbacks"]
        return [] if value is None else value

    def clean(self):
        cleaned = super().clean()
        if "fallbacks" in cleaned:
            name = cleaned.get("name", self.instance.name)
            kind = cleaned.get("kind", self.instance.kind)
            catalog = dict(CatalogModel.objects.values_list("name", "kind"))
            add_problems(self, fallbacks_problems(cleaned["fallbacks"], name=name, kind=kind, catalog=catalog))
        return cleaned


class CatalogModelAdmin(admin.ModelAdmin):
    form = CatalogModelForm
    list_display = ["name", "provider", "kind", "routing", "active", "context_window", "deployment_count"]
    list_filter = ["provider", "kind", "routing", "active"]
    search_fields = ["name"]
    readonly_fields = ["created_at"]
    inlines = [DeploymentInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_deployments=models.Count("deployments"))

    @admin.display(description="deployments", ordering="_deployments")
    def deployment_count(self, obj: CatalogModel) -> int:
        return obj._deployments


admin.site.register(ApiKey, ApiKeyAdmin)
admin.site.register(Project, ProjectAdmin)
admin.site.register(CatalogModel, CatalogModelAdmin)
admin.site.register(ProviderCredential, ProviderCredentialAdmin)
admin.site.register(PlatformPolicy, PlatformPolicyAdmin)
admin.site.register(PromptTemplate, PromptTemplateAdmin)
admin.site.register(RequestLog, RequestLogAdmin)
