"""A real Celery worker logs like the gateway: one JSON object per stderr line (tracebacks
included), lines of a task with its id and name, and no secret: a signed webhook delivered with
its secret, a task that fails with a traceback, a task that logs an expected refusal.

(No task here is retried: a retried task waits in Redis with a countdown, and the worker tests
that follow depend on Redis' unacknowledged messages.)"""

import time

import orjson
import pytest
from django.utils import timezone

from billing.models import BudgetAlert
from billing.services import subscription_webhook_secret_set
from tenants.services import api_key_create
from tests.conftest import UPSTREAM_KEY, log_problems, make_tenant
from tests.test_budget_alerts import Receiver
from tests.test_celery_worker import Workers

pytestmark = [pytest.mark.celery_worker, pytest.mark.django_db(transaction=True)]

WEBHOOK_SECRET = "whsec-celery-logging-test-0123456789"


@pytest.fixture
def workers(transactional_db):
    pool = Workers()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_a_worker_logs_json_lines_with_the_task_and_no_secret(workers, receiver):
    tenant = make_tenant("alice")
    key = api_key_create(tenant=tenant, name="k")[1]
    subscription = tenant.subscription
    subscription.alert_webhook_url = receiver.url
    subscription.save()
    subscription_webhook_secret_set(subscription=subscription, secret=WEBHOOK_SECRET)
    alert = BudgetAlert.objects.create(
        tenant=tenant,
        period=timezone.now().date().replace(day=1),
        threshold=80,
        spend="8.5",
        budget="10.00",
        created_at=timezone.now(),
    )

    worker = workers.start("logs", loglevel="INFO")
    assert workers.send("rollup_usage").get(timeout=60) is not None
    assert workers.send("deliver_budget_alert", alert_id=alert.id).get(timeout=60)
    assert len(receiver.requests) == 1  # signed with the secret
    assert "error" in workers.send("generate_invoices", period="2999-01").get(timeout=60)  # logged, not raised
    failed = workers.send("generate_invoices", period="not-a-period")
    with pytest.raises(ValueError, match="not-a-period"):
        failed.get(timeout=60)
    time.sleep(0.3)
    workers.stop()

    assert log_problems(worker.log_path, (WEBHOOK_SECRET, key, UPSTREAM_KEY)) == []
    lines = [orjson.loads(line) for line in worker.log_path.read_text().splitlines()]
    assert any(line["message"].endswith("ready.") for line in lines)  # Celery's own lines, in JSON
    in_tasks = [line for line in lines if "task_id" in line]
    assert {line["task_name"] for line in in_tasks} >= {
        "billing.tasks.rollup_usage",
        "billing.tasks.deliver_budget_alert",
        "billing.tasks.generate_invoices",
    }
    refused = [line for line in in_tasks if line["logger"] == "billing.tasks"]
    assert refused
    assert refused[0]["level"] == "error"
    assert "2999-01" in refused[0]["message"]
    (raised,) = [line for line in in_tasks if line["task_id"] == failed.id and "exception" in line]
    assert "Traceback" in raised["exception"]
    assert "ValueError" in raised["exception"]
