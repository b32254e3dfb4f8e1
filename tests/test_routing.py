"""Routing's shared state and strategies (gateway/routing/), without a gateway process.

The state tests are a contract suite: each runs on the Redis store (this run's Redis database)
and on the memory store used without REDIS_URL, with time from a ManualClock moved forward
instead of slept. Deployment ids are random so that runs never share state.
"""

import asyncio
import os
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import redis

from gateway import limits, routing
from gateway.errors import GatewayError
from gateway.providers import ProviderError
from gateway.registry import DeploymentView, ModelView
from gateway.routing import strategies
from gateway.routing.store import Ask, Health, RedisRouting, channel

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/11"
MINUTE_START_MS = 1_800_000_000_000 - 1_800_000_000_000 % 60_000


@pytest.fixture(autouse=True)
def routing_settings(settings):
    settings.REDIS_URL = REDIS_URL
    settings.GATEWAY_BREAKER_FAILURES = 3
    settings.GATEWAY_BREAKER_WINDOW_SECONDS = 10
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 30
    routing.memory_routing.clear()


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings):
    if request.param == "memory":
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def clock():
    with limits.use_clock(limits.ManualClock(MINUTE_START_MS + 5000)) as manual:
        yield manual


def run(coroutine):
    async def and_close():
        try:
            return await coroutine
        finally:
            await limits.aclose()

    return asyncio.run(and_close())


def fresh_id() -> int:
    return random.randrange(10**9, 2 * 10**9)


def deployment(id=None, **fields) -> DeploymentView:
    return DeploymentView(id=id or fresh_id(), provider="openai", upstream="gpt-x", region="", base_url="", **fields)


def make_call(*deployments: DeploymentView, strategy="priority", body=None, prompt=10):
    model = ModelView(id=1, name="gpt-x", provider="openai", deployments=deployments, prices=(), routing=strategy)
    return SimpleNamespace(
        request_id=f"req-{fresh_id()}",
        model=model,
        model_name="gpt-x",
        requested_model="gpt-x",
        body=body or {},
        prompt_estimate=prompt,
    )


def failure(kind="server", status=500) -> ProviderError:
    return ProviderError("openai", status, kind, "boom", True)


def take(d: DeploymentView, member=None, *, tokens=0):
    ask = Ask(
        deployment_id=d.id,
        member=member or f"req-{fresh_id()}:{d.id}",
        requests_per_minute=d.requests_per_minute,
        tokens_per_minute=d.tokens_per_minute,
        tokens=tokens,
    )
    return routing.store().take(ask)


async def health(d: DeploymentView) -> Health:
    return (await routing.store().health([d.id]))[0]


# --- the circuit breaker ---


async def attempt_and_fail(d: DeploymentView, kind="server") -> str:
    other = deployment()
    plan = await routing.plan(make_call(d, other), [d, other])
    attempt = await plan.take(d)
    assert attempt is not None
    await attempt.failed(failure(kind))
    return attempt


def test_failures_within_the_window_open_the_breaker_for_the_cooldown_then_one_probe_decides(backend, clock):
    d = deployment()

    async def scenario():
        for _ in range(2):
            await attempt_and_fail(d)
        assert (await take(d)).verdict == "ok"  # 2 failures: still in rotation
        await attempt_and_fail(d)  # the third opens it
        state = await health(d)
        assert state.open_until_ms == clock.now_ms() + 30_000
        taken = await take(d)
        assert (taken.verdict, taken.ms) == ("open", 30_000)
        clock.advance(29.999)
        assert (await take(d)).verdict == "open"
        clock.advance(0.001)
        # Cooled down: one attempt wins the probe, every other one is still turned away.
        probe = await take(d, "probe-1")
        assert probe.verdict == "probe"
        assert [(await take(d)).verdict for _ in range(3)] == ["open"] * 3
        # The probe fails: open again for a whole cooldown.
        assert await routing.store().done(d.id, "probe-1", result="fail", probe=True, latency_ms=5, release=True) == (
            "open"
        )
        assert (await take(d)).verdict == "open"
        clock.advance(30)
        assert (await take(d, "probe-2")).verdict == "probe"
        assert await routing.store().done(d.id, "probe-2", result="ok", probe=True, latency_ms=5, release=True) == (
            "closed"
        )
        assert (await health(d)).open_until_ms is None
        assert [(await take(d)).verdict for _ in range(3)] == ["ok"] * 3
        # The failures before it opened are forgotten: it takes three new ones to open it again.
        await attempt_and_fail(d)
        await attempt_and_fail(d)
        assert (await take(d)).verdict == "ok"

    run(scenario())


