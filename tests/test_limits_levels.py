"""Every level in one admission (issue 14 part 4): the key's project and the end user next to the
tenant and the key, the key's and the end user's daily budgets, on both stores (the contract
suite's `backend` fixture), with a ManualClock rather than sleeps.

The tests need no database: the project's and end user's spend from the database is a callable."""

import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis

from gateway import limits
from gateway.errors import GatewayError
from gateway.limits import Level
from gateway.registry import Caller, KeyView, ProjectView

from .test_limits import REDIS_URL, admitted, fresh_id, from_db, make_caller, redis_caches, refused, run

# 23:59:00 UTC of a day, in ms: the key's daily budget resets a minute later.
DAY_END_MS = int(datetime(2031, 3, 14, 23, 59, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(autouse=True)
def shared_redis(settings):
    settings.REDIS_URL = REDIS_URL
    settings.CACHES = redis_caches(REDIS_URL)
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = 60
    limits._memory_store.clear()


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings):
    if request.param == "memory":
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def clock():
    with limits.use_clock(limits.ManualClock(DAY_END_MS)) as manual:
        yield manual


def spend_since(amount: str, calls: list | None = None):
    async def load(since: datetime) -> Decimal:
        if calls is not None:
            calls.append(since)
        await asyncio.sleep(0.01)
        return Decimal(amount)

    return load


def project(caller: Caller, name="search", **fields) -> Level:
    return Level(kind="project", ident=fresh_id(), name=name, spend_since=spend_since("0"), **fields)


def end_user(user: str | None = None, **fields) -> Level:
    return Level(
        kind="end_user", ident=user or f"user-{random.getrandbits(32):x}", spend_since=spend_since("0"), **fields
    )


async def attempt_levels(caller, levels, *, worst=None, daily=None, day_spend=None, request_id=None, prompt=10):
    try:
        return await limits.admit(
            caller=caller,
            request_id=request_id or f"req-{random.getrandbits(64):x}",
            prompt_tokens=prompt,
            max_output_tokens=None,
            worst_case_cost=None if worst is None else Decimal(worst),
            budget=None,
            month_to_date=from_db("0"),
            key_daily_budget=None if daily is None else Decimal(daily),
            key_spend_since=day_spend or spend_since("0"),
            levels=levels,
        )
    except GatewayError as error:
        return error


def test_a_project_budget_refuses_by_name_while_a_sibling_project_is_served(backend, clock):
    caller = make_caller()
    search = project(caller, "search", monthly_budget=Decimal("1.00"))
    chat = project(caller, "chat", monthly_budget=Decimal("1.00"))

    async def scenario():
        first = await asyncio.gather(*(attempt_levels(caller, [search], worst="0.2") for _ in range(20)))
        sibling = await attempt_levels(caller, [chat], worst="0.2")
        return first, sibling

    first, sibling = run(scenario())
    assert len(admitted(first)) == 5
    errors = refused(first, status=402)
    assert {e.code for e in errors} == {"budget_exhausted"}
    assert {e.level for e in errors} == {"project"}
    assert errors[0].message.startswith('Project "search" monthly budget of 1.00 USD is exhausted.')
    assert "chat" not in errors[0].message
    assert "tenant" not in errors[0].message
    assert isinstance(sibling, limits.Admission)


def test_an_end_user_rate_limit_names_the_level_and_leaves_other_end_users_alone(backend, clock):
    caller = make_caller(rpm=100, key_rpm=100)
    alice, bob = end_user("alice", requests_per_minute=20), end_user("bob", requests_per_minute=20)

    async def scenario():
        alices = [await attempt_levels(caller, [alice]) for _ in range(21)]
        return alices, await attempt_levels(caller, [bob])

    alices, bobs = run(scenario())
    assert len(admitted(alices)) == 20
    (error,) = refused(alices, status=429)
    assert error.code == "rate_limit_requests"
    assert error.level == "end_user"
    assert "end user limit: 20 requests per minute" in error.message
    assert "100" not in error.message  # nobody else's figures
    assert isinstance(bobs, limits.Admission)
    # The binding limit's headers are the end user's: it has the least room left.
    assert alices[19].headers["x-ratelimit-limit-requests"] == "20"
    assert alices[19].headers["x-ratelimit-remaining-requests"] == "0"


def test_the_strictest_level_wins_and_a_refusal_reserves_nothing_anywhere(backend, clock):
    caller = make_caller(rpm=10, key_rpm=5)
    search = project(caller, requests_per_minute=2, max_concurrent=10)

    async def scenario():
        results = [await attempt_levels(caller, [search]) for _ in range(3)]
        # Without the project's limit (another key of the tenant): the refusal took nothing of
        # the tenant's or the key's minute.
        alone = [await attempt_levels(caller, []) for _ in range(3)]
        return results, alone

    results, alone = run(scenario())
    assert len(admitted(results)) == 2
    (error,) = refused(results)
    assert error.level == "project"
    assert 'project "search" limit: 2 requests per minute' in error.message
    assert len(admitted(alone)) == 3  # key: 5 a minute, 2 used before


def test_project_and_end_user_concurrency_and_tokens_name_their_level(backend, clock):
    caller = make_caller()
    search = project(caller, max_concurrent=1)
    user = end_user(tokens_per_minute=100)

    async def scenario():
        first = await attempt_levels(caller, [search])
        busy = await attempt_levels(caller, [search])
        await first.settle(tokens=10, cost=Decimal(0))
        again = await attempt_levels(caller, [search])
        await again.release()
        tokens = [await attempt_levels(caller, [user], prompt=40) for _ in range(3)]
        too_big = await attempt_levels(caller, [user], prompt=101)
        return busy, tokens, too_big

    busy, tokens, too_big = run(scenario())
    assert (busy.code, busy.level) == ("concurrency_limit", "project")
    assert 'project "search" limit: 1 in flight' in busy.message
    assert len(admitted(tokens)) == 2
    (error,) = refused(tokens)
    assert (error.code, error.level) == ("rate_limit_tokens", "end_user")
    assert "end user limit: 100 tokens per minute, 80 are used in this window" in error.message
    assert (too_big.code, too_big.level) == ("rate_limit_tokens", "end_user")
    assert "retry-after" not in too_big.headers


def test_settlement_replaces_every_reservation_by_the_actual_cost(backend, clock):
    caller = make_caller(key_budget="10")
    search = project(caller, monthly_budget=Decimal("10"))
    user = end_user(monthly_budget=Decimal("10"), daily_budget=Decimal("5"))
    month, day = "2031-03", "2031-03-14"

    async def scenario():
        admission = await limits.admit(
            caller=caller,
            request_id="settled-1",
            prompt_tokens=1,
            max_output_tokens=None,
            worst_case_cost=Decimal("0.4"),
            budget=Decimal("10"),
            month_to_date=from_db("1"),
            key_budget=caller.key.monthly_budget,
            key_month_to_date=from_db("2"),
            key_daily_budget=Decimal("3"),
            key_spend_since=spend_since("0.5"),
            levels=[search, user],
        )
        store = limits._store()
        keys = [
            limits.keys.budget_keys(caller.tenant.id, "tenant", None, month),
            limits.keys.budget_keys(caller.tenant.id, "key", caller.key.id, month),
            limits.keys.budget_keys(caller.tenant.id, "key", caller.key.id, day),
            limits.keys.budget_keys(caller.tenant.id, "project", search.ident, month),
            limits.keys.budget_keys(caller.tenant.id, "end_user", user.ident, month),
            limits.keys.budget_keys(caller.tenant.id, "end_user", user.ident, day),
        ]
        held = [await store.spend(k.spend) for k in keys]
        await admission.settle(tokens=5, cost=Decimal("0.01"))
        await admission.settle(tokens=5, cost=Decimal("0.01"))  # once only
        return held, [await store.spend(k.spend) for k in keys]

    held, settled = run(scenario())
    units = limits.to_units
    start = [Decimal("1"), Decimal("2"), Decimal("0.5"), Decimal(0), Decimal(0), Decimal(0)]
    assert held == [units(s + Decimal("0.4")) for s in start]
    assert settled == [units(s + Decimal("0.01")) for s in start]


def test_a_key_daily_budget_resets_at_midnight_utc(backend, clock):
    caller = make_caller()
    calls: list = []

    async def scenario():
        today = [await attempt_levels(caller, [], worst="0.3", daily="1", day_spend=spend_since("0.1", calls))
                 for _ in range(4)]  # fmt: skip
        clock.advance(59)  # 23:59:59: still today
        late = await attempt_levels(caller, [], worst="0.3", daily="1", day_spend=spend_since("0.1", calls))
        clock.advance(1.001)  # 00:00:00.001 UTC: a new day, a new counter seeded from the database
        tomorrow = await attempt_levels(caller, [], worst="0.3", daily="1", day_spend=spend_since("0", calls))
        return today, late, tomorrow

    today, late, tomorrow = run(scenario())
    assert len(admitted(today)) == 3  # 0.1 spent, then 3 x 0.3
    (error,) = refused(today, status=402)
    assert (error.code, error.level) == ("budget_exhausted", "key")
    assert "This API key's daily budget of 1 USD is exhausted" in error.message
    assert "tomorrow (00:00 UTC)" in error.message
    assert late.code == "budget_exhausted"
    assert isinstance(tomorrow, limits.Admission)
    # Seeded once per day, each time from the start of the day on the limits' clock.
    assert calls == [datetime(2031, 3, 14, tzinfo=UTC), datetime(2031, 3, 15, tzinfo=UTC)]


def test_an_end_user_daily_budget_resets_at_midnight_and_its_monthly_one_does_not(backend, clock):
    caller = make_caller()
    user = end_user(daily_budget=Decimal("0.5"), monthly_budget=Decimal("0.7"))

    async def scenario():
        today = [await attempt_levels(caller, [user], worst="0.2") for _ in range(3)]
        clock.advance(61)
        tomorrow = [await attempt_levels(caller, [user], worst="0.2") for _ in range(3)]
        return today, tomorrow

    today, tomorrow = run(scenario())
    assert len(admitted(today)) == 2
    assert "End user daily budget of 0.5 USD is exhausted" in refused(today, status=402)[0].message
    # The month holds 0.4; 0.7 lets one more through, whatever the new day allows.
    assert len(admitted(tomorrow)) == 1
    assert "End user monthly budget of 0.7 USD is exhausted" in refused(tomorrow, status=402)[0].message


def test_release_request_frees_the_project_and_end_user_holds_and_slots(backend, clock):
    caller = make_caller()
    search = project(caller, max_concurrent=1, monthly_budget=Decimal("1"))
    user = end_user(max_concurrent=1, daily_budget=Decimal("1"))

    async def scenario():
        dead = await attempt_levels(caller, [search, user], worst="0.4", request_id="dead-9")
        assert isinstance(dead, limits.Admission)
        assert (await attempt_levels(caller, [search])).code == "concurrency_limit"
        freed = await limits.release_request(
            tenant_id=caller.tenant.id,
            key_id=caller.key.id,
            request_id="dead-9",
            month="2031-03",
            day="2031-03-14",
            project_id=search.ident,
            end_user=user.ident,
        )
        store = limits._store()
        spends = [
            await store.spend(limits.keys.budget_keys(caller.tenant.id, "project", search.ident, "2031-03").spend),
            await store.spend(limits.keys.budget_keys(caller.tenant.id, "end_user", user.ident, "2031-03-14").spend),
        ]
        again = await attempt_levels(caller, [search, user], worst="0.4")
        return freed, spends, again

    freed, spends, again = run(scenario())
    assert freed == 4  # two slots, two holds
    assert spends == [0, 0]
    assert isinstance(again, limits.Admission)


def test_every_key_of_one_admission_hashes_to_the_tenants_slot(monkeypatch):
    """Redis Cluster (issue 15): one script's keys must share a slot, so each carries {t<id>}."""
    caller = make_caller(rpm=5, tpm=10**6, concurrent=5, key_rpm=5, key_budget="5")
    asks = []
    real = limits._redis_store.admit

    async def spy(ask):
        asks.append(ask)
        return await real(ask)

    monkeypatch.setattr(limits._redis_store, "admit", spy)
    levels = [
        project(caller, requests_per_minute=5, monthly_budget=Decimal("5")),
        end_user(max_concurrent=2, monthly_budget=Decimal("5"), daily_budget=Decimal("1")),
    ]
    admission = run(attempt_levels(caller, levels, worst="0.1", daily="2"))
    assert isinstance(admission, limits.Admission)
    names = [n for s in asks[-1].scopes for n in (s.keys.rpm, s.keys.tpm, s.keys.concurrency)]
    names += [n for b in asks[-1].budgets for n in (b.keys.spend, b.keys.holds)]
    # Four levels' rate counters; the key's daily, the project's, the end user's monthly and daily budgets.
    assert len(names) == 4 * 3 + 4 * 2
    assert all(n.startswith(f"gw:{{t{caller.tenant.id}}}:") for n in names), names
    client = redis.Redis.from_url(REDIS_URL)
    slots = {client.execute_command("CLUSTER", "KEYSLOT", n) for n in names} if _has_keyslot(client) else set()
    assert len(slots) <= 1


def _has_keyslot(client) -> bool:
    try:
        client.execute_command("CLUSTER", "KEYSLOT", "x")
    except redis.ResponseError:
        return False  # not a cluster: the hash tag's prefix above is the check
    return True


def test_no_project_and_no_end_user_sends_only_the_tenant_and_key_levels(monkeypatch):
    caller = make_caller(rpm=5)
    asks = []
    real = limits._redis_store.admit

    async def spy(ask):
        asks.append(ask)
        return await real(ask)

    monkeypatch.setattr(limits._redis_store, "admit", spy)
    # A project and an end user without limits are not sent either.
    run(attempt_levels(caller, []))
    run(
        attempt_levels(
            caller,
            [
                Level(kind="project", ident=1, name="p"),
            ],
        )
    )
    assert [len(a.scopes) for a in asks] == [1, 1]  # the tenant's rpm only: the key has no limit
    assert [len(a.budgets) for a in asks] == [0, 0]


def test_a_project_and_an_end_user_without_a_rate_limit_cost_no_redis_call(settings):
    from .test_limits import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = dead
    settings.CACHES = redis_caches(dead)
    caller = Caller(
        key=KeyView(
            id=1,
            tenant_id=1,
            allowed_model_ids=frozenset(),
            requests_per_minute=None,
            tokens_per_minute=None,
            max_concurrent=None,
            project=ProjectView(id=3, name="p"),
        ),  # fmt: skip
        tenant=make_caller().tenant,
    )
    assert isinstance(run(attempt_levels(caller, [])), limits.Admission)
