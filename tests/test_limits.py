"""Admission limits (gateway/limits/) against a real Redis: requests, tokens and concurrency per
tenant and per key, the monthly budgets (tenant and key), settlement, release of a dead request,
and failing closed while Redis is down.

The tests need no database: callers are built directly and the month's spend from the database
is a callable. Ids are random so runs never share counters. This is the stores' contract suite:
every test of the logic takes the `backend` fixture and runs on the Redis store and on the
in-process store used without REDIS_URL. Time is a ManualClock (the `clock` fixture) moved
forward instead of slept; only the tests across processes read real time (Redis' TIME).
"""

import asyncio
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from gateway import limits
from gateway.errors import GatewayError
from gateway.registry import Caller, KeyView, TenantView

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/6"
ROOT = Path(__file__).resolve().parent.parent


def redis_caches(url: str) -> dict:
    return {
        "default": {
            "BACKEND": "proxy_platform.cache.SharedRedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


@pytest.fixture(autouse=True)
def shared_redis(settings):
    """Limits and django-ratelimit's cache both on the test Redis, whatever the environment said."""
    settings.REDIS_URL = REDIS_URL
    settings.CACHES = redis_caches(REDIS_URL)
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 60
    limits._memory_store.clear()


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings):
    if request.param == "memory":
        settings.REDIS_URL = ""
    return request.param


# The start of the minute before this one (also a boundary of 2 s and 5 s windows).
MINUTE_START_MS = (int(time.time()) // 60 - 1) * 60_000


@pytest.fixture
def clock():
    """Both stores read this clock; it starts 5 s into a minute (and into every window of a
    whole number of seconds dividing 60) and moves only when told to."""
    with limits.use_clock(limits.ManualClock(MINUTE_START_MS + 5000)) as manual:
        yield manual


def fresh_id() -> int:
    """An id never used before, so that runs never share counters."""
    return random.randrange(10**9, 2 * 10**9)


def make_caller(
    *,
    tenant_id=None,
    rpm=None,
    tpm=None,
    concurrent=None,
    key_rpm=None,
    key_tpm=None,
    key_concurrent=None,
    key_budget=None,
):
    tenant_id = tenant_id or fresh_id()
    tenant = TenantView(
        id=tenant_id,
        slug=f"t{tenant_id}",
        active=True,
        region="",
        allowed_providers=frozenset(),
        allowed_model_ids=frozenset(),
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_concurrent=concurrent,
        model_aliases={},
        default_params={},
        max_tokens_cap=None,
        log_requests=False,
        monthly_budget=None,
        credentials={},
    )
    key = KeyView(
        id=fresh_id(),
        tenant_id=tenant_id,
        allowed_model_ids=frozenset(),
        requests_per_minute=key_rpm,
        tokens_per_minute=key_tpm,
        max_concurrent=key_concurrent,
        monthly_budget=None if key_budget is None else Decimal(key_budget),
    )
    return Caller(key=key, tenant=tenant)


def another_key(caller: Caller, **limits_of_key) -> Caller:
    fields = {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "max_concurrent": None,
        "monthly_budget": None,
        **limits_of_key,
    }
    key = KeyView(id=fresh_id(), tenant_id=caller.tenant.id, allowed_model_ids=frozenset(), **fields)
    return Caller(key=key, tenant=caller.tenant)


def run(coroutine):
    async def and_close():
        try:
            return await coroutine
        finally:
            await limits.aclose()

    return asyncio.run(and_close())


def from_db(amount: str, calls: list | None = None):
    async def month_to_date() -> Decimal:
        if calls is not None:
            calls.append(1)
        await asyncio.sleep(0.01)  # a real query yields to the loop
        return Decimal(amount)

    return month_to_date


async def attempt(
    caller, *, prompt=10, max_output=None, worst=None, budget=None, mtd=None, key_mtd=None, request_id=None
):
    """admit(), returning the Admission or the GatewayError it raised. The key's budget is the
    caller's (KeyView.monthly_budget), as in the proxy; `key_mtd` its month from the database."""
    try:
        return await limits.admit(
            caller=caller,
            request_id=request_id or f"req-{random.getrandbits(64):x}",
            prompt_tokens=prompt,
            max_output_tokens=max_output,
            worst_case_cost=None if worst is None else Decimal(worst),
            budget=None if budget is None else Decimal(budget),
            month_to_date=mtd or from_db("0"),
            key_budget=caller.key.monthly_budget,
            key_month_to_date=key_mtd or from_db("0"),
        )
    except GatewayError as error:
        return error


def admitted(results) -> list[limits.Admission]:
    return [r for r in results if isinstance(r, limits.Admission)]


def refused(results, status=429) -> list[GatewayError]:
    errors = [r for r in results if isinstance(r, GatewayError)]
    assert all(e.status == status for e in errors), [str(e) for e in errors]
    return errors


def parse_duration(text: str) -> int:
    """Milliseconds of a Go-style duration ("1m0s", "1.5s", "12ms")."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", text)
    assert text, text
    assert match, text
    hours, minutes, seconds, millis = match.groups()
    return (
        int(hours or 0) * 3_600_000 + int(minutes or 0) * 60_000 + int(Decimal(seconds or 0) * 1000) + int(millis or 0)
    )


def at_window_start(clock, seconds: float) -> None:
    """Move the clock to just after the next boundary of the epoch-aligned windows."""
    ms = int(seconds * 1000)
    clock.set((clock.now_ms() // ms + 1) * ms + 20)


def spend_key(tenant_id: int) -> str:
    from django.utils import timezone

    return f"gw:{{t{tenant_id}}}:spend:t:{timezone.now():%Y-%m}"


def key_spend_key(tenant_id: int, key_id: int) -> str:
    from django.utils import timezone

    return f"gw:{{t{tenant_id}}}:spend:k:{key_id}:{timezone.now():%Y-%m}"


# --- formats ---


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (12, "12ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (59_941, "59.941s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (90_500, "1m30.5s"),
        (3_600_000, "1h0m0s"),
    ],
)
def test_durations_are_written_like_openai_writes_them(ms, text):
    assert limits.duration(ms) == text
    assert parse_duration(text) == ms


def test_admission_headers_describe_the_binding_limits(backend, clock):
    caller = make_caller(rpm=10, key_rpm=3, tpm=1000, key_tpm=500)

    async def scenario():
        first = await attempt(caller, prompt=100, max_output=50)
        second = await attempt(caller, prompt=100)
        return first, second

    first, second = run(scenario())
    # The key's limits bind: it allows fewer requests and tokens than its tenant.
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"] == "55s"  # the clock is 5 s into its minute
    assert first.headers["x-ratelimit-limit-tokens"] == "500"
    assert first.headers["x-ratelimit-remaining-tokens"] == "350"
    assert 0 < parse_duration(first.headers["x-ratelimit-reset-tokens"]) <= 60_000
    assert second.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-tokens"] == "250"
    # Only the limits that apply have headers.
    assert set(run(attempt(make_caller(rpm=5))).headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert set(run(attempt(make_caller(concurrent=5))).headers) == set()


def test_a_caller_without_limits_never_touches_redis(settings):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = dead
    settings.CACHES = redis_caches(dead)
    caller = make_caller()

    async def scenario():
        admission = await attempt(caller, prompt=10**6, max_output=10**6)
        await admission.settle(tokens=10, cost=Decimal("1"))
        await admission.release()
        return admission

    assert run(scenario()).headers == {}


# --- requests per minute ---

CHILD = """
import asyncio, sys, time
import django
django.setup()
from tests.test_limits import child_attempts
print(child_attempts(*map(int, sys.argv[1:])))
"""


def child_attempts(rpm_tenant: int, budget_tenant: int, start_at: int) -> str:
    """In a separate process: 10 admissions against a limit of 5 requests per minute, then 10
    against a budget that fits 5; reports how many were admitted of each."""
    from django.conf import settings

    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 60
    rpm_caller = make_caller(tenant_id=rpm_tenant, rpm=5, tpm=10**6)
    budget_caller = make_caller(tenant_id=budget_tenant)

    async def scenario():
        await asyncio.sleep(max(0.0, start_at / 1000 - time.time()))
        first = await asyncio.gather(*(attempt(rpm_caller, prompt=1) for _ in range(10)))
        for admission in admitted(first):
            await admission.settle(tokens=1, cost=Decimal(0))
        second = await asyncio.gather(
            *(attempt(budget_caller, worst="0.2", budget="1.00", mtd=from_db("0")) for _ in range(10))
        )
        return f"{len(admitted(first))} {len(admitted(second))}"

    return run(scenario())


def test_requests_per_minute_are_exact_across_processes():
    rpm_tenant, budget_tenant = fresh_id(), fresh_id()
    # Both children start counting at the same moment, early enough in a minute (Redis' TIME)
    # that no window ends before both are done.
    server_ms = int(redis.Redis.from_url(REDIS_URL).time()[0]) * 1000
    start_at = server_ms + 4000
    if 60_000 - start_at % 60_000 < 15_000:
        start_at += 60_000 - start_at % 60_000 + 1000
    start_at += int(time.time() * 1000) - server_ms  # in this machine's clock, which the children sleep on
    env = {**os.environ, "REDIS_URL": REDIS_URL, "DJANGO_SETTINGS_MODULE": "proxy_platform.settings"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(rpm_tenant), str(budget_tenant), str(start_at)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    counts = [tuple(map(int, output.split()[-2:])) for output in outputs]
    assert sum(rpm for rpm, _ in counts) == 5, counts
    assert sum(budget for _, budget in counts) == 5, counts
    # And this process, a third one, is refused too.
    error = run(attempt(make_caller(tenant_id=rpm_tenant, rpm=5)))
    assert isinstance(error, GatewayError)
    assert error.code == "rate_limit_requests"
    assert run(limits.spend_this_month(budget_tenant)) == Decimal("1")


def test_the_requests_reset_header_is_the_instant_the_window_ends(backend, clock):
    """The minute's window ends exactly when the headers say, and retry-after is never early."""
    caller = make_caller(rpm=2, key_rpm=5)
    clock.advance(ms=7_345)  # 12.345 s into the minute

    async def scenario():
        first = await attempt(caller)
        assert first.headers["x-ratelimit-reset-requests"] == "47.655s"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        await attempt(caller)
        refused = await attempt(caller)
        assert refused.code == "rate_limit_requests"
        assert refused.headers["retry-after"] == "48"  # 47.655 s rounded up
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.message == "Rate limit reached for requests per minute: this tenant allows 2. Retry in 48 s."
        clock.advance(ms=47_654)  # one millisecond before the minute ends: still refused
        late = await attempt(caller)
        assert late.code == "rate_limit_requests"
        assert late.headers["retry-after"] == "1"
        assert late.headers["x-ratelimit-reset-requests"] == "1ms"
        clock.advance(ms=1)
        fresh = await attempt(caller)
        assert isinstance(fresh, limits.Admission)
        assert fresh.headers["x-ratelimit-remaining-requests"] == "1"
        assert fresh.headers["x-ratelimit-reset-requests"] == "1m0s"

    run(scenario())


def test_a_key_limit_is_independent_of_the_tenant_limit(backend, clock):
    caller = make_caller(rpm=100, key_rpm=2)
    sibling = another_key(caller, requests_per_minute=2)
    unlimited_key = another_key(caller)

    async def scenario():
        own = [await attempt(caller) for _ in range(3)]
        other = [await attempt(sibling) for _ in range(3)]
        free = [await attempt(unlimited_key) for _ in range(3)]
        return own, other, free

    own, other, free = run(scenario())
    assert len(admitted(own)) == 2
    (error,) = refused(own)
    assert error.code == "rate_limit_requests"
    assert "this API key allows 2" in error.message
    assert "tenant" not in error.message
    assert error.headers["retry-after"] == "55"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(admitted(other)) == 2  # its own count, not the first key's
    assert len(admitted(free)) == 3


def test_a_tenant_limit_covers_all_of_its_keys(backend, clock):
    caller = make_caller(rpm=3, key_rpm=10)
    sibling = another_key(caller)

    async def scenario():
        return [await attempt(c) for c in (caller, sibling, caller, sibling)]

    results = run(scenario())
    assert len(admitted(results)) == 3
    (error,) = refused(results)
    assert "this tenant allows 3" in error.message
    assert "API key" not in error.message


def test_another_tenant_is_unaffected_while_one_is_limited(backend, clock):
    alice = make_caller(rpm=2, tpm=100, concurrent=1)
    bob = make_caller(rpm=2, tpm=100, concurrent=1)

    async def scenario():
        held = await attempt(alice, prompt=50)
        alice_results = [await attempt(alice, prompt=10)]  # refused: takes no request of the minute
        await held.release()
        alice_results += [await attempt(alice, prompt=10), await attempt(alice, prompt=10)]
        bob_first = await attempt(bob, prompt=100)
        await bob_first.settle(tokens=100, cost=Decimal(0))
        return alice_results, bob_first

    alice_results, bob_first = run(scenario())
    assert [e.code for e in refused(alice_results)] == ["concurrency_limit", "rate_limit_requests"]
    assert len(admitted(alice_results)) == 1
    assert isinstance(bob_first, limits.Admission)
    assert bob_first.headers["x-ratelimit-remaining-tokens"] == "0"


# --- tokens per minute ---


def test_tokens_are_refused_with_a_retry_after_that_tells_the_truth(settings, backend, clock):
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 2
    caller = make_caller(tpm=100)

    async def scenario():
        at_window_start(clock, 2)
        clock.advance(ms=480)  # 0.5 s into the window
        full = await attempt(caller, prompt=60, max_output=40)
        assert isinstance(full, limits.Admission)
        assert full.headers["x-ratelimit-remaining-tokens"] == "0"
        error = await attempt(caller, prompt=1)
        assert isinstance(error, GatewayError)
        assert error.status == 429
        assert error.code == "rate_limit_tokens"
        assert "this tenant allows 100, 100 are used" in error.message
        assert error.headers["retry-after"] == "2"  # 1.5 s rounded up: waiting that long is enough
        assert error.headers["x-ratelimit-reset-tokens"] == "1.5s"  # the window's end, exactly
        clock.advance(ms=1499)
        still = await attempt(caller, prompt=1)
        assert isinstance(still, GatewayError), "admitted before the reset the headers announced"
        assert still.headers["retry-after"] == "1"
        clock.advance(ms=1)
        later = await attempt(caller, prompt=1)
        assert isinstance(later, limits.Admission), later
        assert later.headers["x-ratelimit-remaining-tokens"] == "99"

    run(scenario())


def test_settlement_corrects_the_token_count_both_ways(settings, backend, clock):
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 5
    caller = make_caller(tpm=1000, key_tpm=10_000)

    async def scenario():
        at_window_start(clock, 5)
        a = await attempt(caller, prompt=100, max_output=100)
        assert a.headers["x-ratelimit-remaining-tokens"] == "800"
        await a.settle(tokens=50, cost=Decimal(0))  # used less than reserved
        await a.settle(tokens=900, cost=Decimal(0))  # a second settlement is a no-op
        b = await attempt(caller, prompt=10)  # no max_tokens: only the prompt is reserved
        assert b.headers["x-ratelimit-remaining-tokens"] == str(1000 - 50 - 10)
        await b.settle(tokens=310, cost=Decimal(0))  # used more than reserved
        c = await attempt(caller, prompt=1)
        assert c.headers["x-ratelimit-remaining-tokens"] == str(1000 - 50 - 310 - 1)
        await c.release()  # nothing billable: its reservation is given back
        d = await attempt(caller, prompt=0, max_output=640)
        assert d.headers["x-ratelimit-remaining-tokens"] == "0"
        assert (await attempt(caller, prompt=1)).code == "rate_limit_tokens"

    run(scenario())


def test_an_overrun_settled_after_its_window_counts_in_the_current_one(settings, backend, clock):
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 2
    caller = make_caller(tpm=1000)

    async def scenario():
        at_window_start(clock, 2)
        early = await attempt(caller, prompt=100)
        short = await attempt(caller, prompt=100)
        at_window_start(clock, 2)
        await early.settle(tokens=400, cost=Decimal(0))  # 300 more than reserved, now
        await short.settle(tokens=10, cost=Decimal(0))  # the old window's underrun is gone with it
        probe = await attempt(caller, prompt=1)
        assert probe.headers["x-ratelimit-remaining-tokens"] == str(1000 - 300 - 1)

    run(scenario())


def test_a_request_larger_than_the_whole_token_limit_is_refused_without_false_hope(backend):
    caller = make_caller(tpm=10_000, key_tpm=500)
    error = run(attempt(caller, prompt=300, max_output=300))
    assert error.status == 429
    assert error.code == "rate_limit_tokens"
    assert "this API key allows 500 per minute" in error.message
    assert "retry-after" not in error.headers  # no window will ever hold it
    # Nothing was reserved by the refusal.
    assert run(attempt(caller, prompt=500)).headers["x-ratelimit-remaining-tokens"] == "0"


# --- concurrency ---


def test_concurrent_requests_are_limited_and_released(backend):
    caller = make_caller(concurrent=2)

    async def scenario():
        a, b = await attempt(caller), await attempt(caller)
        third = await attempt(caller)
        assert third.status == 429
        assert third.code == "concurrency_limit"
        assert "this tenant allows 2 in flight" in third.message
        assert third.headers["retry-after"] == "1"
        await a.release()
        c = await attempt(caller)
        assert isinstance(c, limits.Admission)
        await b.settle(tokens=10, cost=Decimal(0))
        d = await attempt(caller)
        assert isinstance(d, limits.Admission)
        await a.release()  # idempotent: does not free someone else's slot
        await b.settle(tokens=10, cost=Decimal(0))
        assert (await attempt(caller)).code == "concurrency_limit"
        await asyncio.gather(c.release(), d.release())
        assert len(admitted(await asyncio.gather(*(attempt(caller) for _ in range(10))))) == 2

    run(scenario())


def test_a_key_concurrency_limit_leaves_the_other_keys_alone(backend):
    caller = make_caller(concurrent=3, key_concurrent=1)
    sibling = another_key(caller)

    async def scenario():
        held = await attempt(caller)
        error = await attempt(caller)
        assert error.code == "concurrency_limit"
        assert "this API key allows 1 in flight" in error.message
        assert isinstance(await attempt(sibling), limits.Admission)
        assert isinstance(await attempt(sibling), limits.Admission)
        assert "this tenant allows 3 in flight" in (await attempt(sibling)).message
        await held.settle(tokens=1, cost=Decimal(0))

    run(scenario())


def test_the_slot_of_a_crashed_process_comes_back_after_the_horizon(settings, backend, clock):
    settings.GATEWAY_CONCURRENCY_HORIZON_SECONDS = 900
    caller = make_caller(concurrent=1)

    async def scenario():
        await attempt(caller)  # never settled: its process died
        assert (await attempt(caller)).code == "concurrency_limit"
        clock.advance(900)
        assert (await attempt(caller)).code == "concurrency_limit"  # at the horizon, still held
        clock.advance(ms=1)
        assert isinstance(await attempt(caller), limits.Admission)

    run(scenario())


def test_a_cancelled_settlement_still_frees_the_slot(backend):
    caller = make_caller(concurrent=1)

    async def scenario():
        admission = await attempt(caller)
        task = asyncio.ensure_future(admission.settle(tokens=1, cost=Decimal(0)))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0.2)
        assert isinstance(await attempt(caller), limits.Admission)

    run(scenario())


# --- monthly budget ---


def test_concurrent_admissions_never_reserve_more_than_the_budget(backend, settings):
    # Fifty connections opened at once on a loaded 2-core machine can take longer than the
    # production timeout; this test is about the budget, not about Redis latency.
    settings.GATEWAY_LIMITS_REDIS_TIMEOUT = 5
    caller = make_caller()
    calls: list = []

    async def scenario():
        results = await asyncio.gather(
            *(attempt(caller, worst="0.2", budget="1.00", mtd=from_db("0", calls)) for _ in range(50))
        )
        return results, await limits.spend_this_month(caller.tenant.id)

    results, spend = run(scenario())
    assert len(admitted(results)) == 5
    errors = refused(results, status=402)
    assert len(errors) == 45
    assert {e.code for e in errors} == {"budget_exhausted"}
    assert "monthly budget of 1.00 USD is exhausted" in errors[0].message
    assert spend == Decimal("1.00")
    assert len(calls) == 1  # the database was asked once for 50 concurrent admissions
    if backend == "redis":
        # The counter is an integer of 1e-12 USD.
        assert redis.Redis.from_url(REDIS_URL).get(spend_key(caller.tenant.id)) == b"1000000000000"


def test_settling_below_the_reservation_frees_the_rest(backend):
    caller = make_caller()

    async def scenario():
        first = admitted(await asyncio.gather(*(attempt(caller, worst="0.2", budget="1") for _ in range(6))))
        assert len(first) == 5
        for admission in first[:3]:
            await admission.settle(tokens=100, cost=Decimal("0.000123456789"))
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("0.400370370367")
        second = await asyncio.gather(*(attempt(caller, worst="0.2", budget="1") for _ in range(4)))
        assert len(admitted(second)) == 2
        await first[3].settle(tokens=100, cost=Decimal("0.25"))  # more than reserved: the truth counts
        await first[4].release()
        for admission in admitted(second):
            await admission.release()
        return await limits.spend_this_month(caller.tenant.id)

    assert run(scenario()) == Decimal("0.000370370367") + Decimal("0.25")


def test_the_counter_starts_from_the_database_and_is_initialised_once(backend):
    caller = make_caller()

    async def scenario():
        assert await limits.spend_this_month(caller.tenant.id) is None
        over = await attempt(caller, worst="0.2", budget="1", mtd=from_db("0.9"))
        fits = await attempt(caller, worst="0.1", budget="1", mtd=from_db("0.9"))
        # Another process (or a later call) brings another total: the first one stays.
        again = await attempt(caller, worst="0", budget="1", mtd=from_db("0"))
        return over, fits, again, await limits.spend_this_month(caller.tenant.id)

    over, fits, again, spend = run(scenario())
    assert over.code == "budget_exhausted"
    assert "This request may cost up to 0.2 USD; 0.1 USD remain." in over.message
    assert isinstance(fits, limits.Admission)
    assert again.code == "budget_exhausted"  # nothing left, even for a request of unknown cost
    assert spend == Decimal("1.0")
    # For alerts: a tenant with no counter yet is initialised on demand, or reported as unknown.
    quiet = fresh_id()
    assert run(limits.spend_this_month(quiet)) is None
    assert run(limits.spend_this_month(quiet, month_to_date=from_db("2.5"))) == Decimal("2.5")


def test_budgets_beyond_double_precision_are_exact(backend):
    """2e16 units is past 2**53, where a float (or a Lua number) can no longer count by one."""
    caller = make_caller()

    async def scenario():
        mtd = from_db("19999.999999999998")
        one = await attempt(caller, worst="0.000000000001", budget="20000", mtd=mtd)
        two = await attempt(caller, worst="0.000000000001", budget="20000", mtd=mtd)
        three = await attempt(caller, worst="0.000000000001", budget="20000", mtd=mtd)
        return one, two, three, await limits.spend_this_month(caller.tenant.id)

    one, two, three, spend = run(scenario())
    assert isinstance(one, limits.Admission)
    assert isinstance(two, limits.Admission)
    assert three.code == "budget_exhausted"
    assert spend == Decimal("20000")


def test_reconcile_resets_from_the_database_and_keeps_requests_in_flight(settings, backend):
    caller = make_caller()

    async def scenario():
        a = await attempt(caller, worst="0.2", budget="10", mtd=from_db("3"))
        b = await attempt(caller, worst="0.3", budget="10")
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("3.5")
        # The database knows 1.5 more than the counter did (say, a request settled elsewhere lost).
        assert await limits.reconcile(caller.tenant.id, Decimal("4.5")) == Decimal("5.0")
        await a.settle(tokens=1, cost=Decimal("0.05"))
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("4.85")
        await b.release()
        return await limits.spend_this_month(caller.tenant.id)

    assert run(scenario()) == Decimal("4.55")


def test_reconcile_drops_the_reservations_of_dead_processes(settings, backend, clock):
    settings.GATEWAY_CONCURRENCY_HORIZON_SECONDS = 900
    caller = make_caller()

    async def scenario():
        lost = await attempt(caller, worst="0.4", budget="1", mtd=from_db("0.5"))
        assert isinstance(lost, limits.Admission)  # its process dies: never settled
        assert (await attempt(caller, worst="0.4", budget="1")).code == "budget_exhausted"
        clock.advance(901)
        assert await limits.reconcile(caller.tenant.id, Decimal("0.5")) == Decimal("0.5")
        assert isinstance(await attempt(caller, worst="0.4", budget="1"), limits.Admission)
        # Had it lived after all, its settlement adds its whole cost: the reservation is gone.
        await lost.settle(tokens=1, cost=Decimal("0.01"))
        return await limits.spend_this_month(caller.tenant.id)

    assert run(scenario()) == Decimal("0.91")


def test_reconcile_from_synchronous_code(backend):
    caller = make_caller()
    run(attempt(caller, worst="0.5", budget="2", mtd=from_db("0")))
    assert limits.reconcile_sync(caller.tenant.id, Decimal("1.25")) == Decimal("1.75")
    assert run(limits.spend_this_month(caller.tenant.id)) == Decimal("1.75")


# --- monthly budget of a key ---


def test_a_key_budget_refuses_while_the_tenants_budget_has_room(backend, settings):
    settings.GATEWAY_LIMITS_REDIS_TIMEOUT = 5  # see test_concurrent_admissions_never_reserve_more_than_the_budget
    caller = make_caller(key_budget="1.00")
    sibling = another_key(caller)  # no budget of its own
    budgeted_sibling = another_key(caller, monthly_budget=Decimal("0.40"))
    calls: list = []

    async def scenario():
        results = await asyncio.gather(
            *(
                attempt(caller, worst="0.2", budget="100", key_mtd=from_db("0", calls), mtd=from_db("3"))
                for _ in range(50)
            )
        )
        tenant_spend = await limits.spend_this_month(caller.tenant.id)
        others = [await attempt(sibling, worst="0.2", budget="100") for _ in range(3)]
        own = [await attempt(budgeted_sibling, worst="0.2", budget="100") for _ in range(3)]
        spends = (
            tenant_spend,
            await limits.key_spend_this_month(caller.tenant.id, caller.key.id),
            await limits.key_spend_this_month(sibling.tenant.id, sibling.key.id),
            await limits.key_spend_this_month(budgeted_sibling.tenant.id, budgeted_sibling.key.id),
        )
        return results, others, own, spends

    results, others, own, (tenant_spend, key_spend, sibling_spend, budgeted_spend) = run(scenario())
    assert len(admitted(results)) == 5
    errors = refused(results, status=402)
    assert len(errors) == 45
    assert {e.code for e in errors} == {"budget_exhausted"}
    assert errors[0].message == (
        "This API key's monthly budget of 1.00 USD is exhausted. Raise the budget or wait for next month."
    )
    assert len(calls) == 1  # the key's records were summed once for 50 concurrent admissions
    assert key_spend == Decimal("1.00")
    # Only the five admitted requests were reserved on the tenant: a refusal reserves nothing.
    assert tenant_spend == Decimal("3") + Decimal("1.00")
    # The tenant's other keys: one without a budget is unaffected, one with its own has its own.
    assert len(admitted(others)) == 3
    assert sibling_spend is None  # no budget, no counter
    assert len(admitted(own)) == 2
    assert "0.40 USD" in refused(own, status=402)[0].message
    assert budgeted_spend == Decimal("0.4")
    assert run(limits.spend_this_month(caller.tenant.id)) == Decimal("4.00") + 3 * Decimal("0.2") + 2 * Decimal("0.2")
    if backend == "redis":
        assert redis.Redis.from_url(REDIS_URL).get(key_spend_key(caller.tenant.id, caller.key.id)) == b"1000000000000"


def test_the_tenants_budget_refuses_while_the_key_budget_has_room(backend):
    caller = make_caller(key_budget="100")

    async def scenario():
        results = await asyncio.gather(*(attempt(caller, worst="0.2", budget="1.00") for _ in range(8)))
        return (
            results,
            await limits.spend_this_month(caller.tenant.id),
            await limits.key_spend_this_month(caller.tenant.id, caller.key.id),
        )

    results, tenant_spend, key_spend = run(scenario())
    assert len(admitted(results)) == 5
    errors = refused(results, status=402)
    assert errors[0].message.startswith("This tenant's monthly budget of 1.00 USD is exhausted.")
    assert "API key" not in errors[0].message
    assert tenant_spend == Decimal("1.00")
    assert key_spend == Decimal("1.00")  # the refused three reserved nothing on the key either


def test_a_key_budget_works_without_a_tenant_budget_and_both_can_refuse_at_once(backend):
    caller = make_caller(key_budget="0.5")

    async def scenario():
        alone = [await attempt(caller, worst="0.2") for _ in range(3)]
        tenant_counter = await limits.spend_this_month(caller.tenant.id)
        both = await attempt(caller, worst="0.2", budget="0.3", mtd=from_db("0.25"))
        return alone, tenant_counter, both

    alone, tenant_counter, both = run(scenario())
    assert len(admitted(alone)) == 2
    error = refused(alone, status=402)[0]
    assert error.message == (
        "This API key's monthly budget of 0.5 USD is exhausted. This request may cost up to 0.2 USD; "
        "0.1 USD remain. Raise the budget or wait for next month."
    )
    assert tenant_counter is None  # the tenant has no budget: nothing counted for it
    assert both.message == (
        "This tenant's monthly budget of 0.3 USD and this API key's monthly budget of 0.5 USD are exhausted. "
        "This request may cost up to 0.2 USD; 0.05 USD remain. Raise the budget or wait for next month."
    )


def test_settlement_replaces_both_reservations_by_the_actual_cost(backend):
    caller = make_caller(key_budget="1")

    async def scenario():
        first = admitted(
            await asyncio.gather(*(attempt(caller, worst="0.2", budget="10", mtd=from_db("2")) for _ in range(6)))
        )
        assert len(first) == 5
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("3.0")
        for admission in first[:3]:
            await admission.settle(tokens=100, cost=Decimal("0.000123456789"))
        await first[3].settle(tokens=100, cost=Decimal("0.25"))  # more than reserved: the truth counts
        await first[3].settle(tokens=100, cost=Decimal("9"))  # a second settlement is a no-op
        await first[4].release()  # nothing billable: its reservation is given back on both
        again = await attempt(caller, worst="0.2", budget="10")
        return (
            again,
            await limits.spend_this_month(caller.tenant.id),
            await limits.key_spend_this_month(caller.tenant.id, caller.key.id),
        )

    again, tenant_spend, key_spend = run(scenario())
    actual = Decimal("0.000370370367") + Decimal("0.25")
    assert isinstance(again, limits.Admission)  # the key has room again
    assert key_spend == actual + Decimal("0.2")
    assert tenant_spend == Decimal("2") + actual + Decimal("0.2")


def test_a_key_counter_starts_from_the_keys_own_month_in_the_database(backend):
    caller = make_caller(key_budget="1")
    tenant_calls: list = []
    key_calls: list = []

    async def scenario():
        assert await limits.key_spend_this_month(caller.tenant.id, caller.key.id) is None
        # The tenant spent 50 this month, 0.9 of it through this key.
        over = await attempt(
            caller, worst="0.2", budget="100", mtd=from_db("50", tenant_calls), key_mtd=from_db("0.9", key_calls)
        )
        fits = await attempt(caller, worst="0.1", budget="100", key_mtd=from_db("0.9", key_calls))
        # Another process (or a later call) brings another total: the first one stays (SET NX).
        again = await attempt(caller, worst="0", budget="100", key_mtd=from_db("0", key_calls))
        return over, fits, again, await limits.key_spend_this_month(caller.tenant.id, caller.key.id)

    over, fits, again, key_spend = run(scenario())
    assert over.code == "budget_exhausted"
    assert "This API key's monthly budget of 1 USD" in over.message
    assert "0.1 USD remain" in over.message
    assert isinstance(fits, limits.Admission)
    assert again.code == "budget_exhausted"
    assert key_spend == Decimal("1.0")
    assert (len(tenant_calls), len(key_calls)) == (1, 1)  # each counter was loaded once, both at the first request
    assert run(limits.spend_this_month(caller.tenant.id)) == Decimal("50.1")
    quiet = fresh_id()
    assert run(limits.key_spend_this_month(fresh_id(), quiet, month_to_date=from_db("2.5"))) == Decimal("2.5")


def test_a_key_budget_beyond_double_precision_is_exact(backend):
    caller = make_caller(key_budget="20000")

    async def scenario():
        mtd = from_db("19999.999999999998")
        results = [await attempt(caller, worst="0.000000000001", key_mtd=mtd) for _ in range(3)]
        return results, await limits.key_spend_this_month(caller.tenant.id, caller.key.id)

    (one, two, three), spend = run(scenario())
    assert isinstance(one, limits.Admission)
    assert isinstance(two, limits.Admission)
    assert three.code == "budget_exhausted"
    assert spend == Decimal("20000")


def test_reconcile_of_a_key_counter_keeps_its_requests_in_flight_and_leaves_the_tenants(settings, backend, clock):
    settings.GATEWAY_CONCURRENCY_HORIZON_SECONDS = 900
    caller = make_caller(key_budget="10")

    async def scenario():
        lost = await attempt(caller, worst="0.4", budget="100", mtd=from_db("7"), key_mtd=from_db("3"))
        assert isinstance(lost, limits.Admission)
        clock.advance(901)  # `lost` is now older than the horizon: its process died
        live = await attempt(caller, worst="0.3", budget="100")
        assert await limits.key_spend_this_month(caller.tenant.id, caller.key.id) == Decimal("3.7")
        # The database knows 1.5 more than the counter did; the dead hold is dropped, the live one kept.
        assert await limits.reconcile_key(caller.tenant.id, caller.key.id, Decimal("4.5")) == Decimal("4.8")
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("7.7")  # untouched
        await live.settle(tokens=1, cost=Decimal("0.05"))
        return await limits.key_spend_this_month(caller.tenant.id, caller.key.id)

    assert run(scenario()) == Decimal("4.55")
    assert limits.reconcile_key_sync(caller.tenant.id, caller.key.id, Decimal("1.25")) == Decimal("1.25")
    assert run(limits.key_spend_this_month(caller.tenant.id, caller.key.id)) == Decimal("1.25")


# --- Redis outage ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpareRedis:
    """A redis-server of our own, to stop and start under the gateway's feet."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--save", ""]
            + ["--appendonly", "no", "--daemonize", "yes", "--dir", str(self.directory)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], check=False, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the spare redis-server did not stop")


@pytest.fixture
def spare_redis(settings, tmp_path):
    server = SpareRedis(tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    settings.CACHES = redis_caches(server.url)
    try:
        yield server
    finally:
        server.stop()


def test_a_redis_outage_fails_closed_and_recovery_needs_no_restart(spare_redis):
    limited = make_caller(rpm=100, tpm=10_000, concurrent=5)
    rpm_only = make_caller(rpm=100)
    budget_only = make_caller()
    key_budget_only = make_caller(key_budget="5")
    unlimited = make_caller()

    async def scenario():
        before = await attempt(limited, prompt=10)
        assert isinstance(before, limits.Admission)
        spare_redis.stop()
        started = time.monotonic()
        outcomes = [
            await attempt(limited, prompt=10),
            await attempt(rpm_only),
            await attempt(budget_only, worst="0.1", budget="5"),
            await attempt(key_budget_only, worst="0.1"),
        ]
        assert time.monotonic() - started < 5  # short timeouts, no retry storm
        for error in outcomes:
            assert isinstance(error, GatewayError)
            assert (error.status, error.code) == (503, "limits_unavailable")
            assert "unavailable" in error.message
        assert isinstance(await attempt(unlimited), limits.Admission)
        await before.settle(tokens=10, cost=Decimal(0))  # logged, never raised
        spare_redis.start()  # same port, empty data: the same event loop and client carry on
        after = [
            await attempt(limited, prompt=10),
            await attempt(rpm_only),
            await attempt(budget_only, worst="0.1", budget="5", mtd=from_db("1")),
            await attempt(key_budget_only, worst="0.1", key_mtd=from_db("2")),
        ]
        assert all(isinstance(a, limits.Admission) for a in after), after
        assert await limits.spend_this_month(budget_only.tenant.id) == Decimal("1.1")
        assert await limits.key_spend_this_month(key_budget_only.tenant.id, key_budget_only.key.id) == Decimal("2.1")

    run(scenario())


# --- one round trip each way ---


class CommandCount:
    """Counts the commands this process sends to Redis (a spy around redis-py, which still talks
    to the real server)."""

    def __init__(self, monkeypatch) -> None:
        from redis.asyncio import Redis as AsyncRedis

        self.commands: list[str] = []
        original_async, original_sync = AsyncRedis.execute_command, redis.Redis.execute_command

        async def counted_async(client, *args, **options):
            self.commands.append(str(args[0]))
            return await original_async(client, *args, **options)

        def counted_sync(client, *args, **options):  # Django's cache (django-ratelimit) is synchronous
            self.commands.append(str(args[0]))
            return original_sync(client, *args, **options)

        monkeypatch.setattr(AsyncRedis, "execute_command", counted_async)
        monkeypatch.setattr(redis.Redis, "execute_command", counted_sync)

    def take(self) -> list[str]:
        taken, self.commands = self.commands, []
        return taken


def test_every_limit_and_budget_is_admitted_in_one_round_trip_and_settled_in_one(monkeypatch):
    caller = make_caller(rpm=100, tpm=10_000, concurrent=5, key_rpm=50, key_tpm=5000, key_concurrent=3, key_budget="5")
    count = CommandCount(monkeypatch)

    async def scenario():
        warm = await attempt(caller, prompt=10, worst="0.01", budget="10")  # loads the counters and scripts
        await warm.settle(tokens=10, cost=Decimal("0.001"))
        count.take()
        admission = await attempt(caller, prompt=10, worst="0.01", budget="10")
        admitted_with = count.take()
        await admission.settle(tokens=12, cost=Decimal("0.002"))
        settled_with = count.take()
        refusal = await attempt(make_caller(rpm=0), prompt=1)
        refused_with = count.take()
        return admission, admitted_with, settled_with, refusal, refused_with

    admission, admitted_with, settled_with, refusal, refused_with = run(scenario())
    assert isinstance(admission, limits.Admission)
    assert set(admission.headers) >= {"x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"}
    assert admitted_with == ["EVALSHA"]
    assert settled_with == ["EVALSHA"]
    assert refusal.code == "rate_limit_requests"
    assert refused_with == ["EVALSHA"]


def test_requests_per_minute_alone_need_no_settlement(backend, clock):
    caller = make_caller(rpm=1)

    async def scenario():
        first = await attempt(caller)
        await first.release()  # gives nothing back: the request was made
        return first, await attempt(caller)

    first, second = run(scenario())
    assert first._ticket is None
    assert second.code == "rate_limit_requests"


# --- freeing what a dead request holds (the request reconciler) ---


def test_release_request_frees_slots_and_holds_and_is_idempotent(backend, clock):
    caller = make_caller(concurrent=1, key_concurrent=1, key_budget="1")
    sibling = another_key(caller)
    month = limits.backend.month()

    async def scenario():
        dead = await attempt(caller, worst="0.4", budget="1", mtd=from_db("0.1"), key_mtd=from_db("0.2"),
                             request_id="dead-1")  # fmt: skip
        assert isinstance(dead, limits.Admission)  # its process is killed: never settled
        assert (await attempt(sibling)).code == "concurrency_limit"  # the tenant's slot is taken
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("0.5")
        assert await limits.key_spend_this_month(caller.tenant.id, caller.key.id) == Decimal("0.6")
        for _ in range(2):  # twice: the second time nothing is held, and nothing changes
            await limits.release_request(tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="dead-1",
                                         month=month)  # fmt: skip
            assert await limits.spend_this_month(caller.tenant.id) == Decimal("0.1")
            assert await limits.key_spend_this_month(caller.tenant.id, caller.key.id) == Decimal("0.2")
        usage = await limits.live_usage(caller.tenant.id)
        assert usage.in_flight == 0
        alive = await attempt(caller, worst="0.4", budget="1")
        assert isinstance(alive, limits.Admission)  # both slots are free again
        # Releasing an unknown request, or one of another month, touches nothing.
        await limits.release_request(tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="never",
                                     month=month)  # fmt: skip
        await limits.release_request(tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="dead-1",
                                     month="1999-01")  # fmt: skip
        await limits.release_request(tenant_id=fresh_id(), key_id=fresh_id(), request_id="x", month=month)
        assert await limits.spend_this_month(caller.tenant.id) == Decimal("0.5")
        # The dead request settling after all (it was not dead) adds its whole cost, once.
        await dead.settle(tokens=1, cost=Decimal("0.05"))
        await alive.release()
        tenant_spend = await limits.spend_this_month(caller.tenant.id)
        return tenant_spend, await limits.key_spend_this_month(caller.tenant.id, caller.key.id)

    assert run(scenario()) == (Decimal("0.15"), Decimal("0.25"))


def test_release_request_sync_frees_the_slot_and_gives_the_hold_back(backend, clock):
    caller = make_caller(concurrent=1)
    run(attempt(caller, worst="0.3", budget="1", request_id="sync-1"))
    assert limits.live_usage_sync(caller.tenant.id).in_flight == 1
    limits.release_request_sync(
        tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="sync-1", month=limits.backend.month()
    )
    usage = limits.live_usage_sync(caller.tenant.id)
    assert (usage.in_flight, usage.month_spend) == (0, Decimal("0"))


def test_the_redis_store_uses_redis_time_unless_a_clock_is_injected():
    caller = make_caller(rpm=5)
    server_seconds = redis.Redis.from_url(REDIS_URL).time()[0]
    admission = run(attempt(caller))
    left = parse_duration(admission.headers["x-ratelimit-reset-requests"])
    assert (
        abs((server_seconds * 1000 + left) % 60_000) < 2000
        or abs((server_seconds * 1000 + left) % 60_000 - 60_000) < 2000
    )
    with limits.use_clock(limits.ManualClock(MINUTE_START_MS + 59_000)):
        assert run(attempt(make_caller(rpm=5))).headers["x-ratelimit-reset-requests"] == "1s"


def test_release_request_gives_back_the_slots_and_holds_of_a_dead_request_once(backend):
    caller = make_caller(concurrent=1, key_concurrent=1, key_budget="5")
    month = spend_key(caller.tenant.id).rsplit(":", 1)[1]  # YYYY-MM

    async def scenario():
        await attempt(caller, worst="0.4", budget="10", request_id="dead")  # its process died
        survivor = another_key(caller)
        refused_meanwhile = await attempt(survivor, worst="0.1", budget="10")
        freed = await limits.release_request(
            tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="dead", month=month
        )
        again = await limits.release_request(
            tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="dead", month=month
        )
        spends = (
            await limits.spend_this_month(caller.tenant.id),
            await limits.key_spend_this_month(caller.tenant.id, caller.key.id),
        )
        after = await attempt(caller, worst="0.4", budget="10")
        return refused_meanwhile, freed, again, spends, after

    refused_meanwhile, freed, again, spends, after = run(scenario())
    assert refused_meanwhile.code == "concurrency_limit"  # the tenant's one slot was the dead request's
    assert (freed, again) == (4, 0)  # tenant and key slots, tenant and key holds; then nothing
    assert spends == (Decimal(0), Decimal(0))
    assert isinstance(after, limits.Admission)


def test_release_request_from_synchronous_code(backend):
    caller = make_caller(concurrent=1)
    month = spend_key(caller.tenant.id).rsplit(":", 1)[1]  # YYYY-MM
    run(attempt(caller, request_id="dead"))
    assert (
        limits.release_request_sync(tenant_id=caller.tenant.id, key_id=caller.key.id, request_id="dead", month=month)
        == 1
    )
    assert isinstance(run(attempt(caller)), limits.Admission)
