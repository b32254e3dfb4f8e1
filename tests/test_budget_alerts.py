"""Budget alerts: each threshold once a month per tenant, by email and a signed, retried webhook.

Deliveries run eagerly (the Celery app in eager mode), on commit, as `delay_on_commit` queues
them; the webhook receiver is a real HTTP server on 127.0.0.1.
"""

import hashlib
import hmac
import json
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse

from billing import tasks
from billing.models import BudgetAlert, Subscription
from billing.selectors import subscription_webhook_secret_get
from billing.services import WebhookError, budget_alerts_check, subscription_webhook_secret_set
from proxy_platform.celery import app
from tests.billing_fixtures import at, save, usage

NOV = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SECRET = "whsec-test-0123456789"


@pytest.fixture(autouse=True)
def eager_celery(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    # Eager `apply` runs the retries in place only when it does not propagate (Celery re-raises
    # the Retry otherwise); outcomes are asserted on the rows and the receiver instead.
    app.conf.task_eager_propagates = False
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


class Receiver:
    """A webhook endpoint: records every request and answers the planned statuses, then 200."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/budget"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def configure(tenant, *, budget="10.00", emails="ops@alice.test, cfo@alice.test", url="", secret="", thresholds=None):
    subscription = Subscription.objects.get(tenant=tenant)
    subscription.monthly_budget = Decimal(budget) if budget is not None else None
    subscription.alert_emails = emails
    subscription.alert_webhook_url = url
    if thresholds is not None:
        subscription.alert_thresholds = thresholds
    subscription.save()
    if secret:
        subscription_webhook_secret_set(subscription=subscription, secret=secret)
    return subscription


def spend(tenant, model, when: datetime, amount: str):
    record = usage(tenant, model, when, input_tokens=10, output_tokens=10)
    record.cost = Decimal(amount)
    save(record)


def check(tenant, now, capture):
    with capture(execute=True):
        alerts = budget_alerts_check(tenant_id=tenant.id, now=now)
    return [alert.threshold for alert in alerts]


def test_each_threshold_fires_once_per_period(alice, catalog, django_capture_on_commit_callbacks):
    configure(alice)
    gpt = catalog["gpt"]
    spend(alice, gpt, at(date(2026, 11, 2)), "4.999999999999")
    assert check(alice, NOV, django_capture_on_commit_callbacks) == []

    spend(alice, gpt, at(date(2026, 11, 3)), "0.000000000001")  # exactly 5.00: 50 %
    assert check(alice, NOV, django_capture_on_commit_callbacks) == [50]
    assert check(alice, NOV, django_capture_on_commit_callbacks) == []

    spend(alice, gpt, at(date(2026, 11, 4)), "5.50")  # 10.50: 80 % and 100 % at once
    assert check(alice, NOV, django_capture_on_commit_callbacks) == [80, 100]
    assert check(alice, NOV, django_capture_on_commit_callbacks) == []

    alerts = list(BudgetAlert.objects.filter(tenant=alice).order_by("threshold"))
    assert [(a.period, a.threshold, a.budget) for a in alerts] == [
        (date(2026, 11, 1), 50, Decimal("10.00")),
        (date(2026, 11, 1), 80, Decimal("10.00")),
        (date(2026, 11, 1), 100, Decimal("10.00")),
    ]
    assert alerts[0].spend == Decimal("5.000000000000")
    assert alerts[1].spend == Decimal("10.500000000000")
    assert all(a.email_sent_at is not None for a in alerts)
    assert len(mail.outbox) == 3
    assert mail.outbox[0].to == ["ops@alice.test", "cfo@alice.test"]
    assert "50%" in mail.outbox[0].subject
    assert "5.00 USD" in mail.outbox[0].body


def test_a_new_month_fires_again(alice, catalog, django_capture_on_commit_callbacks):
    configure(alice)
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "6")
    assert check(alice, NOV, django_capture_on_commit_callbacks) == [50]
    assert check(alice, DEC, django_capture_on_commit_callbacks) == []  # December's spend starts at zero

    spend(alice, catalog["gpt"], at(date(2026, 12, 2)), "5")
    assert check(alice, DEC, django_capture_on_commit_callbacks) == [50]
    assert sorted(BudgetAlert.objects.values_list("period", "threshold")) == [
        (date(2026, 11, 1), 50),
        (date(2026, 12, 1), 50),
    ]
    assert len(mail.outbox) == 2


def test_thresholds_are_per_subscription_and_tenants_apart(alice, bob, catalog, django_capture_on_commit_callbacks):
    configure(alice, thresholds=[25, 90])
    configure(bob, budget=None)  # no budget of its own and none on the plan: never alerted
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "9.5")
    spend(bob, catalog["gpt"], at(date(2026, 11, 2)), "1000")
    assert check(alice, NOV, django_capture_on_commit_callbacks) == [25, 90]
    assert check(bob, NOV, django_capture_on_commit_callbacks) == []
    assert BudgetAlert.objects.filter(tenant=bob).count() == 0


def test_no_recipients_no_email(alice, catalog, django_capture_on_commit_callbacks):
    configure(alice, emails=" , ")
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "6")
    assert check(alice, NOV, django_capture_on_commit_callbacks) == [50]
    assert mail.outbox == []
    assert BudgetAlert.objects.get().email_sent_at is None


def test_the_webhook_is_signed_and_verifies(alice, catalog, receiver, django_capture_on_commit_callbacks):
    subscription = configure(alice, url=receiver.url, secret=SECRET)
    assert SECRET not in Subscription.objects.get(pk=subscription.pk).alert_webhook_secret  # stored encrypted
    assert subscription_webhook_secret_get(subscription=Subscription.objects.get(pk=subscription.pk)) == SECRET
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "8.25")
    assert check(alice, NOV, django_capture_on_commit_callbacks) == [50, 80]

    assert len(receiver.requests) == 2
    alerts = {a.id: a for a in BudgetAlert.objects.all()}
    for headers, body in receiver.requests:
        timestamp = headers["x-webhook-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-signature-256"], f"sha256={expected}")
        assert not hmac.compare_digest(
            headers["x-signature-256"], "sha256=" + hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
        )
        payload = json.loads(body)
        assert headers["x-alert-id"] == str(payload["id"])
        alert = alerts[payload["id"]]
        assert payload == {
            "id": alert.id,
            "type": "budget.threshold_reached",
            "tenant": "alice",
            "period": "2026-11",
            "threshold_percent": alert.threshold,
            "spend": "8.250000000000",
            "budget": "10.00",
            "currency": "USD",
            "created_at": "2026-11-20T12:00:00+00:00",
        }
        assert alert.webhook_delivered_at is not None
        assert alert.webhook_attempts == 1


def test_a_failing_webhook_is_retried_then_delivered_and_the_email_sent_once(
    alice, catalog, django_capture_on_commit_callbacks
):
    receiver = Receiver(statuses=[500, 500])
    try:
        configure(alice, url=receiver.url, secret=SECRET)
        spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "5")
        assert check(alice, NOV, django_capture_on_commit_callbacks) == [50]
    finally:
        receiver.close()
    alert = BudgetAlert.objects.get()
    assert len(receiver.requests) == 3
    assert {headers["x-alert-id"] for headers, _ in receiver.requests} == {str(alert.id)}
    assert alert.webhook_attempts == 3
    assert alert.webhook_delivered_at is not None
    assert len(mail.outbox) == 1


def test_a_webhook_that_keeps_failing_gives_up_after_six_retries(alice, catalog):
    receiver = Receiver(statuses=[503] * 20)
    try:
        configure(alice, url=receiver.url, secret=SECRET)
        spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "5")
        [alert] = budget_alerts_check(tenant_id=alice.id, now=NOV)  # not committed: nothing queued yet
        result = tasks.deliver_budget_alert.apply(args=[alert.id])
    finally:
        receiver.close()
    assert result.failed()
    assert isinstance(result.result, WebhookError)
    alert.refresh_from_db()
    assert len(receiver.requests) == 7  # the first try and six retries
    assert alert.webhook_attempts == 7
    assert alert.webhook_delivered_at is None
    assert len(mail.outbox) == 1  # the email went out on the first try only


def test_an_unreachable_webhook_is_retried(alice, catalog):
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there any more
    configure(alice, url=url, emails="")
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "5")
    [alert] = budget_alerts_check(tenant_id=alice.id, now=NOV)
    result = tasks.deliver_budget_alert.apply(args=[alert.id])
    assert isinstance(result.result, WebhookError)
    alert.refresh_from_db()
    assert alert.webhook_attempts == 7


@pytest.mark.django_db(transaction=True)
def test_concurrent_checkers_raise_and_deliver_each_alert_once(alice, catalog, receiver):
    configure(alice, url=receiver.url, secret=SECRET)
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "8.5")  # crosses 50 and 80
    barrier = threading.Barrier(5)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def checker():
        try:
            barrier.wait()
            alerts = budget_alerts_check(tenant_id=alice.id, now=NOV)
            results.append([alert.threshold for alert in alerts])
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=checker) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(results) == 5
    assert sorted(t for result in results for t in result) == [50, 80]
    alerts = list(BudgetAlert.objects.order_by("threshold"))
    assert [a.threshold for a in alerts] == [50, 80]
    assert all(a.webhook_attempts == 1 and a.webhook_delivered_at and a.email_sent_at for a in alerts)
    assert sorted(headers["x-alert-id"] for headers, _ in receiver.requests) == sorted(str(a.id) for a in alerts)
    assert len(mail.outbox) == 2


def test_check_budgets_raises_the_alerts_of_every_tenant_with_a_budget(
    alice, bob, catalog, django_capture_on_commit_callbacks
):
    configure(alice)
    configure(bob, budget="100.00")
    now = datetime.now(UTC)
    spend(alice, catalog["gpt"], now, "10")
    spend(bob, catalog["gpt"], now, "1")
    with django_capture_on_commit_callbacks(execute=True):
        tasks.check_budgets.run()
    assert sorted(BudgetAlert.objects.values_list("tenant__slug", "threshold")) == [
        ("alice", 50),
        ("alice", 80),
        ("alice", 100),
    ]
    assert len(mail.outbox) == 3


def test_the_admin_lists_alerts_read_only_and_never_shows_the_secret(
    admin_client, alice, catalog, django_capture_on_commit_callbacks
):
    subscription = configure(alice, secret=SECRET)
    spend(alice, catalog["gpt"], at(date(2026, 11, 2)), "6")
    check(alice, NOV, django_capture_on_commit_callbacks)
    alert = BudgetAlert.objects.get()

    page = admin_client.get(reverse("admin:billing_budgetalert_changelist"))
    assert page.status_code == 200
    assert "alice" in page.content.decode()
    assert admin_client.get(reverse("admin:billing_budgetalert_add")).status_code == 403
    assert admin_client.get(reverse("admin:billing_budgetalert_delete", args=[alert.pk])).status_code == 403
    change = reverse("admin:billing_budgetalert_change", args=[alert.pk])
    assert admin_client.post(change, {"threshold": 10}).status_code == 403

    url = reverse("admin:billing_subscription_change", args=[subscription.pk])
    form = admin_client.get(url).content.decode()
    assert "alert_webhook_url" in form
    assert SECRET not in form
    assert subscription.alert_webhook_secret not in form

    data = {
        "plan": subscription.plan_id,
        "monthly_budget": "10.00",
        "alert_thresholds": "[50, 90]",
        "alert_emails": "ops@alice.test",
        "alert_webhook_url": "https://hooks.alice.test/budget",
        "webhook_secret": "a-new-secret",
    }
    assert admin_client.post(url, data).status_code == 302
    subscription.refresh_from_db()
    assert subscription.alert_thresholds == [50, 90]
    assert subscription_webhook_secret_get(subscription=subscription) == "a-new-secret"

    del data["webhook_secret"]  # left empty: the secret stays
    assert admin_client.post(url, data).status_code == 302
    subscription.refresh_from_db()
    assert subscription_webhook_secret_get(subscription=subscription) == "a-new-secret"

    data["alert_thresholds"] = '["fifty"]'
    assert admin_client.post(url, data).status_code == 200  # the form again, with the error
