"""Real Celery workers (`celery -A proxy_platform worker`) against Redis and the test database.

- Two workers running the rollup and the invoice generation of the same month at once leave
  the rows one run leaves; running again changes nothing.
- A worker killed (SIGKILL) in the middle of an invoice run leaves no invoice behind; its
  message, acknowledged late, goes back to the queue and a new worker produces the right
  invoices.

The data is committed (`transactional_db`) so that the worker processes see it.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from celery import Celery
from django.db.models import Count, Sum

from billing.models import Invoice, InvoiceLine, Plan, SharedCost, UsageRecord, UsageRollup, UsageRollupDay
from billing.services import invoices_generate, usage_rollup
from tests.billing_fixtures import add_price, save, usage
from tests.conftest import database_url, make_model, make_tenant, process_log_path

pytestmark = [pytest.mark.celery_worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/9"
MARCH = date(2024, 3, 1)
D = Decimal

# The worker of the kill test: the real app, with a pause after each tenant's invoice is
# written (inside the month's transaction) and a file saying that one was written.
SLOW_WORKER = """
import os, pathlib, sys, time
import django
django.setup()
import billing.services.invoices as services
marker = pathlib.Path(os.environ["BILLING_TEST_MARKER"])
write = services._invoice_write
def slow_write(**kwargs):
    result = write(**kwargs)
    marker.write_text(kwargs["tenant"].slug)
    time.sleep(float(os.environ["BILLING_TEST_PAUSE"]))
    return result
