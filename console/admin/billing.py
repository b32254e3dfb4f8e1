"""Staff admin for plans, subscriptions, prices, usage, invoices and budget alerts.

The tenant page is registered here, once: `BillingTenantAdmin` is console/admin/tenants.py's
`TenantAdmin` (settings, keys, limits, bulk actions) plus what the page shows of billing: the
plan column and filter, the subscription inline, the change-plan action and the overview page.
The console sits above billing and tenants, so it may import both; neither imports it.
Subscriptions also have a list of their own, to see who is on which plan.
"""

from datetime import timedelta
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, OuterRef, Q
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from billing.exports import end_user_usage_csv_write, invoices_csv_write
from billing.models import (
    BudgetAlert,
    Invoice,
    InvoiceLine,
    ModelPrice,
    Plan,
    PriceTier,
    SharedCost,
    Subscription,
    UsageRecord,
    UsageRollup,
)
from billing.periods import PeriodState, month_start, period_parse, period_state, period_str, previous_month
from billing.selectors import (
    UsageGroupingUnavailable,
    finance_summary,
    invoices_for_period,
    period_has_finalized_invoices,
    usage_summary,
    utc_today,
)
from billing.services import (
    BillingError,
    credit_note_create,
    invoices_finalize,
    invoices_generate,
    subscription_webhook_secret_set,
    subscriptions_set_plan,
)
from console.admin.tenants import TenantAdmin, TenantListFilter
from console.analytics import live_limits, tenant_overview
from console.dashboard import FIGURES_PERMISSION, daily_charts, period_from_request
from console.templatetags.figures import cents
from proxy_platform.replicas import reading_replica, replica_lag_seconds
from tenants.models import CatalogModel, Tenant

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
        "minimum_commitment",
        "default_monthly_budget",
        "tenant_count",
    ]
    search_fields = ["name", "description"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_tenants=Count("subscriptions"))

    @admin.display(description="tenants", ordering="_tenants")
    def tenant_count(self, obj: Plan) -> int:
        return obj._tenants


