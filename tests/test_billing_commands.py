"""`rollup_usage`, `generate_invoices` (docs/design.md#management-commands) and the budget job."""

import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from billing import tasks
from billing.models import Invoice, Subscription, UsageRollup
from billing.selectors import budget_statuses
from tests.billing_fixtures import at, save, usage


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_rollup_usage_rolls_up_what_changed_and_then_nothing(alice, catalog):
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    save(
        usage(alice, catalog["gpt"], at(yesterday), input_tokens=10),
        usage(alice, catalog["gpt"], at(yesterday - timedelta(days=2)), input_tokens=10),
    )
    assert run("rollup_usage") == (f"rolled up 2 days ({yesterday - timedelta(days=2)} to {yesterday}), 2 records\n")
    assert run("rollup_usage") == "nothing to roll up: every day is current\n"
    assert UsageRollup.objects.count() == 2
    assert run("rollup_usage", "--since", "2020-01-01", "--until", "2020-01-31").startswith("nothing")
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        run("rollup_usage", "--since", "yesterday")


@pytest.mark.django_db
def test_generate_invoices_makes_drafts_and_finalizes_a_closed_month(alice, catalog):
    save(usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1_000_000))
    assert run("generate_invoices", "--period", "2024-03") == (
        "2024-03: 1 created, 0 updated, 0 unchanged, 0 finalized, 0 finalized before (kept)\n"
    )
    assert run("generate_invoices", "--period", "2024-03", "--finalize") == (
        "2024-03: 0 created, 0 updated, 1 unchanged, 1 finalized, 0 finalized before (kept)\n"
    )
    assert Invoice.objects.get().status == "finalized"
    assert "1 finalized before (kept)" in run("generate_invoices", "--period", "2024-03")
    with pytest.raises(CommandError, match="still open"):
        run("generate_invoices", "--period", datetime.now(UTC).strftime("%Y-%m"), "--finalize")
    with pytest.raises(CommandError, match="not started"):
        run("generate_invoices", "--period", "2999-01")
    with pytest.raises(CommandError, match="YYYY-MM"):
        run("generate_invoices", "--period", "March")


@pytest.mark.django_db
def test_the_budget_job_flags_tenants_near_or_over_their_budget(alice, bob, catalog):
    Subscription.objects.filter(tenant=alice).update(monthly_budget=Decimal("1.00"))
    Subscription.objects.filter(tenant=bob).update(monthly_budget=Decimal("100.00"))
    now = datetime.now(UTC)
    save(
        usage(alice, catalog["azure"], now - timedelta(minutes=1), input_tokens=400_000),  # 1.00: all of it
        usage(bob, catalog["gpt"], now - timedelta(minutes=1), input_tokens=1_000_000),  # 0.15
    )
    statuses = {status.tenant: status for status in budget_statuses(now=now)}
    assert statuses["alice"].spend == Decimal("1.00")
    assert statuses["alice"].ratio == 1.0
    assert statuses["bob"].ratio == pytest.approx(0.0015)
    assert tasks.check_budgets.run() == [{"tenant": "alice", "spend": "1.000000000000", "budget": "1.00"}]
