"""Retries, fallbacks and the deadline (gateway/routing/retry.py, proxy._first_that_answers), and a
deployment's own breaker settings, without a gateway process: the policy's arithmetic, then the
attempt loop with an operation of the test's making in place of a provider, on the memory routing
store and a `ManualClock` that moves when slept on (no test waits for a backoff).
"""

import asyncio
import os
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.pricing import Price
from gateway import limits, proxy, routing
from gateway.errors import GatewayError
from gateway.lifecycle import Call, Leg
from gateway.providers import ProviderError, close_clients
from gateway.registry import Caller, DeploymentView, KeyView, ModelView, PriceView, TenantView
from gateway.routing import retry
from gateway.routing.store import Ask, Breaker

POLICY = retry.Policy(
    retries=2, backoff_seconds=0.5, backoff_max_seconds=4, retry_after_max_seconds=10, deadline_seconds=60
)


@pytest.fixture(autouse=True)
def memory_only(settings):
    settings.REDIS_URL = ""  # the memory routing store and journal
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = "sk-retry-test"
    settings.GATEWAY_RETRIES = 2
    settings.GATEWAY_RETRY_BACKOFF_SECONDS = 0.5
    settings.GATEWAY_RETRY_BACKOFF_MAX_SECONDS = 4
    settings.GATEWAY_RETRY_AFTER_MAX_SECONDS = 10
    settings.GATEWAY_REQUEST_DEADLINE_SECONDS = 60
    settings.GATEWAY_BREAKER_FAILURES = 100  # the loop's tests are not about the breaker
    routing.memory_routing.clear()


@pytest.fixture
def clock():
    manual = retry.ManualClock()
    previous = retry.use_clock(manual)
    yield manual
    retry.use_clock(previous)


def failed(kind="server", status=500, retry_after=None, retryable=True) -> ProviderError:
    return ProviderError("openai", status, kind, "boom", retryable, retry_after=retry_after)


def failure(error: ProviderError, leg=0, deployment_id=1) -> retry.Failure:
    return retry.Failure(leg=leg, deployment=deployment(deployment_id), error=error)


# --- the policy ---


def test_full_jitter_stays_within_the_capped_exponential_and_spreads_over_it():
    rng = random.Random(5)
    for round_, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        draws = [POLICY.backoff(round_, rng) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in draws)
        # Full jitter: the whole range is used, not a fixed delay plus a little noise.
        assert min(draws) < ceiling * 0.05
        assert max(draws) > ceiling * 0.95


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.5", 0.5), (" 7 ", 7.0), ("-3", 0.0), ("", None), (None, None), ("soon", None), ("nan", None)],
)
def test_retry_after_in_seconds(value, seconds):
    assert retry.retry_after_seconds(value) == seconds


def test_retry_after_as_an_http_date():
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    assert retry.retry_after_seconds("Mon, 07 Dec 2026 12:00:30 GMT", now=now) == 30.0
    assert retry.retry_after_seconds("Mon, 07 Dec 2026 11:00:00 GMT", now=now) == 0.0


def test_a_round_retries_timeouts_connections_5xx_and_429_but_never_a_400_or_401():
    kinds = {
        "timeout": failed("timeout", 0),
        "connection": failed("connection", 0),
        "server": failed("server", 502),
        "overloaded": failed("overloaded", 529),
        "rate_limit": failed("rate_limit", 429),
        "bad_request": failed("bad_request", 400, retryable=False),
        "upstream_auth": failed("upstream_auth", 401),  # another deployment may have other credentials
        "upstream_not_found": failed("upstream_not_found", 404),
    }
    failures = [failure(error, deployment_id=i) for i, error in enumerate(kinds.values())]

    _, again = POLICY.next_round(1, failures, random.Random(1))

    assert [f.error.kind for f in again] == ["timeout", "connection", "server", "overloaded", "rate_limit"]
    assert (
        POLICY.next_round(1, [failure(kinds["bad_request"]), failure(kinds["upstream_auth"])], random.Random()) is None
    )


def test_retry_after_is_honoured_and_one_beyond_the_cap_is_not_retried_in_this_request():
    soon, later, too_late = failed(retry_after="3"), failed(retry_after="6"), failed(retry_after="60")
    failures = [failure(soon, deployment_id=1), failure(later, deployment_id=2), failure(too_late, deployment_id=3)]

    wait, again = POLICY.next_round(1, failures, random.Random(1))

    # The wait is at least the soonest retry-after; a deployment is never asked before its own.
    assert 3 <= wait < 6
    assert [f.deployment.id for f in again] == [1]
    assert POLICY.next_round(1, [failure(too_late)], random.Random(1)) is None


def test_no_round_beyond_the_retries():
    assert POLICY.next_round(2, [failure(failed())], random.Random(1)) is not None
    assert POLICY.next_round(3, [failure(failed())], random.Random(1)) is None


