"""The Celery app `proxy_platform`: configuration from settings, eager without Redis, the beat
schedule, which months the daily job generates, and tasks queued only after commit."""

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from billing import tasks
from billing.models import Invoice, InvoiceRun, UsageRollup
from billing.selectors import DuePeriod, invoice_periods_due
from billing.services import invoices_generate
from proxy_platform.celery import app
from tests.billing_fixtures import at, save, usage

ROOT = Path(__file__).resolve().parent.parent

PROBE = (
    "import django, json; django.setup(); from proxy_platform.celery import app; "
    "print(json.dumps([app.main, app.conf.broker_url, app.conf.task_always_eager, app.conf.task_acks_late]))"
)


def probe(**env) -> list:
    environ = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CELERY_TASK_ALWAYS_EAGER"}}
    environ.update(DJANGO_SETTINGS_MODULE="proxy_platform.settings", DATABASE_URL="sqlite:///:memory:", **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=environ, capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_redis_tasks_run_eagerly_and_with_redis_they_are_queued():
    assert probe() == ["proxy_platform", "memory://", True, True]
    assert probe(REDIS_URL="redis://127.0.0.1:6379/9") == ["proxy_platform", "redis://127.0.0.1:6379/9", False, True]
    assert probe(REDIS_URL="redis://127.0.0.1:6379/9", CELERY_TASK_ALWAYS_EAGER="1")[2] is True


def test_every_beat_entry_names_a_registered_task():
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert set(schedule) == {
        "rollup-usage",
        "close-invoice-periods",
        "check-budgets",
        "apply-usage-retention",
        "ensure-usage-partitions",
        "purge-request-logs",
        "reconcile-budget-counters",
        "reconcile-requests",
    }
    app.loader.import_default_modules()  # what a worker does at boot: autodiscover every app's tasks
    registered = set(app.tasks)
    for entry in schedule.values():
        assert entry["task"] in registered, entry
    for task in (tasks.rollup_usage, tasks.generate_invoices, tasks.close_invoice_periods):
        assert task.name.startswith("billing.tasks.")
        assert hasattr(task, "delay_on_commit")
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.fixture
def eager():
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.mark.django_db
def test_eager_tasks_do_the_work_in_process_as_in_the_demo(eager, alice, catalog):
    save(usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1_000_000))
    assert tasks.rollup_usage.delay(since="2024-03-01", until="2024-03-31").get() == {
        "days": ["2024-03-02"],
        "records": 1,
    }
    assert UsageRollup.objects.count() == 1
    result = tasks.generate_invoices.delay(period="2024-03").get()
    assert (result["created"], result["finalized"]) == (1, 0)
    assert Invoice.objects.get().total == Decimal("0.15")
    assert tasks.generate_invoices.delay(period="2099-01").get()["error"] == "2099-01 has not started yet"


@pytest.mark.django_db
def test_tasks_are_queued_only_when_the_transaction_commits(monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(tasks.generate_invoices, "delay", lambda **kwargs: sent.append(kwargs))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        queued = tasks.close_invoice_periods.run()
        assert sent == []  # nothing before the commit
    assert len(callbacks) == len(queued) == len(sent) >= 1
    assert sent[0] == {"period": datetime.now(UTC).strftime("%Y-%m"), "finalize": False, "close": False}


@pytest.mark.django_db
def test_the_daily_job_refreshes_open_and_grace_months_and_finalizes_a_closed_one_once(alice, catalog, settings):
    settings.BILLING_INVOICE_GRACE_DAYS = 3
    save(
        usage(alice, catalog["gpt"], at(date(2024, 2, 10)), input_tokens=10),
        usage(alice, catalog["gpt"], at(date(2024, 3, 10)), input_tokens=10),
    )
    in_grace = datetime(2024, 4, 2, tzinfo=UTC)
    assert invoice_periods_due(now=in_grace) == [
        DuePeriod(date(2024, 4, 1), finalize=False),
        DuePeriod(date(2024, 3, 1), finalize=False),
        DuePeriod(date(2024, 2, 1), finalize=True),
        # January has nothing to bill: left alone
    ]
    closed = datetime(2024, 4, 5, tzinfo=UTC)
    assert DuePeriod(date(2024, 3, 1), finalize=True) in invoice_periods_due(now=closed)
    invoices_generate(period=date(2024, 3, 1), finalize=True, close=True, now=closed)
    invoices_generate(period=date(2024, 2, 1), finalize=True, close=True, now=closed)
    assert InvoiceRun.objects.filter(closed_at__isnull=False).count() == 2
    assert invoice_periods_due(now=closed) == [DuePeriod(date(2024, 4, 1), finalize=False)]
