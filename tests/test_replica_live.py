"""Reports read a real streaming replica, money decisions the primary (docs/database.md).

The test starts its own PostgreSQL primary and a replica of it (pg_basebackup), copies the test
database's fixtures there, and runs a gateway process with DATABASE_URL on the primary and
DATABASE_REPLICA_URL on the replica. With the replica's replay paused (pg_wal_replay_pause), rows
written afterwards exist on the primary only, so each answer shows which side it read.
"""

import csv
import io
import re
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal

import httpx2 as httpx
import openai
import pytest
from django.db.models import Sum
from django.test import Client
from django.utils import timezone

from billing.models import Invoice, UsageRecord, UsageRollup
from tenants.models import ApiKey
from tenants.services import api_key_create

from . import pg_servers
from .conftest import ROOT, gateway_env, start_gateway, stop

pytestmark = pytest.mark.skipif(
    not pg_servers.have_postgres_binaries(), reason="Debian's PostgreSQL 15 server binaries are not installed"
)


# The money jobs in one short process on the gateway's settings (no manage.py system checks):
# yesterday's rollup, then this month's invoice drafts.
MONEY_RUN = """
import os
import sys
from datetime import date

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
django.setup()
from django.utils import timezone

from billing.services import invoices_generate, usage_rollup

day = date.fromisoformat(sys.argv[1])
usage_rollup(since=day, until=day)
invoices_generate(period=timezone.now().date())
"""


@pytest.fixture(scope="module")
def pair():
    with pg_servers.primary_and_replica() as servers:
        yield servers


def _ask(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])


def _records(server: pg_servers.Server, tenant_id: int) -> int:
    return server.value("SELECT count(*) FROM billing_usagerecord WHERE tenant_id = %s", (tenant_id,))


def _wait_for_records(server: pg_servers.Server, tenant_id: int, count: int) -> None:
    """Usage records are written after the answer is sent: until the primary holds `count`."""
    deadline = time.monotonic() + 10
    while _records(server, tenant_id) < count:
        assert time.monotonic() < deadline, f"{_records(server, tenant_id)} usage records, not {count}"
        time.sleep(0.05)


def _today() -> dict[str, str]:
    day = timezone.now().date().isoformat()
    return {"start": day, "end": day}