class SubscriptionForm(forms.ModelForm):
    """The webhook secret is write-only: typing one sets it, it is never displayed."""

    webhook_secret = forms.CharField(
        label="Alert webhook secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Signs the alert webhook (HMAC-SHA256). Leave empty to keep the current one.",
    )
    clear_webhook_secret = forms.BooleanField(label="Remove the webhook secret", required=False)
    alert_webhook_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text="Set by staff only. Alerts are POSTed here as signed JSON; empty: no webhook.",
    )

    class Meta:
        model = Subscription
        fields = ["tenant", "plan", "monthly_budget", "alert_thresholds", "alert_emails", "alert_webhook_url"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ["tenant", "plan", "monthly_budget", "effective_budget", "alert_thresholds", "has_webhook"]
    list_select_related = ["tenant", "plan"]
    list_filter = ["plan"]
    search_fields = ["tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["effective_budget", "webhook_secret_set"]
    fieldsets = [
        (None, {"fields": ["tenant", "plan", "monthly_budget", "effective_budget"]}),
        (
            "Budget alerts",
            {
                "fields": [
                    "alert_thresholds",
                    "alert_emails",
                    "alert_webhook_url",
                    "webhook_secret_set",
                    "webhook_secret",
                    "clear_webhook_secret",
                ]
            },
        ),
    ]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("clear_webhook_secret"):
            subscription_webhook_secret_set(subscription=obj, secret="")
        elif form.cleaned_data.get("webhook_secret"):
            subscription_webhook_secret_set(subscription=obj, secret=form.cleaned_data["webhook_secret"])

    @admin.display(description="webhook secret", boolean=True)
    def webhook_secret_set(self, obj: Subscription) -> bool:
        return bool(obj.alert_webhook_secret)

    @admin.display(description="webhook", boolean=True)
    def has_webhook(self, obj: Subscription) -> bool:
        return bool(obj.alert_webhook_url)

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


class ChangePlanForm(forms.Form):
    plan = forms.ModelChoiceField(queryset=Plan.objects.order_by("name"))


class BillingTenantAdmin(TenantAdmin):
    list_display = [*TenantAdmin.list_display, "plan", "overview_link"]
    list_filter = [*TenantAdmin.list_filter, "subscription__plan"]
    list_select_related = [*TenantAdmin.list_select_related, "subscription__plan"]
    inlines = [SubscriptionInline, *TenantAdmin.inlines]
    actions = [*TenantAdmin.actions, "change_plan"]
    change_form_template = "admin/billing/tenant/change_form.html"

    @admin.action(description="Change the plan of selected tenants…", permissions=["change"])
    def change_plan(self, request, queryset):
        form = ChangePlanForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            plan = form.cleaned_data["plan"]
            count = subscriptions_set_plan(tenants=list(queryset), plan=plan)
            for tenant in queryset:
                self.log_change(request, tenant, f"Bulk plan change: {plan.name}.")
            self.message_user(request, f"Put {count} tenant(s) on the plan {plan.name}.", messages.SUCCESS)
            return None
        return self.bulk_action_page(request, queryset, action="change_plan", title="Change plan", form=form)

    @admin.display(description="plan", ordering="subscription__plan__name")
    def plan(self, obj: Tenant) -> str:
        subscription = getattr(obj, "subscription", None)  # a missing one-to-one raises AttributeError
        return subscription.plan.name if subscription else "—"

    # --- the tenant's overview page: usage, limits, keys, alerts, invoices, errors ---

    @admin.display(description="overview")
    def overview_link(self, obj: Tenant) -> str:
        url = reverse("admin:tenants_tenant_overview", args=[obj.pk], current_app=self.admin_site.name)
        return format_html('<a href="{}" class="overview-link">Overview</a>', url)

    def get_urls(self):
        overview = self.admin_site.admin_view(self.overview_view)
        end_users = self.admin_site.admin_view(self.end_users_csv_view)
        return [
            path("<int:object_id>/overview/", overview, name="tenants_tenant_overview"),
            path("<int:object_id>/end-users.csv", end_users, name="tenants_tenant_end_users_csv"),
            *super().get_urls(),
        ]

    def end_users_csv_view(self, request, object_id: int):
        """The tenant's usage of a month (?period=YYYY-MM, default this month) per end user, as CSV."""
        if not (self.has_view_permission(request) and request.user.has_perm(FIGURES_PERMISSION)):
            raise PermissionDenied
        tenant = Tenant.objects.filter(pk=object_id).first()
        if tenant is None:
            raise Http404("No such tenant.")
        try:
            period = period_parse(request.GET.get("period") or period_str(month_start(utc_today())))
        except ValueError:
            return HttpResponseBadRequest("period must be YYYY-MM")
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="end-users-{tenant.slug}-{period_str(period)}.csv"'
        try:
            with reading_replica():  # an export, not a decision: docs/database.md
                end_user_usage_csv_write(tenant=tenant, period=period, out=response)
        except UsageGroupingUnavailable as exc:
            return HttpResponseBadRequest(str(exc))
        return response

    def overview_view(self, request, object_id: int):
        """Thin: the period from the query string, the figures from `console.analytics.tenant_overview`."""
        if not (self.has_view_permission(request) and request.user.has_perm(FIGURES_PERMISSION)):
            raise PermissionDenied
        today = utc_today()
        form, period, status = period_from_request(request, today=today)
        try:
            with reading_replica():  # figures, not decisions: docs/database.md
                overview = tenant_overview(tenant_id=object_id, start=period.start, end=period.end, today=today)
                replica_lag = replica_lag_seconds()
        except Tenant.DoesNotExist:
            raise Http404("No such tenant.") from None
        tenant = overview.tenant
        name = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{tenant.name} ({tenant.slug})",
            "overview": overview,
            "tenant": tenant,
            "period_form": form,
            "period": period,
            "period_query": form.query(),
            "charts": daily_charts(overview.daily, prefix="tenant-chart"),
            "replica_lag": replica_lag,
            "live_limits": live_limits(tenant_id=tenant.pk),
            "change_url": reverse("admin:tenants_tenant_change", args=[tenant.pk], current_app=name),
            "tenant_changelist_url": reverse("admin:tenants_tenant_changelist", current_app=name),
            "key_add_url": reverse("admin:tenants_apikey_add", current_app=name) + f"?tenant={tenant.pk}",
            "key_changelist_url": reverse("admin:tenants_apikey_changelist", current_app=name),
            "invoices_url": reverse("admin:billing_invoice_changelist", current_app=name)
            + f"?tenant__id__exact={tenant.pk}",
            "usage_url": reverse("admin:billing_usagerecord_changelist", current_app=name)
            + f"?tenant__id__exact={tenant.pk}",
            "alerts_url": reverse("admin:billing_budgetalert_changelist", current_app=name)
            + f"?tenant__id__exact={tenant.pk}",
            "end_users_csv_url": reverse("admin:tenants_tenant_end_users_csv", args=[tenant.pk], current_app=name)
            + f"?period={period_str(month_start(period.end))}",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        request.current_app = name
        return TemplateResponse(request, "admin/billing/tenant/overview.html", context, status=status)


admin.site.register(Tenant, BillingTenantAdmin)


# --- prices --------------------------------------------------------------------------------


def _billed_at(price) -> list:
    """Usage records, rollups (raw records may have been pruned) and invoice lines at a price."""
    return [
        UsageRecord.objects.filter(price=price),
        UsageRollup.objects.filter(price=price),
        InvoiceLine.objects.filter(price=price),
    ]


def price_in_use(price: ModelPrice, *, fresh: bool = False) -> bool:
    """Has usage been billed at this row? The admin's queryset annotates it as `_in_use`."""
    if price.pk is None:
        return False
    if not fresh and hasattr(price, "_in_use"):
        return price._in_use
    return any(qs.exists() for qs in _billed_at(price))


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
            "cache_write_1h_per_1m",
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
        for name in ("cached_input_per_1m", "cache_write_per_1m", "cache_write_1h_per_1m"):
            value = cleaned.get(name)
            if value is not None and value < 0:
                self.add_error(name, "A price cannot be negative.")
        return cleaned


class PriceTierInline(admin.TabularInline):
    """Long-context prices of a row (billing.PriceTier): frozen with their row once it billed usage."""

    model = PriceTier
    extra = 0
    fields = [
        "above_input_tokens",
        "input_per_1m",
        "output_per_1m",
        "cached_input_per_1m",
        "cache_write_per_1m",
        "cache_write_1h_per_1m",
    ]
    verbose_name = "long-context tier"

    def has_add_permission(self, request, obj=None):
        return not (obj is not None and price_in_use(obj)) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return not (obj is not None and price_in_use(obj)) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not (obj is not None and price_in_use(obj)) and super().has_delete_permission(request, obj)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are versioned: a row that usage was billed at is frozen, a change is a new row.
    Its long-context tiers are edited inline, and frozen with it."""

    form = ModelPriceForm
    inlines = [PriceTierInline]
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
        billed = [Exists(qs) for qs in _billed_at(OuterRef("pk"))]
        in_use = ExpressionWrapper(Q(billed[0]) | Q(billed[1]) | Q(billed[2]), output_field=BooleanField())
        return super().get_queryset(request).annotate(_in_use=in_use)

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


class UsageColumns:
    """Columns that fold a usage row's details under its headline figure, so that the record and
    rollup lists fit 1280 px beside their filters: the model over its endpoint (and provider), the
    status over its error type and flags, the tokens in and out over the cached and written ones."""

    @admin.display(description="model", ordering="model")
    def model_column(self, row) -> str:
        asked = getattr(row, "requested_model", "")  # a fallback answered a request for this model
        fallback = f"fallback for {asked}" if asked else ""
        detail = " · ".join(p for p in (row.endpoint, getattr(row, "provider", ""), fallback) if p)
        return format_html("{}<br><small>{}</small>", row.model, detail)

    @admin.display(description="outcome", ordering="status_code")
    def outcome(self, row) -> str:
        flags = [row.error_type] if row.error_type else []
        flags += [name for name in ("cache_hit", "streamed", "estimated") if getattr(row, name, False) is True]
        detail = ", ".join(flag.replace("_", " ") for flag in flags)
        return format_html("{}<br><small>{}</small>", row.status_code, detail) if detail else str(row.status_code)

    @admin.display(description="tokens in → out", ordering="input_tokens")
    def tokens(self, row) -> str:
        detail = ", ".join(
            f"{label} {count:,}"
            for label, count in (
                ("cached", row.cached_input_tokens),
                ("written", row.cache_write_tokens),
                ("1 h", row.cache_write_1h_tokens),
            )
            if count
        )
        figures = f"{row.input_tokens:,} → {row.output_tokens:,}"
        return format_html("{}<br><small>{}</small>", figures, detail) if detail else figures


@admin.register(UsageRecord)
class UsageRecordAdmin(UsageColumns, admin.ModelAdmin):
    """Read-only: usage is what was billed; nobody adds, edits or deletes it by hand."""

    list_display = ["created_at", "tenant", "model_column", "outcome", "tokens", "cost", "latency_ms"]
    list_select_related = ["tenant"]
    list_filter = [
        ("tenant", TenantListFilter),
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


# --- rollups and usage reports ------------------------------------------------------------


@admin.register(UsageRollup)
class UsageRollupAdmin(UsageColumns, admin.ModelAdmin):
    """Daily usage per tenant, model, endpoint and outcome: the history, read-only.

    The "usage report" page gives a tenant's usage over any range of days exactly as the
    tenant sees it on /v1/usage (rollups for past days, raw records for today).
    """

    # Seven columns, so that the list fits 1280 px beside its filters (tests/test_admin_browser.py).
    list_display = ["day", "tenant", "model_column", "outcome", "requests", "tokens", "cost"]
    list_select_related = ["tenant"]

    list_filter = [("tenant", TenantListFilter), ModelNameFilter, "endpoint", StatusCodeFilter, "cache_hit"]
    date_hierarchy = "day"
    show_full_result_count = False
    list_per_page = 100
    change_list_template = "admin/billing/usagerollup/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        report = self.admin_site.admin_view(self.report_view)
        return [path("report/", report, name="billing_usagerollup_report"), *super().get_urls()]

    def report_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = UsageReportForm(request.GET or None)
        summary = None
        if form.is_valid():
            tenant = form.cleaned_data["tenant"]
            with reading_replica():
                summary = usage_summary(
                    tenant_id=tenant.id, start=form.cleaned_data["start"], end=form.cleaned_data["end"]
                )
            summary["tenant"] = tenant.slug
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Usage report",
            "form": form,
            "summary": summary,
        }
        return TemplateResponse(request, "admin/billing/usagerollup/report.html", context)


class UsageReportForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("slug"))
    start = forms.DateField(help_text="YYYY-MM-DD, UTC")
    end = forms.DateField(help_text="YYYY-MM-DD, included")

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and (end < start or (end - start).days > 366):
            raise ValidationError("The end must be on or after the start, at most 366 days later.")
        return cleaned


# --- shared infrastructure cost ------------------------------------------------------------


class SharedCostForm(forms.ModelForm):
    class Meta:
        model = SharedCost
        fields = ["period", "description", "amount", "currency"]

    def clean_period(self):
        period = month_start(self.cleaned_data["period"])  # any day of the month names the month
        if period_has_finalized_invoices(period=period):
            raise ValidationError(f"The invoices of {period_str(period)} are finalized: its shared cost is final.")
        return period

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount < 0:
            raise ValidationError("A cost cannot be negative.")
        return amount


@admin.register(SharedCost)
class SharedCostAdmin(admin.ModelAdmin):
    """Staff enter the month's shared infrastructure cost; saving it regenerates that month's
    drafts (after the commit, through Celery). A month with finalized invoices is frozen."""

    form = SharedCostForm
    list_display = ["month", "description", "amount", "currency", "updated_at"]
    list_filter = ["currency"]
    search_fields = ["description"]
    ordering = ["-period", "description"]

    @admin.display(description="month", ordering="period")
    def month(self, obj: SharedCost) -> str:
        return period_str(obj.period)

    def _frozen(self, obj) -> bool:
        return obj is not None and period_has_finalized_invoices(period=obj.period)

    def has_change_permission(self, request, obj=None):
        return not self._frozen(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not self._frozen(obj) and super().has_delete_permission(request, obj)

    def _regenerate(self, request, period) -> None:
        from billing.tasks import generate_invoices

        if period_state(period, now=timezone.now(), grace_days=0) is not PeriodState.FUTURE:
            generate_invoices.delay_on_commit(period=period_str(period))
            self.message_user(request, f"The drafts of {period_str(period)} will be regenerated with this cost.")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self._regenerate(request, obj.period)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        self._regenerate(request, obj.period)


# --- invoices ------------------------------------------------------------------------------


class PeriodFilter(admin.SimpleListFilter):
    """The months that have invoices (a small table), newest first."""

    title = "period"
    parameter_name = "period"

    def lookups(self, request, model_admin):
        periods = Invoice.objects.order_by("-period").values_list("period", flat=True).distinct()[:36]
        return [(period_str(period), period_str(period)) for period in periods]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            return queryset.filter(period=period_parse(self.value()))
        except ValueError:
            return queryset.none()


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fields = ["position", "line_type", "model", "description", "quantity", "unit", "unit_price", "amount"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def _csv_response(invoices, filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    invoices_csv_write(invoices=invoices, out=response)
    return response


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices and credit notes: read-only documents, changed only through the actions.

    Drafts are regenerated, never edited; a finalized invoice is corrected by a credit note,
    after which the tenant's month gets a new draft.
    """

    list_display = [
        "number",
        "tenant",
        "month",
        "kind",
        "status",
        "amount",
        "generated_at",
        "finalized_at",
    ]
    list_select_related = ["tenant"]
    list_filter = [PeriodFilter, "status", "kind", ("tenant", TenantListFilter)]
    search_fields = ["number", "tenant__slug", "tenant__name"]
    ordering = ["-period", "number"]
    inlines = [InvoiceLineInline]
    readonly_fields = [
        "number",
        "kind",
        "sequence",
        "tenant",
        "period",
        "period_end",
        "status",
        "currency",
        "plan_name",
        "corrects",
        "note",
        "provider_cost",
        "subtotal",
        "total",
        "generated_at",
        "finalized_at",
    ]
    actions = ["regenerate_drafts", "finalize", "export_csv", "issue_credit_notes"]
    change_list_template = "admin/billing/invoice/change_list.html"

    @admin.display(description="month", ordering="period")
    def month(self, obj: Invoice) -> str:
        return period_str(obj.period)

    @admin.display(description="total", ordering="total")
    def amount(self, obj: Invoice) -> str:
        """Money with its currency, one column: "1,250.00 USD"."""
        return f"{cents(obj.total)} {obj.currency}"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # The list may run actions; a document itself is only ever viewed.
        return obj is None and super().has_change_permission(request)

    def _report(self, request, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BillingError as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return None

    @admin.action(description="Regenerate the drafts of the selected months", permissions=["change"])
    def regenerate_drafts(self, request, queryset):
        for period in sorted(set(queryset.values_list("period", flat=True))):
            result = self._report(request, invoices_generate, period=period)
            if result is not None:
                self.message_user(
                    request,
                    f"{period_str(period)}: {result.created} created, {result.updated} updated, "
                    f"{result.unchanged} unchanged, {result.kept} finalized (kept).",
                )

    @admin.action(description="Finalize the selected drafts", permissions=["change"])
    def finalize(self, request, queryset):
        drafts = queryset.filter(status=Invoice.Status.DRAFT, kind=Invoice.Kind.INVOICE)
        drafts = list(drafts.values_list("id", flat=True))
        finalized = self._report(request, invoices_finalize, invoice_ids=drafts)
        if finalized is not None:
            self.message_user(request, f"{finalized} invoices finalized (each regenerated first).")

    @admin.action(description="Export the selected invoices as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        periods = sorted(set(queryset.values_list("period", flat=True)))
        name = f"invoices-{period_str(periods[0])}.csv" if len(periods) == 1 else "invoices.csv"
        with reading_replica():
            return _csv_response(Invoice.objects.filter(pk__in=queryset.values("pk")), name)

    @admin.action(description="Issue credit notes for the selected finalized invoices", permissions=["change"])
    def issue_credit_notes(self, request, queryset):
        issued = []
        for invoice in queryset.filter(kind=Invoice.Kind.INVOICE, status=Invoice.Status.FINALIZED).order_by("id"):
            note = self._report(
                request, credit_note_create, invoice_id=invoice.id, reason=f"Cancels {invoice.number} ({request.user})"
            )
            if note is not None:
                issued.append(note)
        for period in sorted({note.period for note in issued}):
            self._report(request, invoices_generate, period=period)  # the corrected drafts
        if issued:
            self.message_user(
                request,
                f"{len(issued)} credit notes issued ({', '.join(n.number for n in issued)}); "
                "the corrected invoices are new drafts.",
            )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("summary/", wrap(self.summary_view), name="billing_invoice_summary"),
            path("export/", wrap(self.export_view), name="billing_invoice_export"),
            *super().get_urls(),
        ]

    def _period_param(self, request):
        value = request.GET.get("period")
        if not value:
            return previous_month(month_start(timezone.now().date()))
        try:
            return period_parse(value)
        except ValueError:
            return None

    def export_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        period = self._period_param(request)
        if period is None:
            return HttpResponseBadRequest("period must be YYYY-MM")
        with reading_replica():
            return _csv_response(invoices_for_period(period=period), f"invoices-{period_str(period)}.csv")

    def summary_view(self, request):
        """Finance's month: revenue, provider cost, shared cost and margin per tenant."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        period = self._period_param(request)
        if period is None:
            return HttpResponseBadRequest("period must be YYYY-MM")
        per_tenant: dict[tuple[str, str], dict] = {}
        with reading_replica():
            documents = finance_summary(period=period)
            shared_costs = list(SharedCost.objects.filter(period=period).order_by("description"))
        for row in documents:
            entry = per_tenant.setdefault(
                (row.tenant, row.currency),
                {"tenant": row.tenant, "currency": row.currency, "documents": [], **dict.fromkeys(MONEY_KEYS, ZERO)},
            )
            entry["documents"].append(f"{row.number} ({row.status})")
            for key in MONEY_KEYS:
                entry[key] += getattr(row, key)
        totals: dict[str, dict] = {}
        for entry in per_tenant.values():
            currency = entry["currency"]
            total = totals.setdefault(currency, {"currency": currency, **dict.fromkeys(MONEY_KEYS, ZERO)})
            for key in MONEY_KEYS:
                total[key] += entry[key]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Finance summary {period_str(period)}",
            "period": period_str(period),
            "previous": period_str(previous_month(period)),
            "next": period_str(month_start(period + timedelta(days=32))),
            "rows": list(per_tenant.values()),
            "totals": list(totals.values()),
            "shared_costs": shared_costs,
        }
        return TemplateResponse(request, "admin/billing/invoice/summary.html", context)


MONEY_KEYS = ("revenue", "provider_cost", "shared_cost", "margin")
ZERO = Decimal(0)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    """Raised by `budget_alerts_check`, never by hand: read-only."""

    list_display = [
        "tenant",
        "period",
        "threshold",
        "spend",
        "budget",
        "created_at",
        "email_sent_at",
        "webhook_delivered_at",
        "webhook_attempts",
    ]
    list_select_related = ["tenant"]
    list_filter = [
        "period",
        "threshold",
        ("email_sent_at", admin.EmptyFieldListFilter),
        ("webhook_delivered_at", admin.EmptyFieldListFilter),
        ("tenant", TenantListFilter),
    ]
    search_fields = ["tenant__slug", "tenant__name"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
