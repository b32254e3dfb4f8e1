"""Prompt-cache affinity (gateway/routing/affinity.py) and the mock provider's prompt cache
(gateway/mock/prompt_cache.py), without a gateway process. The live measurement of what affinity
buys is in tests/test_routing_affinity_live.py.
"""

import asyncio
import os
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from gateway import limits, routing
from gateway.mock.prompt_cache import MIN_TOKENS, PromptCache
from gateway.mock.server import Usage, build_app
from gateway.providers import ProviderError
from gateway.registry import DeploymentView, ModelView
from gateway.routing import affinity
from gateway.tokenizer import CL100K, O200K, count_message_tokens, count_tokens

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/13"
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


@pytest.fixture(autouse=True)
def routing_settings(settings):
    settings.REDIS_URL = REDIS_URL
    settings.GATEWAY_BREAKER_FAILURES = 3
    settings.GATEWAY_BREAKER_WINDOW_SECONDS = 10
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 30
    settings.GATEWAY_AFFINITY_PREFIX_TOKENS = 1024
    routing.memory_routing.clear()


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


def document(seed: int, words: int = 1500) -> str:
    """A long text of its own per seed (over 1024 tokens)."""
    draw = random.Random(seed)
    return f"Document {seed}. " + " ".join(draw.choice(WORDS) for _ in range(words))


def chat(system: str, question: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}


def deployment(**fields) -> DeploymentView:
    return DeploymentView(
        id=random.randrange(10**9, 2 * 10**9), provider="openai", upstream="gpt-x", region="", base_url="", **fields
    )


def make_call(*deployments, strategy="priority", body=None, tenant_id=7, affine="prefix"):
    model = ModelView(
        id=1, name="gpt-4o", provider="openai", deployments=deployments, prices=(), routing=strategy, affinity=affine
    )
    return SimpleNamespace(
        request_id=f"req-{random.randrange(10**9)}",
        model=model,
        model_name="gpt-4o",
        requested_model="gpt-4o",
        body=body or {},
        prompt_estimate=10,
        caller=SimpleNamespace(tenant=SimpleNamespace(id=tenant_id)),
    )


def first_of(call, deployments) -> DeploymentView:
    return run(routing.plan(call, list(deployments))).order[0]


# --- the prefix ---


def test_prompts_sharing_their_first_n_tokens_share_a_digest():
    doc = document(1)
    digest = affinity.prefix_digest(chat(doc, "What is it?"), provider="openai", model="gpt-4o", tokens=1024)
    assert digest is not None
    assert affinity.prefix_digest(chat(doc, "Who wrote it?"), provider="openai", model="gpt-4o", tokens=1024) == digest
    # Anthropic's top-level system prompt is the same prefix (cl100k_base standing in for Claude's BPE).
    claude = {"system": doc, "messages": [{"role": "user", "content": "Why?"}]}
    other = {"system": doc, "messages": [{"role": "user", "content": "How?"}]}
    assert affinity.prefix_digest(claude, provider="anthropic", model="claude-x", tokens=1024) == (
        affinity.prefix_digest(other, provider="anthropic", model="claude-x", tokens=1024)
    )
    # Another document, or the same one differing inside its first N tokens: another digest.
    assert affinity.prefix_digest(chat(document(2), "What is it?"), provider="openai", model="gpt-4o", tokens=1024) != (
        digest
    )
    changed = "Document 1, revised." + doc[len("Document 1.") :]
    assert affinity.prefix_digest(chat(changed, "What is it?"), provider="openai", model="gpt-4o", tokens=1024) != (
        digest
    )


def test_a_prompt_shorter_than_n_tokens_has_no_affinity():
    short = chat("You are terse.", "hi")
    assert affinity.prefix_digest(short, provider="openai", model="gpt-4o", tokens=1024) is None
    assert affinity.prefix_digest(short, provider="openai", model="gpt-4o", tokens=4) is not None
    assert affinity.prefix_digest(chat(document(1), "q"), provider="openai", model="gpt-4o", tokens=0) is None
    assert affinity.prefix_digest({"model": "gpt-4o"}, provider="openai", model="gpt-4o", tokens=8) is None


