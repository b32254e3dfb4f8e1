"""The request journal (gateway/journal.py): write-ahead traces, the spool of usage records, the
reconciler and `manage.py reconcile_requests`, on Redis and on the in-process fallback.

The reconciler writes through `db_call` (a worker thread, a connection of its own), so these
tests commit: `transaction=True`.
"""

import asyncio
import os
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import orjson
import pytest
import redis
from django.core.management import CommandError, call_command

from billing.models import ModelPrice, UsageRecord
from billing.pricing import Price, Tokens
from billing.services import usage_cost
from gateway import journal, limits
from gateway.metered import Metered
from gateway.registry import Caller, KeyView, ProjectView, TenantView
from tenants.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/6"
JOURNAL_KEYS = ("gw:{journal}:traces", "gw:{journal}:traces:data", "gw:{journal}:spool", "gw:{journal}:spool:data")


@pytest.fixture(autouse=True)
def empty_journal(settings):
    settings.REDIS_URL = REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*JOURNAL_KEYS)  # our own keys only: the server is shared
    journal._memory_journal.clear()
    limits._memory_store.clear()
    STARTED.clear()
    yield client
    client.delete(*JOURNAL_KEYS)
    client.close()


@pytest.fixture
def own_redis(settings, tmp_path):
    """A redis-server of this test's own, so that its command counts are this test's alone."""
    from .test_limits import SpareRedis

    server = SpareRedis(tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def script_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings):
    if request.param == "memory":
        settings.REDIS_URL = ""
    return request.param


def run(coroutine):
    async def and_close():
        try:
            return await coroutine
        finally:
            await limits.aclose()

    return asyncio.run(and_close())


@pytest.fixture
def priced(catalog, alice, alice_key):
    key = ApiKey.objects.get(tenant=alice)
    model = catalog["gpt"]
    deployment = model.deployments.get()
    price = ModelPrice.objects.get(model=model)
    return SimpleNamespace(tenant=alice, key=key, model=model, deployment=deployment, price=price)


def caller_of(priced, *, concurrent=None) -> Caller:
    tenant = TenantView(
        id=priced.tenant.id,
        slug=priced.tenant.slug,
        active=True,
        region="",
        allowed_providers=frozenset(),
        allowed_model_ids=frozenset(),
        requests_per_minute=None,
        tokens_per_minute=None,
        max_concurrent=concurrent,
        model_aliases={},
        default_params={},
        max_tokens_cap=None,
        log_requests=False,
        monthly_budget=Decimal("50"),
        credentials={},
    )
    key = KeyView(
        id=priced.key.id,
        tenant_id=priced.tenant.id,
        allowed_model_ids=frozenset(),
        requests_per_minute=None,
        tokens_per_minute=None,
        max_concurrent=concurrent,
        monthly_budget=Decimal("20"),
    )
    return Caller(key=key, tenant=tenant)


# A request's created_at is set once when it starts (gateway.lifecycle.Call) and carried by its
# trace and its record alike: usage records are unique on (request_id, created_at).
STARTED: dict[str, datetime] = {}


def started(request_id: str) -> datetime:
    return STARTED.setdefault(request_id, datetime.now(UTC))


def call_of(priced, request_id: str, *, caller=None, prompt=1000, created_at=None):
    """What trace_open reads of a proxy.Call, as the proxy has it just before the upstream call."""
    return SimpleNamespace(
        request_id=request_id,
        caller=caller or caller_of(priced),
        model_name="gpt-test",
        endpoint="chat",
        deployment=SimpleNamespace(id=priced.deployment.id, provider="openai", upstream=priced.deployment.upstream),
        price=SimpleNamespace(id=priced.price.id),
        created_at=created_at or started(request_id),
        stream=True,
        prompt_estimate=prompt,
        fallen_back=False,
    )


