"""The staff admin's home page (the dashboard) and the cross-tenant analytics page.

`PlatformAdminSite` is Django's AdminSite with its index replaced by the dashboard (the app list
stays, below it) and one more page, /admin/analytics/. It is the default site
(`console.apps.PlatformAdminConfig` in INSTALLED_APPS), so `admin.site`, every
`admin.site.register` and `admin.site.urls` keep working unchanged. Thin: the figures come from
console/analytics.py; this module parses the period, checks permissions, and renders.
"""

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import wraps

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from billing.csvsafe import csv_writer
from billing.periods import month_start, previous_month
from billing.selectors import utc_today
from proxy_platform.replicas import reading_replica, replica_lag_seconds
from tenants import audit
from tenants.models import Tenant

from .analytics import (
    COMPARISON_SORTS,
    NO_PROJECT,
    ComparisonRow,
    DayPoint,
    Share,
    dashboard_summary,
    money,
    previous_period,
    project_shares,
    tenant_comparison,
)
from .charts import Point, bar_chart
from .deployment_health import deployment_health

# Who may see figures across tenants: staff with the view permission on usage rollups. Other
# staff get the plain app list (and a 403 on the analytics page).
FIGURES_PERMISSION = "billing.view_usagerollup"
# Who may see the deployment health list: staff who may view the catalog.
CATALOG_PERMISSION = "tenants.view_catalogmodel"
MAX_PERIOD_DAYS = 366
# Rows per page of "tenants side by side" (Django's changelists show 100 too): with 5,000 tenants
# the whole table was 2 MB of HTML and 1.5 s of template rendering. The CSV has every tenant.
ANALYTICS_PER_PAGE = 100
COST_PER_1K = Decimal("0.000001")  # places of "cost per 1K tokens" in the CSV


@dataclass(frozen=True, slots=True)
class Period:
    start: date
    end: date
    label: str

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


class PeriodForm(forms.Form):
    """?range=7d|30d|90d|month|last_month|custom, and start/end (YYYY-MM-DD, UTC, both included)."""

    RANGES = [
        ("7d", "Last 7 days"),
        ("30d", "Last 30 days"),
        ("90d", "Last 90 days"),
        ("month", "This month"),
        ("last_month", "Last month"),
        ("custom", "From … to …"),
    ]
    DEFAULT = "30d"

    range = forms.ChoiceField(choices=RANGES, required=False, label="Period")
    start = forms.DateField(required=False, label="from", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="to", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, today: date, **kwargs):
        super().__init__(*args, **kwargs)
        self.today = today

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        chosen = cleaned.get("range") or ("custom" if cleaned.get("start") or cleaned.get("end") else self.DEFAULT)
        cleaned["range"] = chosen
        if chosen != "custom":
            return cleaned
        start, end = cleaned.get("start"), cleaned.get("end")
        if start is None or end is None:
            raise forms.ValidationError("A custom period needs both a start and an end day (YYYY-MM-DD).")
        if end < start:
            raise forms.ValidationError("The end day must be on or after the start day.")
        if end > self.today:
            raise forms.ValidationError(f"The end day cannot be after today ({self.today.isoformat()}, UTC).")
        if (end - start).days + 1 > MAX_PERIOD_DAYS:
            raise forms.ValidationError(f"A period is at most {MAX_PERIOD_DAYS} days.")
        return cleaned

    def period(self) -> Period:
        """The chosen period; the default (last 30 days) when the form is not valid."""
        chosen = self.cleaned_data["range"] if self.is_valid() else self.DEFAULT
        today = self.today
        if chosen == "custom":
            start, end = self.cleaned_data["start"], self.cleaned_data["end"]
            return Period(start, end, f"{start.isoformat()} to {end.isoformat()}")
        if chosen == "month":
            return Period(month_start(today), today, f"{today:%B %Y} to date")
        if chosen == "last_month":
            first = previous_month(month_start(today))
            return Period(first, month_start(today) - timedelta(days=1), f"{first:%B %Y}")
        length = {"7d": 7, "30d": 30, "90d": 90}[chosen]
        return Period(today - timedelta(days=length - 1), today, dict(self.RANGES)[chosen])

    def query(self) -> str:
        """The period as GET parameters, for links that keep it."""
        if not self.is_valid():
            return ""
        params = {"range": self.cleaned_data["range"]}
        if params["range"] == "custom":
            params.update(start=self.cleaned_data["start"].isoformat(), end=self.cleaned_data["end"].isoformat())
        return urlencode(params)


