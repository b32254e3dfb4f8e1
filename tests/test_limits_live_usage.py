"""The admin's read-only look at a tenant's limit counters (gateway.limits.live_usage_sync),
on Redis and on the in-process store: what an admitted request holds shows, and settles."""

from decimal import Decimal

import pytest

from console import analytics
from gateway import limits
from tests.test_limits import REDIS_URL, attempt, make_caller, redis_caches, run


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings):
    settings.REDIS_URL = REDIS_URL if request.param == "redis" else ""
    settings.CACHES = redis_caches(REDIS_URL)
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 60
    limits._memory_store.clear()
    return request.param


async def _month_to_date() -> Decimal:
    return Decimal("1.5")


def test_live_usage_shows_what_admitted_requests_hold_and_writes_nothing(backend):
    caller = make_caller(rpm=100, tpm=10_000, concurrent=5)
    tenant_id = caller.tenant.id
    assert limits.live_usage_sync(tenant_id) == limits.LiveUsage(0, 60, 0, None, 0)

    async def admit_one(request_id: str):
        return await limits.admit(
            caller=caller,
            request_id=request_id,
            prompt_tokens=100,
            max_output_tokens=50,
            worst_case_cost=Decimal("0.01"),
            budget=Decimal("100"),
            month_to_date=_month_to_date,
        )

    admission = run(admit_one("live-1"))
    held = limits.live_usage_sync(tenant_id)
    assert (held.tokens_this_window, held.in_flight, held.requests_this_minute) == (150, 1, 1)
    assert held.month_spend == Decimal("1.51")  # the database's month to date plus the reservation
    assert limits.live_usage_sync(tenant_id) == held  # reading changes nothing

    run(admission.settle(tokens=120, cost=Decimal("0.002")))
    settled = limits.live_usage_sync(tenant_id)
    assert (settled.tokens_this_window, settled.in_flight, settled.month_spend) == (120, 0, Decimal("1.502"))
    assert settled.requests_this_minute == 1  # a request made stays made


def test_live_usage_counts_the_requests_of_the_current_minute(backend):
    caller = make_caller(rpm=3)
    with limits.use_clock(limits.ManualClock(1_800_000_000_000 + 30_000)) as clock:
        outcomes = [run(attempt(caller)) for _ in range(4)]
        assert [type(o).__name__ for o in outcomes] == ["Admission"] * 3 + ["GatewayError"]
        assert limits.live_usage_sync(caller.tenant.id).requests_this_minute == 3  # a refusal is not counted
        clock.advance(30)  # the next minute
        assert limits.live_usage_sync(caller.tenant.id).requests_this_minute == 0


def test_the_console_reads_the_counters_the_gateway_enforces():
    # The console sits above the gateway and imports its reader: no start-up hook to forget.
    assert analytics.live_usage_sync is limits.live_usage_sync