def metered_of(priced, request_id: str, *, output=50, error_type="") -> Metered:
    return Metered(
        request_id=request_id,
        created_at=started(request_id),
        tenant_id=priced.tenant.id,
        api_key_id=priced.key.id,
        model="gpt-test",
        provider="openai",
        upstream_model=priced.deployment.upstream,
        endpoint="chat",
        status_code=200,
        error_type=error_type,
        tokens=Tokens(input=1000, cached_input=200, output=output),
        price_id=priced.price.id,
        price=Price(
            input_per_1m=priced.price.input_per_1m,
            output_per_1m=priced.price.output_per_1m,
            cached_input_per_1m=priced.price.cached_input_per_1m,
        ),
        latency_ms=12,
        streamed=False,
        estimated=False,
        tenant_slug=priced.tenant.slug,
        deployment_id=priced.deployment.id,
    )


async def admit(caller: Caller, request_id: str) -> limits.Admission:
    async def zero() -> Decimal:
        return Decimal(0)

    return await limits.admit(
        caller=caller,
        request_id=request_id,
        prompt_tokens=1000,
        max_output_tokens=100,
        worst_case_cost=Decimal("0.25"),
        budget=caller.tenant.monthly_budget,
        month_to_date=zero,
        key_budget=caller.key.monthly_budget,
        key_month_to_date=zero,
    )


def test_an_interrupted_request_is_recorded_and_its_limits_given_back(priced, backend):
    caller = caller_of(priced, concurrent=1)

    async def scenario():
        await admit(caller, "req-dead")  # its process dies: never settled
        await journal.trace_open(call=call_of(priced, "req-dead", caller=caller, prompt=1234))
        with pytest.raises(Exception, match="concurrent"):
            await admit(caller, "req-next")
        first = await journal.reconcile_requests(older_than_seconds=0)
        again = await journal.reconcile_requests(older_than_seconds=0)
        admitted = await admit(caller, "req-next")  # the slot is free again
        await admitted.release()
        return first, again, await limits.spend_this_month(caller.tenant.id)

    first, again, spend = run(scenario())
    assert first == journal.ReconcileResult(replayed=0, interrupted=1, released=4)  # 2 slots, 2 holds
    assert again == journal.ReconcileResult(replayed=0, interrupted=0, released=0)
    assert spend == 0  # the 0.25 USD hold went back; the record is counted at the next counter reconcile
    record = UsageRecord.objects.get(request_id="req-dead")
    assert (record.status_code, record.error_type, record.estimated) == (502, "interrupted", True)
    assert (record.input_tokens, record.output_tokens) == (1234, 0)
    assert (record.provider, record.upstream_model, record.price_id) == (
        "openai",
        priced.deployment.upstream,
        priced.price.id,
    )
    assert record.cost == Decimal("1234") * Decimal("0.15") / 1_000_000
    assert record.streamed


def test_a_dead_request_gives_back_its_projects_and_end_users_slots_and_holds_and_is_attributed(priced, backend):
    """Issue 14: the trace carries the project and the end user, so that the reconciler frees
    their levels too (the day's counters included) and the `interrupted` record is attributed."""
    import dataclasses

    from tenants.models import Project

    project = Project.objects.create(tenant=priced.tenant, name="search")
    base = caller_of(priced)
    key = dataclasses.replace(base.key, project=ProjectView(id=project.id, name="search"), daily_budget=Decimal("5"))
    caller = Caller(key=key, tenant=base.tenant)
    levels = [
        limits.Level(kind="project", ident=project.id, name="search", max_concurrent=1,
                     monthly_budget=Decimal("10"), spend_since=lambda since: zero()),
        limits.Level(kind="end_user", ident="u-7", max_concurrent=1, daily_budget=Decimal("1"),
                     spend_since=lambda since: zero()),
    ]  # fmt: skip

    async def zero() -> Decimal:
        return Decimal(0)

    async def admit_levels(request_id: str):
        return await limits.admit(
            caller=caller, request_id=request_id, prompt_tokens=10, max_output_tokens=10,
            worst_case_cost=Decimal("0.25"), budget=None, month_to_date=zero,
            key_daily_budget=key.daily_budget, key_spend_since=lambda since: zero(), levels=levels,
        )  # fmt: skip

    async def scenario():
        await admit_levels("req-dead-levels")
        call = call_of(priced, "req-dead-levels", caller=caller)
        call.end_user, call.tags = "u-7", {"feature": "search"}
        await journal.trace_open(call=call)
        with pytest.raises(Exception, match="in flight"):
            await admit_levels("req-next")
        first = await journal.reconcile_requests(older_than_seconds=0)
        admitted = await admit_levels("req-next")  # the project's and end user's slots are free again
        await admitted.release()
        return first

    first = run(scenario())
    # Slots: project, end user; holds: the key's day, the project's month, the end user's day.
    assert first.released == 5
    record = UsageRecord.objects.get(request_id="req-dead-levels")
    assert (record.error_type, record.project_id, record.end_user, record.tags) == (
        "interrupted",
        project.id,
        "u-7",
        {"feature": "search"},
    )