def test_a_probe_that_never_reports_lets_another_probe_through_after_a_cooldown(backend, clock):
    d = deployment()

    async def scenario():
        for _ in range(3):
            await attempt_and_fail(d)
        clock.advance(30)
        assert (await take(d)).verdict == "probe"  # its process dies
        clock.advance(29)
        assert (await take(d)).verdict == "open"
        clock.advance(1)
        assert (await take(d)).verdict == "probe"

    run(scenario())


def test_failures_spread_over_more_than_the_window_do_not_open_it(backend, clock):
    d = deployment()

    async def scenario():
        for _ in range(6):
            await attempt_and_fail(d)
            clock.advance(5.001)  # two failures at most within any 10 s
        assert (await health(d)).open_until_ms is None
        assert (await take(d)).verdict == "ok"

    run(scenario())


def test_a_bad_request_does_not_count_and_closes_a_half_open_breaker(backend, clock):
    d = deployment()

    async def scenario():
        for _ in range(5):
            await attempt_and_fail(d, kind="bad_request")
        assert (await health(d)).open_until_ms is None
        for _ in range(3):
            await attempt_and_fail(d, kind="rate_limit")  # a provider's 429 counts
        assert (await health(d)).open_until_ms is not None
        clock.advance(30)
        other = deployment()
        plan = await routing.plan(make_call(d, other), [d, other])
        attempt = await plan.take(d)
        assert attempt.probe
        await attempt.failed(failure("bad_request", 400))  # it answered: back in rotation
        assert (await health(d)).open_until_ms is None

    run(scenario())


# --- provider account quotas ---


def test_requests_per_minute_of_the_account_then_the_next_minute(backend, clock):
    d = deployment(requests_per_minute=10)

    async def scenario():
        assert [(await take(d)).verdict for _ in range(10)] == ["ok"] * 10
        refused = await take(d)
        assert (refused.verdict, refused.ms) == ("quota", 55_000)
        clock.advance(55)
        assert (await take(d)).verdict == "ok"

    run(scenario())


def test_tokens_per_minute_of_the_account(backend, clock):
    d = deployment(tokens_per_minute=1000)

    async def scenario():
        assert (await take(d, tokens=600)).verdict == "ok"
        assert (await take(d, tokens=400)).verdict == "ok"
        assert (await take(d, tokens=1)).verdict == "quota"
        clock.advance(55)
        # One request larger than the whole quota still goes, alone in its minute.
        assert (await take(d, tokens=5000)).verdict == "ok"
        assert (await take(d, tokens=1)).verdict == "quota"

    run(scenario())


def test_every_deployment_at_quota_is_429_upstream_capacity_with_retry_after(backend, clock):
    a, b = deployment(requests_per_minute=1), deployment(requests_per_minute=2)

    async def scenario():
        outcomes = []
        for _ in range(4):
            plan = await routing.plan(make_call(a, b), [a, b])
            chosen = None
            for d in plan.order:
                attempt = await plan.take(d)
                if attempt is not None:
                    chosen = d
                    await attempt.answered()
                    break
            outcomes.append(chosen.id if chosen else plan.nothing_tried())
        assert outcomes[:3] == [a.id, b.id, b.id]
        error = outcomes[3]
        assert isinstance(error, GatewayError)
        assert (error.status, error.code, error.headers["retry-after"]) == (429, "upstream_capacity", "55")

    run(scenario())


def test_every_breaker_open_is_503_upstream_unavailable(backend, clock):
    a = deployment()

    async def scenario():
        for _ in range(3):
            await attempt_and_fail(a)
        clock.advance(10)
        other = deployment()
        plan = await routing.plan(make_call(a, other), [a, other])
        assert await plan.take(a) is None
        error = plan.nothing_tried()
        assert (error.status, error.code, error.headers["retry-after"]) == (503, "upstream_unavailable", "20")

    run(scenario())


# --- in flight, latency ---


