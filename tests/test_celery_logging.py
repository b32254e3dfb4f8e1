"""A real Celery worker logs like the gateway: one JSON object per stderr line, task lines with the
task's id and name, and no secret, also when a task fails and is retried."""

import time
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone

from billing.models import BudgetAlert
from billing.services import subscription_webhook_secret_set
from tenants.services import api_key_create
from tests.conftest import UPSTREAM_KEY, free_port, log_problems, make_tenant
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


def test_a_worker_logs_json_lines_with_the_task_and_no_secret(workers):
    tenant = make_tenant("alice")
    key = api_key_create(tenant=tenant, name="k")[1]
    subscription = tenant.subscription
    subscription.alert_webhook_url = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: it fails
    subscription.save()
    subscription_webhook_secret_set(subscription=subscription, secret=WEBHOOK_SECRET)
    alert = BudgetAlert.objects.create(
        tenant=tenant,
        period=timezone.now().date().replace(day=1),
        threshold=80,
        spend=Decimal("8.5"),
        budget=Decimal("10.00"),
        created_at=timezone.now(),
    )

    worker = workers.start("logs", loglevel="INFO")
    assert workers.send("rollup_usage").get(timeout=60) is not None
    workers.client.send_task("billing.tasks.deliver_budget_alert", kwargs={"alert_id": alert.id}, queue=workers.queue)
    deadline = time.monotonic() + 30
    while BudgetAlert.objects.get(pk=alert.pk).webhook_attempts < 1:
        assert time.monotonic() < deadline, "the webhook was never tried"
        time.sleep(0.2)
    time.sleep(0.5)  # the retry is logged just after the attempt is saved
    workers.stop()

    assert log_problems(worker.log_path, (WEBHOOK_SECRET, key, UPSTREAM_KEY)) == []
    lines = [orjson.loads(line) for line in worker.log_path.read_text().splitlines()]
    assert any(line["message"].endswith("ready.") for line in lines)  # Celery's own lines, in JSON
    done = [line for line in lines if "succeeded" in line["message"] and "rollup_usage" in line["message"]]
    assert done, lines
    retried = [line for line in lines if line.get("task_name") == "billing.tasks.deliver_budget_alert"]
    assert retried, "no line logged inside the failing task"
    assert all(line["task_id"] for line in retried)
    assert any("WebhookError" in line["message"] or "WebhookError" in line.get("exception", "") for line in retried)