def test_a_young_trace_is_left_alone_and_a_finished_one_is_gone(priced, backend):
    async def scenario():
        await journal.trace_open(call=call_of(priced, "req-running"))
        await journal.trace_open(call=call_of(priced, "req-finished"))
        await journal.trace_done(request_id="req-finished")
        return await journal.reconcile_requests(older_than_seconds=60)

    assert run(scenario()).interrupted == 0
    assert not UsageRecord.objects.exists()
    assert run(journal.reconcile_requests(older_than_seconds=0)).interrupted == 1
    assert list(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-running"]


def test_a_spooled_record_is_written_once_with_the_cost_it_settled_with(priced, backend):
    metered = metered_of(priced, "req-spooled")

    async def scenario():
        await journal.trace_open(call=call_of(priced, "req-spooled"))
        cost = await journal.spool(metered=metered)
        first = await journal.reconcile_requests(older_than_seconds=0)
        await journal.spool(metered=metered)  # as if its first write had committed after all
        second = await journal.reconcile_requests(older_than_seconds=0)
        return cost, first, second

    cost, first, second = run(scenario())
    assert first == journal.ReconcileResult(replayed=1, interrupted=0, released=0)  # the spool closed its trace
    assert second.replayed == 1
    record = UsageRecord.objects.get(request_id="req-spooled")
    assert record.cost == cost == usage_cost(metered=metered) == Decimal("0.000165")
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (1000, 200, 50)
    assert UsageRecord.objects.count() == 1


def test_the_requests_own_record_replaces_an_interrupted_one(priced):
    run(journal.trace_open(call=call_of(priced, "req-slow")))
    run(journal.reconcile_requests(older_than_seconds=0))  # an operator's --older-than 0 while it ran
    assert UsageRecord.objects.get(request_id="req-slow").error_type == "interrupted"

    journal.usage_record_write(metered=metered_of(priced, "req-slow"))
    journal.usage_record_write(metered=metered_of(priced, "req-slow", output=999))  # a replay: no change

    record = UsageRecord.objects.get(request_id="req-slow")
    assert (record.error_type, record.status_code, record.output_tokens) == ("", 200, 50)


def test_concurrent_reconcilers_take_each_trace_once(priced, backend):
    async def scenario():
        for i in range(60):
            await journal.trace_open(call=call_of(priced, f"req-{i}"))
        return await asyncio.gather(*(journal.reconcile_requests(older_than_seconds=0) for _ in range(3)))

    results = run(scenario())
    assert sum(r.interrupted for r in results) == 60
    assert UsageRecord.objects.filter(error_type="interrupted").count() == 60


def test_a_claim_that_was_never_finished_comes_back_after_its_lease(priced, empty_journal, monkeypatch):
    monkeypatch.setattr(journal, "CLAIM_LEASE_SECONDS", 0.2)

    async def scenario():
        await journal.trace_open(call=call_of(priced, "req-orphan"))
        claimed = await journal._journal().claim(journal._TRACES, age_ms=0, limit=10)  # its reconciler dies
        immediately = await journal._journal().claim(journal._TRACES, age_ms=0, limit=10)
        await asyncio.sleep(0.3)
        return claimed, immediately, await journal.reconcile_requests(older_than_seconds=0)

    claimed, immediately, result = run(scenario())
    assert [rid for rid, _ in claimed] == ["req-orphan"]
    assert immediately == []
    assert result.interrupted == 1


def test_a_replay_cut_by_the_database_gives_its_claims_back_at_once(priced, backend, settings):
    """The database stops answering during a replay: what was not written must be due again at
    once, not leased for a minute (the live outage test's reconciler, run just after the gateway's
    own replay had failed, once found a served call without its record)."""

    async def scenario():
        for i in range(3):
            await journal.spool(metered=metered_of(priced, f"req-{i}"))
        settings.GATEWAY_DB_TIMEOUT = 1e-9  # no answer in time: db_call's own bound
        with pytest.raises(TimeoutError):
            await journal.reconcile_requests(older_than_seconds=60)
        return await journal._journal().claim(journal._SPOOL, age_ms=0, limit=10)

    due = run(scenario())
    assert sorted(rid for rid, _ in due) == ["req-0", "req-1", "req-2"]


def test_a_record_the_database_refuses_does_not_hold_back_the_others(priced, backend):
    refused = metered_of(priced, "req-2")
    refused = Metered(**{**{f: getattr(refused, f) for f in refused.__dataclass_fields__}, "tenant_id": 10**9})

    async def scenario():
        for metered in (metered_of(priced, "req-1"), refused, metered_of(priced, "req-3")):
            await journal.spool(metered=metered)
        result = await journal.reconcile_requests(older_than_seconds=60)
        return result, await journal._journal().claim(journal._SPOOL, age_ms=0, limit=10)

    result, due = run(scenario())
    assert result.replayed == 2
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-1", "req-3"]
    assert due == []  # the refused one waits for its lease, and is logged each time


def test_traces_of_concurrent_requests_are_written_together_and_each_waits_for_its_own(priced, own_redis):
    """Group commit: 100 requests in flight write their traces in two script calls, not 100
    (counted by the server): the first at once (no write was awaiting its reply), the 99 that
    came in the same turn of the loop meanwhile together; every one of them is in the journal
    when its call returns."""

    async def scenario():
        await journal.trace_open(call=call_of(priced, "warm-up"))
        await journal.trace_done(request_id="warm-up")  # both scripts loaded
        before = script_calls(own_redis)
        await asyncio.gather(*(journal.trace_open(call=call_of(priced, f"req-{i}")) for i in range(100)))
        opened = script_calls(own_redis) - before
        await asyncio.gather(*(journal.trace_done(request_id=f"req-{i}") for i in range(50)))
        return opened, script_calls(own_redis) - before - opened

    assert run(scenario()) == (2, 1)
    traced = {rid.decode() for rid in own_redis.zrange("gw:{journal}:traces", 0, -1)}
    assert traced == {f"req-{i}" for i in range(50, 100)}
    assert own_redis.hlen("gw:{journal}:traces:data") == 50


def test_finished_traces_leave_together_off_the_requests_path(priced, own_redis):
    """trace_done_soon: the request does not wait; the traces of every request that finished within
    DONE_DELAY_SECONDS go in one script call (counted by the server)."""

    async def scenario():
        await asyncio.gather(*(journal.trace_open(call=call_of(priced, f"req-{i}")) for i in range(20)))
        await journal.trace_done(request_id="req-0")  # loads the script once
        before = script_calls(own_redis)
        for i in range(1, 20):
            journal.trace_done_soon(request_id=f"req-{i}")
        still_there = own_redis.zcard("gw:{journal}:traces")
        await asyncio.sleep(journal.DONE_DELAY_SECONDS * 3)
        await journal.flush()
        return still_there, script_calls(own_redis) - before

    still_there, calls = run(scenario())
    assert still_there == 19  # nothing was waited for
    assert calls == 1
    assert own_redis.zcard("gw:{journal}:traces") == 0
    assert own_redis.hlen("gw:{journal}:traces:data") == 0


def test_a_trace_written_ahead_is_on_its_way_when_the_call_returns_and_confirmed_before_the_record(
    priced, empty_journal
):
    """The proxy's trace_open(ahead=True) does not wait for Redis' reply: it leaves it on the call,
    and trace_confirmed() (the owner, before the usage record) waits for it."""

    async def scenario():
        call = call_of(priced, "req-ahead")
        call.trace_sent = None
        await journal.trace_open(call=call, ahead=True)
        pending = call.trace_sent
        await journal.trace_confirmed(call)
        return pending, call.trace_sent

    pending, after = run(scenario())
    assert pending is not None  # the reply was left for later
    assert after is None
    assert empty_journal.zscore("gw:{journal}:traces", "req-ahead") is not None
    assert orjson.loads(empty_journal.hget("gw:{journal}:traces:data", "req-ahead"))["prompt_tokens"] == 1000


CRASH_AFTER_TRACE = """
import asyncio, os, signal, sys
from datetime import UTC, datetime
from types import SimpleNamespace
import django
django.setup()
from gateway import journal

tenant = SimpleNamespace(id=1, slug="t")
caller = SimpleNamespace(tenant=tenant, key_id=2)
deployment = SimpleNamespace(id=3, provider="openai", upstream="gpt-test")


async def main():
    for n in range(int(sys.argv[2])):  # a connection of its own, as a gateway's first request makes it
        call = SimpleNamespace(request_id=f"{sys.argv[1]}-{n}", caller=caller, model_name="gpt-test",
            endpoint="chat", deployment=deployment, price=None, created_at=datetime.now(UTC), stream=False,
            prompt_estimate=7, trace_sent=None, fallen_back=False)
        await journal.trace_open(call=call, ahead=True)
    # The provider would be called now; the process dies before it reads any reply.
    os.kill(os.getpid(), signal.SIGKILL)


asyncio.run(main())
"""


def test_a_trace_written_ahead_survives_the_process_dying_before_its_reply(priced, empty_journal, settings):
    """kill -9 right after trace_open(ahead=True) returned, its reply never read: Redis has the
    traces all the same (the bytes were in the kernel; Redis executes them in order)."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "REDIS_URL": settings.REDIS_URL, "DJANGO_SETTINGS_MODULE": "proxy_platform.settings"}
    process = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_TRACE, "req-killed", "20"], env=env, capture_output=True, timeout=60
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    deadline = time.monotonic() + 5
    while empty_journal.zcard("gw:{journal}:traces") < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {rid.decode() for rid in empty_journal.zrange("gw:{journal}:traces", 0, -1)} == {
        f"req-killed-{n}" for n in range(20)
    }


def test_a_trace_connection_closed_by_the_server_is_replaced_at_the_next_request(priced, own_redis):
    async def scenario():
        first = call_of(priced, "req-1")
        first.trace_sent = None
        await journal.trace_open(call=first, ahead=True)
        await journal.trace_confirmed(first)
        own_redis.client_kill_filter(_type="normal", skipme=True)  # every other client's connection
        await asyncio.sleep(0.2)  # the loop sees the connection closed
        second = call_of(priced, "req-2")
        second.trace_sent = None
        await journal.trace_open(call=second, ahead=True)
        await journal.trace_confirmed(second)
        return journal._paused()

    assert run(scenario()) is False
    assert {rid.decode() for rid in own_redis.zrange("gw:{journal}:traces", 0, -1)} == {"req-1", "req-2"}


def test_a_trace_redis_did_not_acknowledge_is_logged_and_pauses_the_journal(priced, monkeypatch, caplog):
    """The request was already served: the failure costs it nothing but the protection."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    monkeypatch.setattr(journal, "_paused_until", 0.0)

    async def reset() -> None:
        raise RedisConnectionError("Connection reset by peer")

    async def scenario():
        call = call_of(priced, "req-lost")
        call.trace_sent = reset
        await journal.trace_confirmed(call)  # does not raise
        return call.trace_sent, journal._paused()

    assert run(scenario()) == (None, True)
    assert "request req-lost: the journal is unreachable, its trace may not have been written" in caplog.text


def test_a_redis_that_stops_answering_costs_a_trace_one_timeout(priced, own_redis, settings, monkeypatch, caplog):
    """The reply of a trace sent ahead is waited for within GATEWAY_LIMITS_REDIS_TIMEOUT; then the
    connection is given up (the next request connects again) and the journal pauses."""
    import signal

    settings.GATEWAY_LIMITS_REDIS_TIMEOUT = 0.3
    monkeypatch.setattr(journal, "_paused_until", 0.0)
    pid = own_redis.info("server")["process_id"]

    async def scenario():
        warm = call_of(priced, "req-warm")
        warm.trace_sent = None
        await journal.trace_open(call=warm, ahead=True)  # connected
        await journal.trace_confirmed(warm)
        os.kill(pid, signal.SIGSTOP)
        try:
            call = call_of(priced, "req-hung")
            call.trace_sent = None
            await journal.trace_open(call=call, ahead=True)  # sent: the kernel takes it
            started = asyncio.get_running_loop().time()
            await journal.trace_confirmed(call)
            waited = asyncio.get_running_loop().time() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        return waited, journal._paused()

    waited, paused = run(scenario())
    assert 0.25 <= waited < 2
    assert paused
    assert "request req-hung: the journal is unreachable, its trace may not have been written" in caplog.text


def test_the_command_reconciles_and_checks_its_argument(priced, capsys):
    run(journal.trace_open(call=call_of(priced, "req-cmd")))
    call_command("reconcile_requests", "--older-than", "3600")
    assert "0 interrupted requests recorded" in capsys.readouterr().out
    call_command("reconcile_requests", "--older-than", "0")
    assert "1 interrupted requests recorded" in capsys.readouterr().out
    assert UsageRecord.objects.get(request_id="req-cmd").error_type == "interrupted"
    with pytest.raises(CommandError, match="must be 0 or more"):
        call_command("reconcile_requests", "--older-than", "-1")


def test_the_beat_task_is_scheduled(settings):
    from gateway.tasks import reconcile_requests

    schedule = settings.CELERY_BEAT_SCHEDULE["reconcile-requests"]
    assert schedule["task"] == "gateway.tasks.reconcile_requests"
    assert schedule["schedule"] == 60.0
    assert reconcile_requests.run() == {"replayed": 0, "interrupted": 0, "released": 0}


def test_a_journal_that_does_not_answer_costs_one_timeout_then_is_left_alone(priced, settings, monkeypatch):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: refused at once
    monkeypatch.setattr(journal, "_paused_until", 0.0)
    calls = []
    real_open = journal._RedisJournal.open

    async def counted(self, request_id, data):
        calls.append(request_id)
        return await real_open(self, request_id, data)

    monkeypatch.setattr(journal._RedisJournal, "open", counted)

    async def scenario():
        for i in range(5):
            await journal.trace_open(call=call_of(priced, f"req-{i}"))  # never raises: the request goes on
        await journal.trace_done(request_id="req-0")

    run(scenario())
    assert calls == ["req-0"]


def test_errors_escaping_a_v1_view_are_json_in_the_callers_format(rf):
    from django.db.utils import OperationalError

    from gateway.middleware import api_exception_response

    anthropic = api_exception_response(rf.post("/v1/messages"), OperationalError("server closed the connection"))
    assert anthropic.status_code == 503
    assert orjson.loads(anthropic.content)["error"]["type"] == "overloaded_error"
    openai = api_exception_response(rf.get("/v1/templates"), ValueError("a bug"))
    assert openai.status_code == 500
    body = orjson.loads(openai.content)["error"]
    assert body["code"] == "internal_error"
    assert openai["x-request-id"] in body["message"]
    assert "a bug" not in openai.content.decode()
    assert api_exception_response(rf.get("/admin/"), ValueError("a bug")) is None