def test_an_attempt_is_in_flight_until_it_ends_and_ends_once(backend, clock):
    a, b = deployment(), deployment()

    async def scenario():
        attempts = []
        for _ in range(3):
            plan = await routing.plan(make_call(a, b), [a, b])
            attempts.append(await plan.take(a))
        assert (await health(a)).in_flight == 3
        await (await attempts[0].answered())  # a JSON answer: ended (reported off the response's path)
        await attempts[1].answered(release=False)  # a stream: still going
        assert (await health(a)).in_flight == 2
        await attempts[1].release()
        await attempts[1].release()
        await attempts[0].release()
        assert (await health(a)).in_flight == 1
        await asyncio.gather(*(t for t in (attempts[2].release_soon(), attempts[2].release_soon()) if t))
        assert (await health(a)).in_flight == 0

    run(scenario())


def test_a_tracked_stream_ends_its_attempt_when_closed(backend, clock):
    a, b = deployment(), deployment()

    class Events:
        closed = 0

        async def __aiter__(self):
            yield {"n": 1}

        async def aclose(self):
            Events.closed += 1

    async def scenario():
        plan = await routing.plan(make_call(a, b), [a, b])
        attempt = await plan.take(a)
        await attempt.answered(release=False)
        events = routing.tracked(Events(), attempt)
        assert [e async for e in events] == [{"n": 1}]
        assert (await health(a)).in_flight == 1
        await events.aclose()
        await events.aclose()
        assert (await health(a)).in_flight == 0
        assert Events.closed == 2

    run(scenario())


def test_the_latency_ewma(backend, clock):
    d = deployment()

    async def scenario():
        for member, latency in (("m1", 100.0), ("m2", 200.0)):
            await take(d, member)
            await routing.store().done(d.id, member, result="ok", probe=False, latency_ms=latency, release=True)
        assert (await health(d)).latency_ms == pytest.approx(130.0)  # 0.3 * 200 + 0.7 * 100

    run(scenario())


def test_a_single_deployment_under_priority_touches_no_shared_state(clock):
    d = deployment()
    assert not routing.engaged(make_call(d).model, [d])
    assert routing.engaged(make_call(d).model, [deployment(requests_per_minute=5)])

    async def scenario():
        plan = await routing.plan(make_call(d), [d])
        attempt = await plan.take(d)
        await attempt.failed(failure())
        await attempt.failed(failure())
        await attempt.failed(failure())
        assert not plan.shared

    run(scenario())
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.keys(f"gw:route:{{{d.id}}}:*") == []
    finally:
        client.close()


# --- strategies ---


def test_weighted_draws_the_first_deployment_by_weight():
    a, b, c = deployment(weight=1), deployment(weight=3), deployment(weight=6)
    rng = random.Random(7)
    firsts = Counter(strategies.order("weighted", [a, b, c], None, rng)[0].id for _ in range(10_000))
    assert firsts[a.id] / 10_000 == pytest.approx(0.1, abs=0.015)
    assert firsts[b.id] / 10_000 == pytest.approx(0.3, abs=0.015)
    assert firsts[c.id] / 10_000 == pytest.approx(0.6, abs=0.015)
    assert sorted(d.id for d in strategies.order("weighted", [a, b, c], None, rng)) == sorted([a.id, b.id, c.id])


def test_least_busy_latency_cost_and_priority_orders(settings):
    a, b, c = deployment(), deployment(), deployment()
    rng = random.Random(1)
    busy = [Health(5, None, None, 0), Health(1, None, None, 0), Health(1, None, None, 0)]
    assert strategies.order("least_busy", [a, b, c], busy, rng) == [b, c, a]
    settings.GATEWAY_ROUTING_EXPLORATION = 0
    slow = [Health(0, 900.0, None, 0), Health(0, 100.0, None, 0), Health(0, None, None, 0)]
    assert strategies.order("latency", [a, b, c], slow, rng) == [c, b, a]  # never measured: tried first
    settings.GATEWAY_ROUTING_EXPLORATION = 1
    orders = {tuple(d.id for d in strategies.order("latency", [a, b, c], slow, rng)) for _ in range(50)}
    assert len(orders) > 1  # exploring: the slow one is tried first now and then
    for name in ("priority", "cost"):
        assert strategies.order(name, [a, b, c], None, rng) == [a, b, c]