def test_the_work_is_capped_on_text_with_few_tokens_per_character():
    # 200,000 characters of one letter are a few thousand tokens at most: keyed on the capped head.
    body = chat("a" * 200_000, "q")
    digest = affinity.prefix_digest(body, provider="openai", model="gpt-4o", tokens=1024)
    assert digest is not None
    assert affinity.prefix_digest(chat("a" * 150_000, "other"), provider="openai", model="gpt-4o", tokens=1024) == (
        digest
    )
    # Text that is not valid JSON (a lone surrogate; a body parsed from JSON never has one): no affinity.
    assert affinity.prefix_digest(chat("\ud800" * 20_000, "q"), provider="openai", model="gpt-4o", tokens=1024) is None


# --- the order ---


@pytest.mark.parametrize("strategy", ["priority", "weighted", "least_busy", "latency", "cost"])
def test_the_same_prefix_goes_to_the_same_deployment_first_with_every_strategy(strategy, backend):
    deployments = [deployment(priority=i) for i in range(3)]
    doc = document(3)
    firsts = {
        first_of(make_call(*deployments, strategy=strategy, body=chat(doc, f"q{i}")), deployments) for i in range(30)
    }
    assert len(firsts) == 1
    # The rest is the strategy's order: for `priority`, the registry's order without the first.
    plan = run(routing.plan(make_call(*deployments, body=chat(doc, "q")), deployments))
    assert plan.order[1:] == [d for d in deployments if d is not plan.order[0]]
    assert sorted(d.id for d in plan.order) == sorted(d.id for d in deployments)


def test_without_affinity_or_with_a_short_prompt_the_strategy_decides():
    deployments = [deployment(priority=i) for i in range(3)]
    for i in range(10):
        call = make_call(*deployments, body=chat(document(i), "q"), affine="")
        assert run(routing.plan(call, deployments)).order == deployments
        call = make_call(*deployments, body=chat("short", f"q{i}"))
        assert run(routing.plan(call, deployments)).order == deployments


def test_tenants_and_prefixes_spread_over_the_deployments():
    a, b = deployment(), deployment()
    doc = document(4)
    by_tenant = Counter(first_of(make_call(a, b, body=chat(doc, "q"), tenant_id=t), [a, b]).id for t in range(400))
    assert 160 <= by_tenant[a.id] <= 240, by_tenant
    by_prefix = Counter(first_of(make_call(a, b, body=chat(document(s), "q")), [a, b]).id for s in range(200))
    assert 70 <= by_prefix[a.id] <= 130, by_prefix