# --- the attempt loop ---

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def deployment(id: int, provider="openai", upstream=None) -> DeploymentView:
    return DeploymentView(
        id=id, provider=provider, upstream=upstream or f"up-{id}", region="", base_url="http://retry-test.invalid/v1"
    )


def model(name: str, *deployments: DeploymentView, provider="openai", price="1.00") -> tuple[ModelView, PriceView]:
    price_view = PriceView(
        id=abs(hash(name)) % 10**6, effective_from=NOW - timedelta(days=1), price=Price(Decimal(price), Decimal(price))
    )
    return ModelView(
        id=abs(hash(name)) % 10**6, name=name, provider=provider, deployments=deployments, prices=(price_view,)
    ), price_view


def make_call(asked: tuple[ModelView, PriceView], *fallbacks: tuple[ModelView, PriceView]) -> Call:
    tenant = TenantView(
        id=1,
        slug="retry",
        active=True,
        region="",
        allowed_providers=frozenset(),
        allowed_model_ids=frozenset(),
        requests_per_minute=None,
        tokens_per_minute=None,
        max_concurrent=None,
        model_aliases={},
        default_params={},
        max_tokens_cap=None,
        log_requests=False,
        monthly_budget=None,
        credentials={},
    )
    key = KeyView(
        id=1,
        tenant_id=1,
        allowed_model_ids=frozenset(),
        requests_per_minute=None,
        tokens_per_minute=None,
        max_concurrent=None,
    )
    call = Call(
        request_id=f"retry-{random.randrange(10**12)}",
        endpoint="chat",
        client_family="openai",
        caller=Caller(key=key, tenant=tenant),
        created_at=NOW,
    )
    call.model, call.price = asked
    call.requested_model = call.model_name = call.model.name
    call.fallbacks = tuple(Leg(model=m, price=p, deployments=m.deployments) for m, p in fallbacks)
    return call


class Upstream:
    """What each upstream (by its model id) does when asked: a list of outcomes, in order (an
    exception is raised, anything else answered); the clock moves by `takes` seconds per call."""

    def __init__(self, clock: retry.ManualClock, script: dict[str, list], takes: float = 0.0) -> None:
        self.clock, self.script, self.takes, self.asked = clock, script, takes, []

    async def __call__(self, adapter, body: dict):
        self.asked.append((body["model"], self.clock.monotonic()))
        self.clock.advance(self.takes)
        outcome = self.script[body["model"]].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def attempts(call: Call, upstream: Upstream):
    async def go():
        try:
            deployments = list(call.model.deployments)
            return await proxy._first_that_answers(
                call, deployments, upstream, body_for=lambda call, d, family: {"model": d.upstream}
            )
        finally:
            await close_clients()
            await limits.aclose()

    return asyncio.run(go())


def test_every_deployment_then_the_fallback_and_the_call_is_the_fallbacks_from_then_on(clock):
    asked = model("gpt-asked", deployment(11), deployment(12))
    backup = model("claude-backup", deployment(21, provider="anthropic"), provider="anthropic", price="3.00")
    call = make_call(asked, backup)
    upstream = Upstream(clock, {"up-11": [failed()], "up-12": [failed("timeout", 0)], "up-21": [{"ok": True}]})

    _, result = attempts(call, upstream)

    assert result == {"ok": True}
    assert [name for name, _ in upstream.asked] == ["up-11", "up-12", "up-21"]
    assert clock.slept == []  # moving on to another deployment or model does not wait
    assert (call.model_name, call.price, call.deployment.id, call.fallen_back) == ("claude-backup", backup[1], 21, True)
    assert call.metered(proxy.Outcome(status=200)).requested_model == "gpt-asked"


def test_a_whole_round_failed_then_the_retryable_ones_again_after_the_retry_after(clock):
    asked = model("gpt-asked", deployment(11), deployment(12))
    call = make_call(asked)
    upstream = Upstream(
        clock,
        {
            "up-11": [failed("rate_limit", 429, retry_after="2"), {"ok": 11}],
            "up-12": [failed("upstream_auth", 401)],  # moved on from, never retried
        },
    )

    _, result = attempts(call, upstream)

    assert result == {"ok": 11}
    assert [name for name, _ in upstream.asked] == ["up-11", "up-12", "up-11"]
    assert len(clock.slept) == 1
    assert clock.slept[0] >= 2
    assert upstream.asked[2][1] - upstream.asked[0][1] >= 2
    assert (call.model_name, call.fallen_back) == ("gpt-asked", False)


def test_a_bad_request_is_neither_retried_nor_sent_to_a_fallback(clock):
    call = make_call(model("gpt-asked", deployment(11)), model("gpt-backup", deployment(21)))
    upstream = Upstream(clock, {"up-11": [failed("bad_request", 400, retryable=False)], "up-21": [{"ok": 21}]})

    with pytest.raises(GatewayError) as refused:
        attempts(call, upstream)

    assert (refused.value.status, refused.value.code) == (400, "upstream_invalid_request")
    assert [name for name, _ in upstream.asked] == ["up-11"]
    assert clock.slept == []