def test_least_busy_reads_in_flight_across_processes(backend, clock):
    a, b = deployment(), deployment()

    async def scenario():
        for _ in range(2):
            await take(a)  # another process's attempts
        plan = await routing.plan(make_call(a, b, strategy="least_busy"), [a, b])
        assert plan.order == [b, a]

    run(scenario())


# --- the routing view (Redis: each RedisRouting is one process's view of the shared state) ---


def two_processes() -> tuple[RedisRouting, RedisRouting]:
    return RedisRouting(), RedisRouting()


def ask_for(d: DeploymentView, member=None) -> Ask:
    return Ask(
        deployment_id=d.id,
        member=member or f"req-{fresh_id()}:{d.id}",
        requests_per_minute=d.requests_per_minute,
        tokens_per_minute=d.tokens_per_minute,
        tokens=0,
    )


def counting(store) -> Counter:
    """The scripts `store` runs from now on, by name."""
    calls: Counter = Counter()
    run_script = store._run

    async def counted(name, keys, args):
        calls[name] += 1
        return await run_script(name, keys, args)

    store._run = counted
    return calls


def zcard(key: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return client.zcard(key)
    finally:
        client.close()


def test_the_success_path_makes_no_round_trip_and_reports_go_out_batched(clock):
    a, b = deployment(), deployment()
    store = routing.redis_routing
    store.view.clear()

    async def scenario():
        await store.health([a.id, b.id])  # the first read of these deployments (one sync call)
        calls = counting(store)
        latencies = [float(n) for n in range(10, 30)]
        try:
            for latency in latencies:
                plan = await routing.plan(make_call(a, b, strategy="latency"), [a, b])
                attempt = await plan.take(a)
                assert attempt is not None
                assert not attempt.probe
                attempt.started -= latency / 1000  # as if the upstream took `latency` ms
                await attempt.answered()
            assert sum(calls.values()) == 0  # twenty routed requests: no script ran
            await store.sync()
            assert calls == Counter(sync=1)  # their twenty reports: one call
        finally:
            del store._run
        expected = None
        for latency in latencies:
            expected = latency if expected is None else 0.3 * latency + 0.7 * expected
        client = redis.Redis.from_url(REDIS_URL)
        try:
            shared = float(client.hget(f"gw:route:{{{a.id}}}:state", "lat"))
        finally:
            client.close()
        assert shared == pytest.approx(expected, abs=0.05)
        assert zcard(f"gw:route:{{{a.id}}}:busy") == 0  # each ended within the sync period: never counted there

    run(scenario())


def test_another_process_reads_the_view_at_its_sync_on_the_store_clock(clock):
    a, b = deployment(), deployment()
    one, other = two_processes()

    async def scenario():
        assert [h.in_flight for h in await other.health([a.id, b.id])] == [0, 0]
        long = ask_for(a)
        assert (await one.take(long)).verdict == "ok"  # the first take of `a` here: asked of Redis
        for _ in range(2):
            assert one.take_local(ask_for(a)).verdict == "ok"  # then in the process
        await one.done(a.id, "m", result="ok", probe=False, latency_ms=40.0, release=False)
        assert [h.in_flight for h in await one.health([a.id])] == [3]  # exact for its own
        await one.sync()
        # Younger than one sync period: not counted in Redis yet, so not seen by the other process.
        await other.sync()
        assert [(h.in_flight, h.latency_ms) for h in await other.health([a.id])] == [(0, 40.0)]
        clock.advance(0.1)
        await one.sync()
        assert zcard(f"gw:route:{{{a.id}}}:busy") == 3
        assert [h.in_flight for h in await other.health([a.id])] == [0]  # not synced since
        await other.sync()
        assert [h.in_flight for h in await other.health([a.id])] == [3]
        assert [h.in_flight for h in await one.health([a.id])] == [3]  # its own, not counted twice
        plan = await routing.plan(make_call(a, b, strategy="least_busy"), [a, b])
        assert plan.order == [b, a]
        # One ends: removed from Redis by the next sync, which it asks for at once.
        await one.done(a.id, long.member, result="none", probe=False, latency_ms=0, release=True)
        await one.sync()
        assert zcard(f"gw:route:{{{a.id}}}:busy") == 2
        # A deployment not routed to for VIEW_IDLE_MS is forgotten, and read again before its next use.
        clock.advance(10)
        await other.sync()
        assert a.id not in other.view._seen
        assert [h.in_flight for h in await other.health([a.id])] == [2]

    run(scenario())


def test_a_crashed_process_leaves_its_attempts_in_flight_only_until_the_horizon(clock, settings):
    settings.GATEWAY_CONCURRENCY_HORIZON_SECONDS = 60
    a = deployment()
    crashed, alive = two_processes()

    async def scenario():
        await crashed.take(ask_for(a))
        crashed.take_local(ask_for(a))
        clock.advance(0.2)
        await crashed.sync()  # then the process dies: its attempts never end
        assert [h.in_flight for h in await alive.health([a.id])] == [2]
        clock.advance(59.7)
        await alive.sync()
        assert [h.in_flight for h in await alive.health([a.id])] == [2]
        clock.advance(0.2)  # 60.1 s after they started
        await alive.sync()
        assert [h.in_flight for h in await alive.health([a.id])] == [0]

    run(scenario())


def test_a_breaker_opened_by_one_process_is_heard_by_another_at_once(clock):
    d = deployment()
    one, other = two_processes()

    async def scenario():
        assert (await other.take(ask_for(d))).verdict == "ok"  # read once: closed
        assert other.take_local(ask_for(d)).verdict == "ok"  # then taken without a round trip
        listener = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
        listener.subscribe(channel())
        try:
            for n in range(3):
                member = f"fail-{n}"
                await one.take(ask_for(d, member))
                state = await one.done(d.id, member, result="fail", probe=False, latency_ms=5, release=True)
            assert state == "open"
            message = None
            for _ in range(50):
                message = listener.get_message(timeout=0.1)
                if message is not None:
                    break
        finally:
            listener.close()
        assert message is not None
        assert message["data"].decode() == f"{d.id} {clock.now_ms() + 30_000}"
        assert other.take_local(ask_for(d)).verdict == "ok"  # not heard yet (the view is advice)
        other.view.announced(message["data"].decode())
        refused = other.take_local(ask_for(d))
        assert (refused.verdict, refused.ms) == ("open", 30_000)
        # After the cooldown the view asks Redis, which hands the single probe to one process.
        clock.advance(30)
        assert other.take_local(ask_for(d)) is None
        assert (await other.take(ask_for(d, "probe"))).verdict == "probe"
        assert (await one.take(ask_for(d))).verdict == "open"
        assert other.take_local(ask_for(d)).verdict == "open"  # its own probe is under way
        # The probe answers: closed, and announced.
        assert await other.done(d.id, "probe", result="ok", probe=True, latency_ms=5, release=True) == "closed"
        one.view.announced(str(d.id))
        assert one.take_local(ask_for(d)).verdict == "ok"

    run(scenario())


def test_a_process_learns_an_opening_at_its_next_sync_and_a_failure_sends_takes_to_redis(clock):
    d = deployment()
    one, other = two_processes()

    async def scenario():
        await other.take(ask_for(d))
        await one.take(ask_for(d, "f1"))
        await one.done(d.id, "f1", result="fail", probe=False, latency_ms=5, release=True)
        assert other.take_local(ask_for(d)).verdict == "ok"
        await other.sync()
        # A failure within the window somewhere: takes are asked of Redis (exact) until it passes.
        assert other.take_local(ask_for(d)) is None
        for n in (2, 3):
            await one.take(ask_for(d, f"f{n}"))
            await one.done(d.id, f"f{n}", result="fail", probe=False, latency_ms=5, release=True)
        assert (await other.take(ask_for(d))).verdict == "open"
        assert other.take_local(ask_for(d)).verdict == "open"

    run(scenario())


def test_an_account_quota_is_always_counted_in_redis(clock):
    d = deployment(requests_per_minute=3)
    one, other = two_processes()

    async def scenario():
        calls = counting(one)
        verdicts = [(await one.take(ask_for(d))).verdict, (await other.take(ask_for(d))).verdict]
        verdicts += [(await one.take(ask_for(d))).verdict, (await other.take(ask_for(d))).verdict]
        assert verdicts == ["ok", "ok", "ok", "quota"]
        assert calls["take"] == 2

    run(scenario())
