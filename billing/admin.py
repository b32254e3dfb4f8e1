"""Staff admin for plans, subscriptions, prices and usage.

The tenant page gets its subscription here, not in tenants/admin.py: tenants knows nothing of
billing, so billing re-registers `Tenant` with a subclass of the tenants app's admin that adds
the plan column, a plan filter and the subscription inline (the pattern of extending
`UserAdmin`). Subscriptions also have a list of their own, to see who is on which plan.
"""

from datetime import timedelta

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, OuterRef
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from tenants.admin import TenantAdmin
from tenants.models import CatalogModel, Tenant

from .models import ModelPrice, Plan, Subscription, UsageRecord

# --- plans and subscriptions ---------------------------------------------------------------


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "description",
        "currency",
        "monthly_base_fee",
        "included_allowance",
        "markup_percent",
        "default_monthly_budget",
        "tenant_count",
    ]
    search_fields = ["name", "description"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_tenants=Count("subscriptions"))

    @admin.display(description="tenants", ordering="_tenants")
    def tenant_count(self, obj: Plan) -> int:
        return obj._tenants


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["tenant", "plan", "monthly_budget", "effective_budget"]
    list_select_related = ["tenant", "plan"]
    list_filter = ["plan"]
    search_fields = ["tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["effective_budget"]

    def get_readonly_fields(self, request, obj=None):
        # A subscription belongs to its tenant for good; moving it would be a new subscription.
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    @admin.display(description="effective budget")
    def effective_budget(self, obj: Subscription):
        return obj.effective_budget if obj.pk else None


class SubscriptionInline(admin.StackedInline):
    model = Subscription
    fields = ["plan", "monthly_budget"]
    extra = 1
    max_num = 1
    can_delete = False


class BillingTenantAdmin(TenantAdmin):
    list_display = [*TenantAdmin.list_display, "plan"]
    list_filter = [*TenantAdmin.list_filter, "subscription__plan"]
    list_select_related = [*TenantAdmin.list_select_related, "subscription__plan"]
    inlines = [SubscriptionInline, *TenantAdmin.inlines]

    @admin.display(description="plan", ordering="subscription__plan__name")
    def plan(self, obj: Tenant) -> str:
        subscription = getattr(obj, "subscription", None)  # a missing one-to-one raises AttributeError
        return subscription.plan.name if subscription else "—"


admin.site.unregister(Tenant)
admin.site.register(Tenant, BillingTenantAdmin)


# --- prices --------------------------------------------------------------------------------


def price_in_use(price: ModelPrice, *, fresh: bool = False) -> bool:
    """Has usage been billed at this row? The admin's queryset annotates it as `_in_use`."""
    if price.pk is None:
        return False
    if not fresh and hasattr(price, "_in_use"):
        return price._in_use
    return UsageRecord.objects.filter(price=price).exists()


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = [
            "model",
            "effective_from",
            "input_per_1m",
            "output_per_1m",
            "cached_input_per_1m",
            "cache_write_per_1m",
        ]

    def clean(self):
        cleaned = super().clean()
        # Re-checked at save time: usage may have been billed at this row since the page loaded.
        if price_in_use(self.instance, fresh=True):
            raise ValidationError("Usage has been billed at this price; add a new price instead of changing it.")
        model, effective_from = cleaned.get("model"), cleaned.get("effective_from")
        if model and effective_from and self.instance.pk is None:
            # A back-dated row would say another price was in force for requests already billed.
            billed_after = UsageRecord.objects.filter(price__model=model, created_at__gte=effective_from)
            if billed_after.exists():
                raise ValidationError(
                    {"effective_from": "Usage of this model has already been billed after this date; pick a later one."}
                )
        for name in ("cached_input_per_1m", "cache_write_per_1m"):
            value = cleaned.get(name)
            if value is not None and value < 0:
                self.add_error(name, "A price cannot be negative.")
        return cleaned


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are versioned: a row that usage was billed at is frozen, a change is a new row."""

    form = ModelPriceForm
    list_display = [
        "model",
        "effective_from",
        "input_per_1m",
        "output_per_1m",
        "cached_input_per_1m",
        "cache_write_per_1m",
        "in_use",
    ]
    list_select_related = ["model"]
    list_filter = ["model"]
    search_fields = ["model__name"]
    date_hierarchy = "effective_from"
    ordering = ["model__name", "-effective_from"]
    price_fields = ModelPriceForm.Meta.fields

    def get_queryset(self, request):
        billed = UsageRecord.objects.filter(price=OuterRef("pk"))
        return super().get_queryset(request).annotate(_in_use=Exists(billed))

    @admin.display(description="billed", boolean=True, ordering="_in_use")
    def in_use(self, obj: ModelPrice) -> bool:
        return obj._in_use

    @admin.display(description="change this price")
    def new_price_link(self, obj: ModelPrice) -> str:
        url = reverse("admin:billing_modelprice_add", current_app=self.admin_site.name)
        initial = {name: getattr(obj, name) for name in self.price_fields[2:] if getattr(obj, name) is not None}
        query = urlencode({"model": obj.model_id, **initial})
        return format_html(
            'Usage has been billed at this price, so it cannot change. <a class="addlink" href="{}?{}">'
            "Add a new price</a> in force from a later date.",
            url,
            query,
        )

    def get_fields(self, request, obj=None):
        if obj is not None and price_in_use(obj):
            return [*self.price_fields, "new_price_link"]
        return self.price_fields

    # A billed price is view-only (no save button, a POST is refused) and cannot be deleted.
    def has_change_permission(self, request, obj=None):
        if obj is not None and price_in_use(obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and price_in_use(obj):
            return False
        return super().has_delete_permission(request, obj)


# --- usage ---------------------------------------------------------------------------------


class ModelNameFilter(admin.SimpleListFilter):
    """Catalog names, not DISTINCT over the usage table (which is the biggest table we have)."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        return [(name, name) for name in CatalogModel.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(model=self.value()) if self.value() else queryset


class StatusCodeFilter(admin.SimpleListFilter):
    title = "status code"
    parameter_name = "status"
    classes = {"2xx": (200, 299), "4xx": (400, 499), "5xx": (500, 599)}
    codes = [200, 400, 401, 402, 403, 404, 413, 422, 429, 499, 500, 502, 503, 504]

    def lookups(self, request, model_admin):
        return [
            ("2xx", "Success (2xx)"),
            ("4xx", "Refused (4xx)"),
            ("5xx", "Upstream failure (5xx)"),
            *((str(code), str(code)) for code in self.codes),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value in self.classes:
            return queryset.filter(status_code__range=self.classes[value])
        if value and value.isdigit():
            return queryset.filter(status_code=int(value))
        return queryset


class ErrorTypeFilter(admin.SimpleListFilter):
    """Error types seen lately (an index range on created_at), not a scan of all usage."""

    title = "error type"
    parameter_name = "error_type"
    recent = timedelta(days=7)

    def lookups(self, request, model_admin):
        seen = list(
            UsageRecord.objects.filter(created_at__gte=timezone.now() - self.recent)
            .exclude(error_type="")
            .order_by("error_type")
            .values_list("error_type", flat=True)
            .distinct()[:50]
        )
        choices = [("-", "(no error)"), *((value, value) for value in seen)]
        if self.value() and self.value() != "-" and self.value() not in seen:
            choices.append((self.value(), self.value()))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if value == "-":
            return queryset.filter(error_type="")
        return queryset.filter(error_type=value) if value else queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Read-only: usage is what was billed; nobody adds, edits or deletes it by hand."""

    list_display = [
        "created_at",
        "tenant",
        "model",
        "provider",
        "endpoint",
        "status_code",
        "error_type",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost",
        "latency_ms",
        "streamed",
        "estimated",
        "cache_hit",
    ]
    list_select_related = ["tenant"]
    list_filter = [
        "tenant",
        ModelNameFilter,
        StatusCodeFilter,
        ErrorTypeFilter,
        "streamed",
        "estimated",
        "cache_hit",
    ]
    search_fields = ["=request_id"]
    search_help_text = "Exact request id."
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
