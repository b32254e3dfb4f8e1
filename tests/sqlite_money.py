"""Run by tests/test_money_sqlite.py in a process of its own, on a fresh SQLite database (the
demo's): `python -m tests.sqlite_money`, with DATABASE_URL=sqlite:///…. Records usage whose costs
a float sum gets wrong, rolls part of it up, and prints every money figure the platform sums,
as JSON strings (exact decimal text, or repr of what came back)."""

import json
import os
import sys
from datetime import UTC, date, datetime, time
from decimal import Decimal


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    assert connection.vendor == "sqlite", connection.vendor
    call_command("migrate", verbosity=0)

    from django.test import Client
    from django.utils import timezone

    from billing import selectors, services
    from billing.models import Invoice, ModelPrice, Plan, Subscription, UsageRecord, UsageRollup
    from billing.pricing import Price, Tokens, request_cost
    from console import analytics
    from gateway import registry
    from tenants.models import CatalogModel, Tenant
    from tenants.services import api_key_create

    march, march_end = date(2025, 3, 1), date(2025, 3, 31)
    now = timezone.now()
    today = now.astimezone(UTC).date()
    plan = Plan.objects.create(name="probe", markup_percent=Decimal("10.00"))
    tenant = Tenant.objects.create(slug="alice", name="Alice")
    Subscription.objects.create(tenant=tenant, plan=plan)
    model = CatalogModel.objects.create(name="gpt-test", provider="openai")
    price = ModelPrice.objects.create(
        model=model,
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        input_per_1m=Decimal("0.000001"),  # 10⁻¹² a token
        output_per_1m=Decimal("1000"),  # 0.001 a token
    )
    price_view = Price(input_per_1m=price.input_per_1m, output_per_1m=price.output_per_1m)
    key, raw_key = api_key_create(tenant=tenant, name="probe")
    # (input, output) tokens: costs 0.1, 0.2, 10⁻¹²; 123.456789012345, 876.543210987655; and today 0.1, 0.2,
    # 0.021882999999, 0.010000000001 (as floats they add up to 0.33188300000000004)
    tokens = {
        datetime.combine(date(2025, 3, 2), time(12), tzinfo=UTC): [(0, 100), (0, 200), (1, 0)],
        datetime.combine(date(2025, 3, 3), time(12), tzinfo=UTC): [(789012345, 123456), (210987655, 876543)],
        now: [(0, 100), (0, 200), (882999999, 21), (1, 10)],
    }
    n = 0
    for at, pairs in tokens.items():
        for input_tokens, output_tokens in pairs:
            n += 1
            UsageRecord.objects.create(
                request_id=f"probe-{n}",
                created_at=at,
                tenant=tenant,
                api_key=key if at == now else None,
                model=model.name,
                provider="openai",
                upstream_model=model.name,
                endpoint="chat",
                status_code=200,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost=request_cost(tokens=Tokens(input=input_tokens, output=output_tokens), price=price_view),
                price=price,
                latency_ms=100,
            )
    services.usage_rollup(since=march, until=march_end, now=now)
    services.invoices_generate(period=march, now=datetime(2025, 4, 20, tzinfo=UTC))

    def text(value) -> str:
        return f"{value:f}" if isinstance(value, Decimal) else repr(value)

    def usage_api(start: date, end: date) -> dict:
        response = Client(HTTP_HOST="localhost").get(
            "/v1/usage", {"start": start.isoformat(), "end": end.isoformat()}, HTTP_AUTHORIZATION=f"Bearer {raw_key}"
        )
        assert response.status_code == 200, response.content
        return json.loads(response.content)

    api_march, api_today = usage_api(march, march_end), usage_api(today, today)
    mixed = selectors.usage_summary(tenant_id=tenant.id, start=march, end=today)  # rollups and raw records
    comparison = analytics.tenant_comparison(start=march, end=march_end, today=today)
    dashboard = analytics.dashboard_summary(start=march, end=march_end, today=today)
    overview = analytics.tenant_overview(tenant_id=tenant.id, start=march, end=today, today=today)
    key.monthly_budget = Decimal("5.00")
    key.save()
    overview_keys = analytics.tenant_overview(tenant_id=tenant.id, start=today, end=today, today=today).keys
    # Invoice lines are rounded to the cent; the invoice's own provider cost is a stored amount,
    # which SQLite keeps to 15 significant digits (not asserted).
    lines = list(Invoice.objects.get(tenant=tenant, period=march).lines.all())
    finance = selectors.finance_summary(period=march)[0]

    # The gateway's own write (one INSERT … ON CONFLICT), as the demo runs it on SQLite: a record,
    # its replay, an `interrupted` record and the request's own one replacing it.
    from gateway.journal import usage_record_write
    from gateway.metered import Metered

    def metered(request_id: str, error_type: str = "", output: int = 21) -> Metered:
        return Metered(
            request_id=request_id,
            created_at=datetime(2020, 1, 15, tzinfo=UTC),  # outside every period summed above
            tenant_id=tenant.id,
            api_key_id=None,
            model=model.name,
            provider="openai",
            upstream_model=model.name,
            endpoint="chat",
            status_code=502 if error_type else 200,
            error_type=error_type,
            tokens=Tokens(input=882999999, output=output),
            price_id=price.id,
            price=price_view,
            latency_ms=5,
            streamed=False,
            estimated=bool(error_type),
        )

    upserts = [
        usage_record_write(metered=metered("upsert-1")),
        usage_record_write(metered=metered("upsert-1", output=999)),  # a replay: the first stays
        usage_record_write(metered=metered("upsert-2", "interrupted", output=0)),
        usage_record_write(metered=metered("upsert-2")),  # the request's own record replaces it
    ]
    stored = {
        r.request_id: [r.error_type, r.output_tokens, text(r.cost)]
        for r in UsageRecord.objects.filter(request_id__startswith="upsert-")
    }
    print(
        json.dumps(
            {
                "rolled_up": sorted({str(day) for day in UsageRollup.objects.values_list("day", flat=True)}),
                "api_march": [api_march["totals"]["cost"], *(row["cost"] for row in api_march["by_model"])],
                "api_march_by_endpoint": [row["cost"] for row in api_march["by_endpoint"]],
                "api_today": [api_today["totals"]["cost"], *(row["cost"] for row in api_today["by_model"])],
                "mixed": [mixed["totals"]["cost"], *(row["cost"] for row in mixed["by_model"])],
                "billable": [text(u.cost) for u in selectors.billable_usage(start=march, end=march_end)],
                "spend_by_tenant": [text(v) for v in selectors.spend_by_tenant(start=march, end=march_end).values()],
                "comparison_cost": text(comparison[0].current.cost),
                "dashboard_cost": text(dashboard.totals.cost),
                "dashboard_revenue": text(dashboard.revenue),
                "overview_cost": text(overview.totals.cost),
                "overview_daily_cost": [text(p.cost) for p in overview.daily if p.cost],
                "overview_month_to_date": text(overview.month_to_date),
                "overview_key_month_to_date": text(overview_keys[0].month_to_date),
                "month_to_date_spend": text(selectors.month_to_date_spend(tenant_id=tenant.id, now=now)),
                "month_to_date_by_key": text(
                    selectors.month_to_date_spend_by_key(tenant_id=tenant.id, key_ids=[key.id], now=now)[key.id]
                ),
                "registry_month_to_date": text(registry._month_to_date(tenant.id)),
                "finance_provider_cost": text(finance.provider_cost),
                "upserts": [[text(u.cost), u.error_type, u.written] for u in upserts],
                "upserted": stored,
                "invoice_usage_lines": text(
                    sum((line.amount for line in lines if line.line_type in ("input", "output")), Decimal(0))
                ),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