services._invoice_write = slow_write
from proxy_platform.celery import app
app.worker_main(sys.argv[1:])
"""


class Workers:
    """Worker processes on a queue of their own, and a client app to send them tasks."""

    def __init__(self):
        self.queue = f"billing-test-{uuid.uuid4().hex[:8]}"
        self.client = Celery("billing-tests", broker=REDIS_URL, backend=REDIS_URL)
        self.processes: list[subprocess.Popen] = []

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="proxy_platform.settings",
            DATABASE_URL=database_url(),
            REDIS_URL=REDIS_URL,
            CELERY_RESULT_BACKEND=REDIS_URL,
            CELERY_TASK_ALWAYS_EAGER="0",
            DATABASE_POOL_MIN="1",
        )
        env.update(extra)  # may replace any of the above (DATABASE_URL: tests/test_pgbouncer_live.py)
        return env

    def start(self, name: str, *, slow: bool = False, loglevel: str = "WARNING", **env) -> subprocess.Popen:
        """A worker on this queue; its stderr (logs) goes to `process.log_path`, stdout (the banner) apart."""
        node = f"{name}-{self.queue}@localhost"
        args = ["worker", "--pool=solo", "-Q", self.queue, "-n", node, "--without-gossip", "--without-mingle"]
        args.append(f"--loglevel={loglevel}")
        if slow:
            command = [sys.executable, "-c", SLOW_WORKER, *args]
        else:
            command = [sys.executable, "-m", "celery", "-A", "proxy_platform", *args]
        log_path = process_log_path(f"worker-{name}-{self.queue}")
        with open(log_path, "ab") as stderr, open(log_path.with_suffix(".stdout"), "ab") as stdout:
            process = subprocess.Popen(command, cwd=ROOT, env=self.env(**env), stderr=stderr, stdout=stdout)
        process.log_path = log_path
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, f"worker {name} exited with {process.returncode}"
            if self.client.control.ping(destination=[node], timeout=0.5):
                return process
        raise AssertionError(f"worker {name} did not come up")

    def send(self, task: str, **kwargs):
        return self.client.send_task(f"billing.tasks.{task}", kwargs=kwargs, queue=self.queue)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with self.client.connection_for_write() as connection:
            connection.default_channel.queue_purge(self.queue)
        self.client.close()


@pytest.fixture
def workers(transactional_db):
    pool = Workers()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def month(transactional_db):
    """Six tenants, two models with a price change on March 15, errors, cache hits, a shared cost."""
    gpt = make_model("w-gpt", "openai", "gpt-x", input_per_1m="0.15", output_per_1m="0.60", cached="0.075")
    claude = make_model("w-claude", "anthropic", "claude-x", input_per_1m="3", output_per_1m="15", cache_write="3.75")
    add_price(gpt, datetime(2024, 3, 15, tzinfo=UTC), input_per_1m="0.25", output_per_1m="1.00", cached="0.10")
    plan = Plan.objects.create(name="w-plan", monthly_base_fee=D("20.00"), markup_percent=D("15"))
    tenants = [make_tenant(f"w-tenant-{i}", plan=plan) for i in range(6)]
    records = []
    start = datetime(2024, 3, 1, tzinfo=UTC)
    for i, tenant in enumerate(tenants):
        for n in range(40):
            when = start + timedelta(hours=17 * n + i)
            model = gpt if n % 3 else claude
            records.append(
                usage(
                    tenant,
                    model,
                    when,
                    input_tokens=1000 * (n + 1) + i,
                    cached=300 * (n % 2),
                    cache_write=100 if model is claude else 0,
                    output_tokens=77 * n,
                    cache_hit=n % 11 == 0,
                    status_code=200 if n % 7 else 502,
                    error_type="" if n % 7 else "upstream_error",
                    priced=bool(n % 7),
                )
            )
    save(*records)
    SharedCost.objects.create(period=MARCH, description="cluster", amount=D("123.45"))
    return tenants


def rows():
    return (
        sorted(
            UsageRollup.objects.values_list(
                "day",
                "tenant_id",
                "model",
                "endpoint",
                "status_code",
                "error_type",
                "cache_hit",
                "price_id",
                "requests",
                "input_tokens",
                "cost",
            )
        ),
        sorted(Invoice.objects.values_list("number", "status", "total", "provider_cost")),
        sorted(InvoiceLine.objects.values_list("invoice__number", "key", "quantity", "unit_price", "amount")),
    )


def assert_invoices_are_right(tenants):
    assert Invoice.objects.count() == len(tenants)
    for tenant in tenants:
        invoice = Invoice.objects.get(tenant=tenant, period=MARCH)
        billed = UsageRecord.objects.filter(tenant=tenant, price__isnull=False, cache_hit=False)
        assert invoice.provider_cost == billed.aggregate(c=Sum("cost"))["c"]
        lines = invoice.lines.all()
        assert invoice.total == sum(line.amount for line in lines)
        tokens = billed.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
        assert (
            sum(line.quantity for line in lines if line.line_type in {"input", "cached_input", "cache_write"})
            == (tokens["i"])
        )
        assert sum(line.quantity for line in lines if line.line_type == "output") == tokens["o"]
    shared = InvoiceLine.objects.filter(line_type="shared_cost").aggregate(s=Sum("amount"))["s"]
    assert shared == D("123.45")


def test_two_workers_rolling_up_and_invoicing_the_same_month_at_once_leave_one_runs_rows(workers, month):
    workers.start("a")
    workers.start("b")
    rollups = [workers.send("rollup_usage", since="2024-03-01", until="2024-03-31") for _ in range(2)]
    for result in rollups:
        assert result.get(timeout=120)["days"]
    runs = [workers.send("generate_invoices", period="2024-03") for _ in range(2)]
    outcomes = sorted((r["created"], r["unchanged"]) for r in (result.get(timeout=120) for result in runs))
    # The month's lock makes them take turns: one creates every invoice, the other finds them current.
    assert outcomes == [(0, 6), (6, 0)]

    raw = UsageRecord.objects.aggregate(n=Count("id"), c=Sum("cost"))
    assert UsageRollup.objects.aggregate(n=Sum("requests"), c=Sum("cost")) == {"n": raw["n"], "c": raw["c"]}
    assert UsageRollupDay.objects.aggregate(n=Sum("records"))["n"] == raw["n"]
    assert_invoices_are_right(month)
    after_workers = rows()

    # Once more, by hand and by the workers: nothing changes.
    assert usage_rollup(since=MARCH, until=date(2024, 3, 31)).days == []
    assert invoices_generate(period=MARCH).unchanged == 6
    again = workers.send("generate_invoices", period="2024-03").get(timeout=120)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 6)
    assert rows() == after_workers


def test_a_worker_killed_in_the_middle_of_an_invoice_run_leaves_no_invoice_and_the_message_is_run_again(
    workers, month, tmp_path
):
    marker = tmp_path / "written"
    # A short visibility timeout: the unacknowledged message of the killed worker comes back soon.
    fast_return = {"CELERY_VISIBILITY_TIMEOUT": "3"}
    slow = workers.start("slow", slow=True, BILLING_TEST_MARKER=str(marker), BILLING_TEST_PAUSE="30", **fast_return)
    result = workers.send("generate_invoices", period="2024-03")
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the invoice run did not start"
        time.sleep(0.05)
    assert marker.read_text() == "w-tenant-0"  # one invoice written, in the open transaction

    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=10)
    time.sleep(0.5)
    assert Invoice.objects.count() == 0
    assert InvoiceLine.objects.count() == 0

    workers.start("fresh", **fast_return)
    outcome = result.get(timeout=120)  # the same message, delivered again
    assert outcome["created"] == 6
    assert_invoices_are_right(month)
    assert invoices_generate(period=MARCH).unchanged == 6