def test_weighted_affinity_spreads_prefixes_by_weight_and_never_picks_a_zero_weight():
    light, heavy, spare = deployment(weight=1), deployment(weight=3), deployment(weight=0)
    picks = Counter(
        affinity.pick([light, heavy, spare], tenant_id=t, digest=bytes([t % 256, t // 256]) * 8, weighted=True).id
        for t in range(2000)
    )
    assert spare.id not in picks
    assert abs(picks[light.id] / 2000 - 0.25) <= 0.04, picks


def test_removing_a_deployment_moves_only_the_prefixes_that_were_on_it():
    a, b, c = deployment(), deployment(), deployment()
    digests = [bytes([s % 256, s // 256]) * 8 for s in range(600)]
    before = [affinity.pick([a, b, c], tenant_id=1, digest=d, weighted=False) for d in digests]
    after = [affinity.pick([a, b], tenant_id=1, digest=d, weighted=False) for d in digests]
    assert all(old is new for old, new in zip(before, after, strict=True) if old is not c)
    assert any(old is c for old in before)


def test_an_affine_deployment_out_of_rotation_falls_back_to_the_next_then_comes_back(backend):
    a, b = deployment(), deployment()
    body = chat(document(5), "q")

    async def scenario():
        with limits.use_clock(limits.ManualClock(1_800_000_000_000)) as clock:
            favourite = (await routing.plan(make_call(a, b, body=body), [a, b])).order[0]
            other = b if favourite is a else a
            for _ in range(3):  # GATEWAY_BREAKER_FAILURES: its breaker opens
                plan = await routing.plan(make_call(a, b, body=body), [a, b])
                attempt = await plan.take(plan.order[0])
                await attempt.failed(ProviderError("openai", 500, "server", "boom", True))
            plan = await routing.plan(make_call(a, b, body=body), [a, b])
            assert plan.order == [favourite, other]
            assert await plan.take(favourite) is None  # out of rotation: skipped
            attempt = await plan.take(other)
            assert attempt is not None
            await attempt.answered()
            await asyncio.sleep(0)
            clock.advance(30)  # cooled down: the probe goes to the affine deployment, which answers
            plan = await routing.plan(make_call(a, b, body=body), [a, b])
            probe = await plan.take(plan.order[0])
            assert (plan.order[0], probe.probe) == (favourite, True)
            await probe.answered()
            await asyncio.sleep(0.05)
            plan = await routing.plan(make_call(a, b, body=body), [a, b])
            attempt = await plan.take(plan.order[0])
            assert (plan.order[0], attempt is not None, attempt.probe) == (favourite, True, False)
            await attempt.release()
            in_flight = [h.in_flight for h in await routing.store().health([a.id, b.id])]
            assert in_flight == [0, 0]

    run(scenario())


def test_an_affine_deployment_at_its_quota_falls_back_to_the_next(backend):
    a, b = deployment(requests_per_minute=2), deployment(requests_per_minute=2)
    body = chat(document(6), "q")

    async def scenario():
        with limits.use_clock(limits.ManualClock(1_800_000_000_000 - 1_800_000_000_000 % 60_000 + 5000)):
            answered_by = []
            for _ in range(4):
                plan = await routing.plan(make_call(a, b, body=body), [a, b])
                for candidate in plan.order:
                    attempt = await plan.take(candidate)
                    if attempt is not None:
                        answered_by.append(candidate)
                        await attempt.release()
                        break
            favourite = answered_by[0]
            assert answered_by[:2] == [favourite, favourite]
            assert all(d is not favourite for d in answered_by[2:])

    run(scenario())


# --- the mock provider's prompt cache ---


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def usage(messages, system=None, *, encoding=O200K) -> Usage:
    total = count_message_tokens(messages, encoding=encoding) + count_tokens(str(system or ""), encoding=encoding)
    return Usage(prompt_tokens=total, cache_read=0, cache_write=0, output_tokens=5)


def test_the_mock_reports_a_prefix_this_process_saw_within_its_ttl_as_cached():
    clock = Clock()
    cache = PromptCache(60, clock=clock)
    doc = document(7)
    first = chat(doc, "q1")["messages"]
    assert cache.served({"messages": first}, "gpt-4o", O200K, usage(first)).cache_read == 0  # a miss
    second = chat(doc, "q2")["messages"]
    prefix = count_message_tokens(second[:1]) - 2
    assert prefix >= MIN_TOKENS
    assert cache.served({"messages": second}, "gpt-4o", O200K, usage(second)).cache_read == prefix
    # Another model name, another process: misses.
    assert cache.served({"messages": second}, "gpt-4o-mini", O200K, usage(second)).cache_read == 0
    assert PromptCache(60, clock=clock).served({"messages": second}, "gpt-4o", O200K, usage(second)).cache_read == 0
    # The longest prefix wins: a conversation's previous turn entirely.
    third = [*second, {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "q3"}]
    expected = count_message_tokens(second) - 2
    assert cache.served({"messages": third}, "gpt-4o", O200K, usage(third)).cache_read == expected
    # The same prompt again: all of it but the reply's priming. Every use refreshes the TTL; 60 s
    # without one and it is gone.
    clock.now += 59
    assert cache.served({"messages": second}, "gpt-4o", O200K, usage(second)).cache_read == expected
    clock.now += 60.5
    assert cache.served({"messages": second}, "gpt-4o", O200K, usage(second)).cache_read == 0


def test_the_mock_caches_no_prefix_under_the_minimum_and_anthropic_system_prompts():
    cache = PromptCache(60)
    short = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]
    for _ in range(2):
        assert cache.served({"messages": short}, "gpt-4o", O200K, usage(short)).cache_read == 0
    doc = document(8)
    for turn, expected in (("a", 0), ("b", count_tokens(doc, encoding=CL100K))):
        messages = [{"role": "user", "content": turn}]
        full = usage(messages, doc, encoding=CL100K)
        served = cache.served({"system": doc, "messages": messages}, "claude-x", CL100K, full)
        assert served.cache_read == expected
    # Never more than the prompt leaves after cache writes: a directive's cached=N is kept if larger.
    messages = [{"role": "user", "content": "c"}]
    full = usage(messages, doc, encoding=CL100K)
    capped = Usage(prompt_tokens=full.prompt_tokens, cache_read=0, cache_write=full.prompt_tokens - 10, output_tokens=1)
    assert cache.served({"system": doc, "messages": messages}, "claude-x", CL100K, capped).cache_read == 10


def test_the_mock_prompt_cache_is_off_unless_asked():
    from gateway.mock.server import MockSettings

    assert build_app().prompt_cache is None
    assert build_app(MockSettings(prompt_cache_seconds=300)).prompt_cache.ttl == 300