def period_from_request(request: HttpRequest, *, today: date | None = None) -> tuple[PeriodForm, Period, int]:
    """The period form bound to the query string, the period to show, and the HTTP status:
    400 with the form's message (and the default period's figures) for bad input, never a 500."""
    data = request.GET.copy()
    if not data.get("range"):
        # Dates alone mean a custom period; nothing at all, the default (shown selected).
        data["range"] = "custom" if data.get("start") or data.get("end") else PeriodForm.DEFAULT
    form = PeriodForm(data, today=today or utc_today())
    return form, form.period(), 200 if form.is_valid() else 400


def daily_charts(points: list[DayPoint], *, prefix: str) -> list:
    """Spend, requests and errors per day, as server-drawn SVG."""
    return [
        bar_chart(
            [Point(p.day, p.cost) for p in points],
            title="Spend per day (USD)",
            fmt=lambda v: f"{v:,.2f}",
            element_id=f"{prefix}-spend",
        ),
        bar_chart(
            [Point(p.day, p.requests) for p in points], title="Requests per day", element_id=f"{prefix}-requests"
        ),
        bar_chart(
            [Point(p.day, p.errors) for p in points],
            title="Errors per day",
            color="#ba2121",
            element_id=f"{prefix}-errors",
        ),
    ]


CSV_COLUMNS = [
    "tenant",
    "name",
    "status",
    "plan",
    "period_start",
    "period_end",
    "spend",
    "previous_spend",
    "growth_percent",
    "requests",
    "errors",
    "error_rate_percent",
    "input_tokens",
    "output_tokens",
    "cost_per_1k_tokens",
]


def comparison_csv_row(row: ComparisonRow, period: Period) -> list[str]:
    current = row.current
    per_1k = current.cost_per_1k_tokens
    return [
        row.slug,
        row.name,
        row.status,
        row.plan,
        period.start.isoformat(),
        period.end.isoformat(),
        money(current.cost),
        money(row.previous.cost),
        "" if row.growth is None else f"{row.growth:.1f}",
        str(current.requests),
        str(current.errors),
        "" if current.error_rate is None else f"{current.error_rate * 100:.2f}",
        str(current.input_tokens),
        str(current.output_tokens),
        "" if per_1k is None else f"{per_1k.quantize(COST_PER_1K):f}",
    ]


# `?format=csv&by=project` on the analytics page: every tenant's usage per project in the period.
PROJECT_CSV_COLUMNS = [
    "tenant",
    "project",
    "period_start",
    "period_end",
    "spend",
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
]


def project_csv_row(share: Share, slug: str, period: Period) -> list[str]:
    totals = share.totals
    return [
        slug,
        "" if share.key == NO_PROJECT else share.key,
        period.start.isoformat(),
        period.end.isoformat(),
        money(totals.cost),
        str(totals.requests),
        str(totals.errors),
        str(totals.input_tokens),
        str(totals.output_tokens),
    ]


