"""Data kept for tenants: `manage.py purge_tenant_data` (everything of one tenant, billing
kept) and `request_logs_purge_expired` (each tenant's retention, one DELETE per tenant).
"""

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import UsageRecord
from tenants.models import PromptTemplate, RequestLog, StoredResponse, Tenant
from tenants.prompting import template_create_version
from tenants.services import request_logs_purge_expired, tenant_data_purge

from .conftest import make_tenant
from .test_admin import make_usage

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


def log(tenant, *, age: timedelta, request_id: str | None = None):
    return RequestLog.objects.create(
        tenant=tenant,
        request_id=request_id or uuid.uuid4().hex,
        model="gpt-test",
        endpoint="chat",
        status_code=200,
        request={"messages": [{"role": "user", "content": "my secret prompt"}]},
        response={"choices": [{"message": {"content": "the answer"}}]},
        created_at=NOW - age,
    )


@pytest.fixture
def data(catalog, alice, bob):
    for tenant in (alice, bob):
        for i in range(3):
            log(tenant, age=timedelta(hours=i))
        template_create_version(tenant_id=tenant.pk, name="greet", messages=[{"role": "user", "content": "hi"}])
        template_create_version(tenant_id=tenant.pk, name="greet", messages=[{"role": "user", "content": "hello"}])
        make_usage(tenant, catalog["gpt"], count=2)
    return {"alice": alice, "bob": bob}


def counts(tenant) -> tuple[int, int, int]:
    return (
        RequestLog.objects.filter(tenant=tenant).count(),
        PromptTemplate.objects.filter(tenant=tenant).count(),
        UsageRecord.objects.filter(tenant=tenant).count(),
    )


# --- purge_tenant_data -------------------------------------------------------------------------


def test_purging_a_tenant_deletes_its_logs_and_templates_and_keeps_billing(data):
    alice, bob = data["alice"], data["bob"]
    usage = list(UsageRecord.objects.filter(tenant=alice).values())
    out = io.StringIO()

    call_command("purge_tenant_data", "alice", "--yes", stdout=out)

    assert counts(alice) == (0, 0, 2)
    assert counts(bob) == (3, 2, 2)
    assert list(UsageRecord.objects.filter(tenant=alice).values()) == usage
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("tenant alice: 3 request log(s) and 2 prompt template version(s) will be deleted")
    assert lines[-1] == "deleted 3 request log(s), 2 prompt template version(s) and 0 stored response(s) of alice"
    assert Tenant.objects.filter(slug="alice").exists()  # the tenant itself stays


def test_purging_asks_for_the_slug_unless_yes(data, monkeypatch):
    alice = data["alice"]
    answers = iter(["yes", "alice"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))

    with pytest.raises(CommandError, match="not confirmed"):
        call_command("purge_tenant_data", "alice", stdout=io.StringIO())
    assert counts(alice) == (3, 2, 2)

    call_command("purge_tenant_data", "alice", stdout=io.StringIO())
    assert counts(alice) == (0, 0, 2)


def test_purging_an_unknown_tenant_is_an_error(db):
    with pytest.raises(CommandError, match="no tenant 'nobody'"):
        call_command("purge_tenant_data", "nobody", "--yes")


def test_the_purge_service_returns_what_it_deleted(data):
    StoredResponse.objects.create(
        response_id="resp_bob", tenant=data["bob"], model="m", created_at=timezone.now(), expires_at=timezone.now()
    )
    assert tenant_data_purge(tenant=data["bob"]) == {"request_logs": 3, "prompt_templates": 2, "stored_responses": 1}
    assert tenant_data_purge(tenant=data["bob"]) == {"request_logs": 0, "prompt_templates": 0, "stored_responses": 0}


# --- retention ---------------------------------------------------------------------------------


def test_logs_older_than_each_tenants_retention_are_deleted(catalog):
    week = make_tenant("week", log_retention_days=7)
    month = make_tenant("month", log_retention_days=30)
    make_tenant("quiet", log_retention_days=1)  # no logs at all
    for tenant in (week, month):
        log(tenant, age=timedelta(days=1), request_id=f"{tenant.slug}-1d")
        log(tenant, age=timedelta(days=7, seconds=-1), request_id=f"{tenant.slug}-7d-")
        log(tenant, age=timedelta(days=7, seconds=1), request_id=f"{tenant.slug}-7d+")
        log(tenant, age=timedelta(days=31), request_id=f"{tenant.slug}-31d")
    make_usage(week, catalog["gpt"], at=NOW - timedelta(days=100))

    deleted = request_logs_purge_expired(now=NOW)

    assert deleted == 3
    assert set(RequestLog.objects.values_list("request_id", flat=True)) == {
        "week-1d",
        "week-7d-",
        "month-1d",
        "month-7d-",
        "month-7d+",
    }
    assert UsageRecord.objects.filter(tenant=week).count() == 1
    assert request_logs_purge_expired(now=NOW) == 0


def test_retention_is_one_delete_per_tenant_with_logs_not_one_per_row(catalog):
    tenants = [make_tenant(f"t{i}", log_retention_days=1) for i in range(3)]
    make_tenant("no-logs", log_retention_days=1)
    for tenant in tenants:
        for i in range(20):
            log(tenant, age=timedelta(days=2, minutes=i))

    with CaptureQueriesContext(connection) as ctx:
        assert request_logs_purge_expired(now=NOW) == 60

    deletes = [q["sql"] for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 3
    assert len(ctx.captured_queries) <= 4  # the tenants with logs, then their deletes
    assert not RequestLog.objects.exists()