def _usage_requests(gateway: str, key: str) -> int:
    """Today's requests as the tenant's GET /v1/usage gives them."""
    response = httpx.get(f"{gateway}/v1/usage", params=_today(), headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text[:500]
    return response.json()["totals"]["requests"]


def _analytics_requests(gateway: str, session: str, slug: str) -> int:
    """Today's requests of one tenant in the staff's analytics CSV."""
    response = httpx.get(
        f"{gateway}/admin/analytics/",
        params={"format": "csv", "range": "custom", **_today()},
        cookies={"sessionid": session},
    )
    assert response.status_code == 200, response.text[:500]
    rows = {row["tenant"]: row for row in csv.DictReader(io.StringIO(response.text))}
    return int(rows[slug]["requests"])


def _dashboard(gateway: str, session: str) -> tuple[int, str]:
    """The dashboard's requests figure over the last 7 days, and the page."""
    page = httpx.get(f"{gateway}/admin/", params={"range": "7d"}, cookies={"sessionid": session})
    assert page.status_code == 200, page.text[:500]
    return int(re.search(r'id="kpi-requests">([\d,]+)<', page.text).group(1).replace(",", "")), page.text


def test_reports_read_the_replica_while_money_decisions_read_the_primary(
    pair, mock_llm, transactional_db, catalog, alice, alice_key, admin_user
):
    primary, replica = pair
    capped, capped_raw = api_key_create(tenant=alice, name="capped", monthly_budget=Decimal("0.01"))
    doomed, doomed_raw = api_key_create(tenant=alice, name="doomed")
    staff = Client()
    staff.force_login(admin_user)
    session = staff.cookies["sessionid"].value
    from django.db import connection

    pg_servers.copy_database(source_dsn=_dsn(connection.settings_dict), target=primary)
    process, gateway = start_gateway(
        mock_llm, DATABASE_URL=primary.url, DATABASE_REPLICA_URL=replica.url, GATEWAY_AUTH_CACHE_SECONDS="0"
    )
    try:
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
        _ask(client)
        _wait_for_records(primary, alice.id, 1)
        pg_servers.wait_for_replay(primary, replica)
        assert _usage_requests(gateway, alice_key) == 1
        requests, page = _dashboard(gateway, session)
        assert requests == 1
        assert "replica-lag" not in page

        # --- the replica stops replaying: what is written from now on is on the primary only ---
        replica.query("SELECT pg_wal_replay_pause()")
        _ask(client)
        stream = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        _wait_for_records(primary, alice.id, 3)
        assert _records(replica, alice.id) == 1

        # Reports: /v1/usage and the staff's analytics CSV read the replica's one request.
        assert _usage_requests(gateway, alice_key) == 1
        assert _analytics_requests(gateway, session, "alice") == 1

        with pg_servers.orm_alias(primary) as on_primary:
            # Admission seeds a key's month-to-date spend from the primary: the 0.01 spent there
            # (and not on the replica) exhausts the key's budget.
            UsageRecord.objects.using(on_primary).create(
                request_id="spent-on-the-primary",
                created_at=timezone.now(),
                tenant_id=alice.id,
                api_key_id=capped.id,
                model="gpt-test",
                endpoint="chat",
                status_code=200,
                cost=Decimal("0.01"),
            )
            capped_client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=capped_raw, max_retries=0)
            with pytest.raises(openai.APIStatusError) as refused:
                _ask(capped_client)
            assert refused.value.status_code == 402
            assert refused.value.body["code"] == "budget_exhausted"

            # Key authentication reads the primary: a key revoked there is refused at once,
            # although the replica still holds it as active.
            ApiKey.objects.using(on_primary).filter(pk=doomed.pk).update(revoked_at=timezone.now())
            assert replica.value("SELECT revoked_at FROM tenants_apikey WHERE id = %s", (doomed.pk,)) is None
            with pytest.raises(openai.AuthenticationError):
                _ask(openai.OpenAI(base_url=f"{gateway}/v1", api_key=doomed_raw, max_retries=0))

            # Rollups and invoices read the primary: yesterday's record written there is rolled
            # up, and the month's draft invoice bills what the primary holds.
            yesterday = timezone.now().date() - timedelta(days=1)
            UsageRecord.objects.using(on_primary).create(
                request_id="late-on-the-primary",
                created_at=timezone.now() - timedelta(days=1),
                tenant_id=alice.id,
                api_key_id=capped.id,
                model="gpt-test",
                endpoint="chat",
                status_code=200,
                cost=Decimal("0.002"),
            )
            env = gateway_env(mock_llm, DATABASE_URL=primary.url, DATABASE_REPLICA_URL=replica.url)
            subprocess.run([sys.executable, "-c", MONEY_RUN, str(yesterday)], cwd=ROOT, env=env, check=True, timeout=60)
            rolled = UsageRollup.objects.using(on_primary).filter(tenant_id=alice.id, day=yesterday)
            assert rolled.aggregate(n=Sum("requests"))["n"] == 1
            # Priced from the records' prices (the hand-made ones above have none): the three
            # answers are billed, two of them served while the replica was paused.
            month = timezone.now().date().replace(day=1)
            served = UsageRecord.objects.using(on_primary).filter(
                tenant_id=alice.id, created_at__date__gte=month, price__isnull=False, status_code=200
            )
            assert served.count() == 3
            invoice = Invoice.objects.using(on_primary).get(tenant_id=alice.id, period=month)
            assert invoice.provider_cost == served.aggregate(total=Sum("cost"))["total"]

        # What staff see while the replica lags: the figures as the replica has them, and a note.
        requests, page = _dashboard(gateway, session)
        assert requests == 1
        assert 'id="replica-lag"' in page
        assert "s behind the primary" in page

        # --- replay resumes: the reports catch up, the note goes ---
        replica.query("SELECT pg_wal_replay_resume()")
        pg_servers.wait_for_replay(primary, replica)
        today = _usage_requests(gateway, alice_key)
        on_primary_today = primary.value(
            "SELECT count(*) FROM billing_usagerecord WHERE tenant_id = %s AND created_at >= %s",
            (alice.id, timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)),
        )
        assert today == on_primary_today >= 5  # three answers, the seeded spend, the refusal
        assert _analytics_requests(gateway, session, "alice") == today
        requests, page = _dashboard(gateway, session)
        assert requests == primary.value("SELECT count(*) FROM billing_usagerecord") == today + 1  # and yesterday's
        assert "replica-lag" not in page
    finally:
        stop(process)


def _dsn(settings_dict: dict) -> str:
    return (
        f"host={settings_dict.get('HOST') or '127.0.0.1'} port={settings_dict.get('PORT') or 5432} "
        f"user={settings_dict.get('USER') or 'postgres'} dbname={settings_dict['NAME']}"
    )