def test_retries_end_at_the_deadline_with_the_last_upstream_error(clock, settings):
    settings.GATEWAY_REQUEST_DEADLINE_SECONDS = 25
    call = make_call(model("gpt-asked", deployment(11)), model("gpt-backup", deployment(21)))
    upstream = Upstream(
        clock, {"up-11": [failed("server", 502)] * 3, "up-21": [failed("overloaded", 529)] * 3}, takes=10
    )

    with pytest.raises(GatewayError) as refused:
        attempts(call, upstream)

    # Each attempt takes 10 of the 25 seconds: the first round (20 s), then the retry round's first
    # attempt (it starts before the deadline); its second would start past it and is not made.
    assert [name for name, _ in upstream.asked] == ["up-11", "up-21", "up-11"]
    assert all(at < 1000 + 25 for _, at in upstream.asked)
    assert len(clock.slept) == 1
    assert 0 <= clock.slept[0] <= 0.5
    # The caller hears the last upstream's failure; the record names that attempt's model.
    assert (refused.value.status, refused.value.code) == (502, "upstream_error")
    assert (call.model_name, call.fallen_back, call.deployment.id) == ("gpt-asked", False, 11)


def test_no_retry_round_starts_that_its_wait_would_take_past_the_deadline(clock, settings):
    settings.GATEWAY_REQUEST_DEADLINE_SECONDS = 5
    call = make_call(model("gpt-asked", deployment(11)))
    upstream = Upstream(clock, {"up-11": [failed("rate_limit", 429, retry_after="8"), {"ok": 11}]})

    with pytest.raises(GatewayError) as refused:
        attempts(call, upstream)

    assert [name for name, _ in upstream.asked] == ["up-11"]
    assert clock.slept == []  # waiting 8 s for a 5 s deadline would only delay the same answer
    assert (refused.value.status, refused.value.code, refused.value.headers) == (
        429,
        "upstream_rate_limit",
        {"retry-after": "8"},
    )


def test_an_attempt_gets_at_most_the_time_left(clock, settings):
    settings.GATEWAY_REQUEST_DEADLINE_SECONDS = 0.2
    settings.GATEWAY_RETRIES = 0
    call = make_call(model("gpt-asked", deployment(11)))

    async def hangs(adapter, body):
        await asyncio.sleep(30)

    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        attempts(call, hangs)

    assert (refused.value.status, refused.value.code) == (504, "upstream_timeout")
    assert time.monotonic() - started < 5


# --- a deployment's own breaker ---


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_a_deployments_own_breaker_settings_override_the_defaults(backend, settings):
    settings.REDIS_URL = (os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/11") if backend == "redis" else ""
    settings.GATEWAY_BREAKER_FAILURES = 5
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 30
    own = DeploymentView(
        id=random.randrange(10**9, 2 * 10**9),
        provider="openai",
        upstream="x",
        region="",
        base_url="",
        breaker_failures=2,
        breaker_cooldown_seconds=300,
    )
    default = DeploymentView(id=own.id + 1, provider="openai", upstream="y", region="", base_url="")
    assert tuple(Breaker.of(default)) == (5, 30_000, 30_000)
    assert tuple(Breaker.of(own)) == (2, 30_000, 300_000)

    async def go():
        store = routing.store()
        with limits.use_clock(limits.ManualClock(1_800_000_000_000)) as manual:
            states = []
            for d in (own, default):
                for n in range(2):
                    member = f"m{n}:{d.id}"
                    await store.take(Ask(d.id, member, None, None, 0, cooldown_ms=Breaker.of(d).cooldown_ms))
                    states.append(
                        await store.done(
                            d.id, member, result="fail", probe=False, latency_ms=1, release=True, breaker=Breaker.of(d)
                        )
                    )
            manual.advance(60)  # past the default cooldown, not the deployment's own
            own_taken = await store.take(Ask(own.id, "later", None, None, 0, cooldown_ms=300_000))
            # The health list counts each deployment's failures within its own window.
            wide = await store.snapshot([own.id, default.id], [Breaker.of(own).window_ms, 120_000])
            narrow = await store.snapshot([own.id, default.id], [Breaker.of(own).window_ms, 1_000])
            await limits.aclose()
            return states, own_taken, wide, narrow

    states, own_taken, wide, narrow = asyncio.run(go())
    assert states == ["closed", "open", "closed", "closed"]  # two failures open its breaker, not the default's
    assert own_taken.verdict == "open"
    assert own_taken.ms == 240_000
    assert wide.health[0].open_until_ms is not None
    assert wide.health[1].open_until_ms is None
    assert (wide.health[1].recent_failures, narrow.health[1].recent_failures) == (2, 0)