class PlatformAdminSite(admin.AdminSite):
    """Django's admin with the dashboard as its home page and the analytics page."""

    site_header = "LLM proxy platform"
    site_title = "LLM proxy admin"
    index_title = "Dashboard"
    index_template = "admin/dashboard.html"
    # Django's app list down the left took 300 px of every page and pushed the changelists'
    # columns behind a horizontal scroll at 1280 px; the breadcrumbs and the dashboard's app list
    # already lead everywhere.
    enable_nav_sidebar = False

    def admin_view(self, view, cacheable=False):
        """Every admin page, Django's and ours: what a staff user changes through it is audited as
        theirs (tenants/audit.py), and a POST's changes are one transaction and one audit entry per
        object (a tenant's fields and its models saved by one form: one entry)."""
        inner = super().admin_view(view, cacheable)

        @wraps(view)
        def audited(request, *args, **kwargs):
            user = getattr(request, "user", None)
            if user is None or not (user.is_active and user.is_staff):
                return inner(request, *args, **kwargs)  # the login page, for which no one acts
            with audit.acting(staff=user):
                if request.method == "POST":
                    with audit.collecting():
                        return inner(request, *args, **kwargs)
                return inner(request, *args, **kwargs)

        return audited

    def get_urls(self):
        return [
            path("analytics/", self.admin_view(self.analytics_view), name="analytics"),
            path("deployments/health/", self.admin_view(self.deployment_health_view), name="deployment_health"),
            *super().get_urls(),
        ]

    def index(self, request, extra_context=None):
        context = dict(extra_context or {})
        status = 200
        if request.user.has_perm(FIGURES_PERMISSION):
            today = utc_today()
            form, period, status = period_from_request(request, today=today)
            # Figures from the replica when there is one (docs/database.md); permissions above and
            # the page's own reads (the app list) stay on the primary.
            with reading_replica():
                summary = dashboard_summary(start=period.start, end=period.end, today=today)
                replica_lag = replica_lag_seconds()
            context.update(
                period_form=form,
                period=period,
                period_query=form.query(),
                summary=summary,
                charts=daily_charts(summary.daily, prefix="chart"),
                tenant_search_url=reverse("admin:tenants_tenant_changelist", current_app=self.name),
                replica_lag=replica_lag,
            )
        response = super().index(request, extra_context=context)
        response.status_code = status
        return response

    def analytics_view(self, request):
        """Tenants side by side, against the previous period of the same length; ?sort=, ?format=csv."""
        if not request.user.has_perm(FIGURES_PERMISSION):
            raise PermissionDenied
        today = utc_today()
        form, period, status = period_from_request(request, today=today)
        sort = request.GET.get("sort") or "-spend"
        if sort.lstrip("-") not in COMPARISON_SORTS:
            sort, status = "-spend", 400
            form.add_error(None, f"Unknown sort column; choose one of {', '.join(sorted(COMPARISON_SORTS))}.")
        with reading_replica():  # figures, not decisions: docs/database.md
            if request.GET.get("format") == "csv" and request.GET.get("by") == "project" and status == 200:
                return self._project_csv(project_shares(start=period.start, end=period.end, today=today), period)
            rows = tenant_comparison(start=period.start, end=period.end, sort=sort, today=today)
            replica_lag = replica_lag_seconds()
        if request.GET.get("format") == "csv" and status == 200:
            return self._comparison_csv(rows, period)
        paginator = Paginator(rows, ANALYTICS_PER_PAGE)
        number = request.GET.get("page") or "1"
        if not (number.isdigit() and 1 <= int(number) <= paginator.num_pages):
            number, status = "1", 400
            form.add_error(None, f"page: a whole number from 1 to {paginator.num_pages}.")
        page = paginator.page(int(number))
        before = previous_period(start=period.start, end=period.end)
        columns = []
        base = form.query()
        for key, label in [
            ("tenant", "Tenant"),
            ("spend", "Spend"),
            ("previous", "Previous period"),
            ("growth", "Growth"),
            ("requests", "Requests"),
            ("error_rate", "Error rate"),
            ("tokens", "Tokens"),
            ("cost_per_1k", "Cost / 1K tokens"),
        ]:
            active = sort.lstrip("-") == key
            descending = sort.startswith("-")
            next_sort = key if active and descending else f"-{key}"
            if not active and key == "tenant":
                next_sort = "tenant"
            query = f"{base}&sort={next_sort}" if base else f"sort={next_sort}"
            columns.append({"key": key, "label": label, "url": f"?{query}", "active": active, "descending": descending})
        context = {
            **self.each_context(request),
            "title": "Tenants side by side",
            "period_form": form,
            "period": period,
            "previous": Period(before[0], before[1], ""),
            "rows": page.object_list,
            "page": page,
            "page_url": "?" + "&".join(filter(None, [base, f"sort={sort}", "page="])),
            "columns": columns,
            "sort": sort,
            "csv_url": "?" + "&".join(filter(None, [base, f"sort={sort}", "format=csv"])),
            "project_csv_url": "?" + "&".join(filter(None, [base, "format=csv", "by=project"])),
            "keep_params": [("sort", sort)],
            "replica_lag": replica_lag,
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/analytics.html", context, status=status)

    def deployment_health_view(self, request):
        """Every active deployment's breaker state, failures, latency and attempts in flight;
        ?model=<catalog model id> for one model's."""
        if not request.user.has_perm(CATALOG_PERMISSION):
            raise PermissionDenied
        raw = request.GET.get("model", "")
        model_id, status, error = None, 200, ""
        if raw:
            if raw.isdigit():
                model_id = int(raw)
            else:
                status, error = 400, "model: a catalog model id (a whole number)."
        health = deployment_health(model_id=model_id)
        context = {
            **self.each_context(request),
            "title": "Deployment health",
            "health": health,
            "model_id": model_id,
            "error": error,
            "can_change_catalog": request.user.has_perm("tenants.change_catalogmodel"),
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/deployment_health.html", context, status=status)

    def _project_csv(self, shares: list[Share], period: Period) -> HttpResponse:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="projects-{period.start.isoformat()}-{period.end.isoformat()}.csv"'
        )
        slugs = dict(Tenant.objects.values_list("id", "slug"))
        writer = csv_writer(response)  # project names are the tenant's text: defused
        writer.writerow(PROJECT_CSV_COLUMNS)
        for share in sorted(shares, key=lambda s: (slugs.get(s.tenant_id, ""), -s.totals.cost, s.key)):
            writer.writerow(project_csv_row(share, slugs.get(share.tenant_id, ""), period))
        return response

    def _comparison_csv(self, rows: list[ComparisonRow], period: Period) -> HttpResponse:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="tenants-{period.start.isoformat()}-{period.end.isoformat()}.csv"'
        )
        writer = csv_writer(response)  # tenant names and plans are anyone's text: defused
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(comparison_csv_row(row, period))
        return response
