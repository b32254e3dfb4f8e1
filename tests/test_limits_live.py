"""Limits and budgets, the tenant's and a key's, with two real gateway processes sharing one Redis
(issue 4's proofs)."""

import asyncio
import re
import threading
import time
from decimal import Decimal

import anthropic
import httpx2
import openai
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from gateway import limits
from tenants.services import api_key_create

from .conftest import start_gateway, stop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def two_gateways(mock_llm, django_db_setup):
    processes = [
        start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_LIMIT_WINDOW_SECONDS="4") for _ in range(2)
    ]
    yield [url for _, url in processes]
    for process, _ in processes:
        stop(process)


def post(url: str, key: str, content: str = "hi", **extra) -> httpx2.Response:
    return httpx2.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def seconds(duration: str) -> float:
    """`6m0s`, `1.5s`, `12ms` -> seconds."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|m|s)", duration):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60}[unit]
    return total


def test_five_requests_a_minute_means_five_across_both_processes(two_gateways, catalog, alice, alice_key, bob_key):
    alice.requests_per_minute = 5
    alice.save()
    first = post(two_gateways[0], alice_key)
    # 30 requests must fit in one fixed window, even on a loaded CI machine: start in a fresh one
    # when less than half of it is left.
    if seconds(first.headers["x-ratelimit-reset-requests"]) < 30:
        time.sleep(seconds(first.headers["x-ratelimit-reset-requests"]) + 0.5)
        first = post(two_gateways[0], alice_key)
    responses = [first] + [post(two_gateways[i % 2], alice_key) for i in range(1, 20)]
    bob = [post(two_gateways[i % 2], bob_key) for i in range(10)]

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 15
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses if r.status_code == 200] == [
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_requests"
        assert refused.headers["x-ratelimit-limit-requests"] == "5"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < int(refused.headers["retry-after"]) <= 60
    assert all(r.status_code == 200 for r in bob)
    assert "x-ratelimit-limit-requests" not in bob[0].headers  # bob has no limit of his own


def test_a_budget_that_fits_five_is_never_overspent_by_fifty_concurrent_requests(
    two_gateways, catalog, alice, alice_key
):
    alice.subscription.monthly_budget = Decimal("0.01")
    alice.subscription.save()
    # Worst case of one request: ~10 prompt tokens × 0.15 + 3000 output × 0.60 per 1M ≈ $0.0018: five fit in $0.01.
    results = []

    def one(i: int) -> None:
        response = post(two_gateways[i % 2], alice_key, content="[[mock:latency_ms=5000]] hi", max_tokens=3000)
        results.append(response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = [r.status_code for r in results]
    assert len(statuses) == 50
    assert statuses.count(200) == 5
    assert statuses.count(402) == 45
    refused = next(r for r in results if r.status_code == 402)
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert refused.json()["error"]["type"] == "insufficient_quota"
    spent = sum(r.cost for r in UsageRecord.objects.filter(tenant=alice))
    assert 0 < spent <= Decimal("0.01")


def test_a_tenant_at_its_token_limit_waits_as_long_as_retry_after_says(two_gateways, catalog, alice, alice_key):
    alice.tokens_per_minute = 60
    alice.save()
    # Each request reserves its prompt (~10 tokens) + max_tokens 20; two fit in 60, a third does not.
    window_edge = 4 - (time.time() % 4)
    if window_edge < 2:
        time.sleep(window_edge + 0.05)
    assert post(two_gateways[0], alice_key, max_tokens=20).status_code == 200
    assert post(two_gateways[1], alice_key, max_tokens=20).status_code == 200
    refused = post(two_gateways[0], alice_key, max_tokens=20)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_tokens"
    assert refused.headers["x-ratelimit-limit-tokens"] == "60"
    refused_at = time.monotonic()
    wait = int(refused.headers["retry-after"])
    reset = seconds(refused.headers["x-ratelimit-reset-tokens"])
    assert 0 < wait <= 4
    assert wait - 1 < reset <= wait  # retry-after is the window's end, rounded up to a second
    if reset > 1.5:  # shortly before the window ends (a second of margin for a loaded machine): still refused
        time.sleep(max(0.0, refused_at + reset - 1.0 - time.monotonic()))
        assert post(two_gateways[1], alice_key, max_tokens=20).status_code == 429
    time.sleep(max(0.0, refused_at + wait + 0.05 - time.monotonic()))
    assert post(two_gateways[1], alice_key, max_tokens=20).status_code == 200


def test_crossing_a_budget_threshold_through_the_gateway_raises_the_alert_once(two_gateways, catalog, alice, alice_key):
    from billing.models import BudgetAlert
    from billing.services import budget_alerts_check

    alice.subscription.monthly_budget = Decimal("0.01")
    alice.subscription.alert_thresholds = [50]
    alice.subscription.save()
    # $0.0036 of output per request (6000 tokens × 0.60 per 1M): the second request crosses 50%.
    for i in range(2):
        response = post(two_gateways[i % 2], alice_key, content="[[mock:words=6000]] go", max_tokens=6000)
        assert response.status_code == 200
    alerts = list(BudgetAlert.objects.filter(tenant=alice))
    assert [a.threshold for a in alerts] == [50]
    assert alerts[0].spend >= Decimal("0.005")
    assert budget_alerts_check(tenant_id=alice.id) == []  # once per period, whoever checks next
    assert BudgetAlert.objects.filter(tenant=alice).count() == 1


def key_spend_in_redis(key):
    """The key's budget counter as the gateways left it (this process reads the same Redis)."""

    async def read():
        try:
            return await limits.key_spend_this_month(key.tenant_id, key.pk)
        finally:
            await limits.aclose()

    return asyncio.run(read())


def test_a_key_budget_that_fits_five_is_never_overspent_by_fifty_concurrent_requests(two_gateways, catalog, alice):
    alice.subscription.monthly_budget = Decimal("100.00")  # the tenant has plenty: the key's budget binds
    alice.subscription.save()
    capped, capped_raw = api_key_create(tenant=alice, name="capped", monthly_budget=Decimal("0.01"))
    sibling, sibling_raw = api_key_create(tenant=alice, name="sibling")
    # Worst case of one request ≈ $0.0018 (see the tenant's test above): five fit in $0.01.
    results, others = [], []

    def one(i: int) -> None:
        results.append(post(two_gateways[i % 2], capped_raw, content="[[mock:latency_ms=5000]] hi", max_tokens=3000))

    def other(i: int) -> None:
        others.append(post(two_gateways[i % 2], sibling_raw, content="[[mock:latency_ms=2000]] hi", max_tokens=3000))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    threads += [threading.Thread(target=other, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = [r.status_code for r in results]
    assert len(statuses) == 50
    assert statuses.count(200) == 5
    assert statuses.count(402) == 45
    for refused in (r for r in results if r.status_code == 402):
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exhausted")
        assert error["message"].startswith("This API key's monthly budget of 0.01 USD is exhausted.")
        assert "tenant" not in error["message"]
        assert "retry-after" not in refused.headers
    # The tenant's other key was served all along, by both processes.
    assert [r.status_code for r in others] == [200] * 10
    spent = sum(r.cost for r in UsageRecord.objects.filter(api_key=capped))
    assert 0 < spent <= Decimal("0.01")
    assert key_spend_in_redis(capped) == spent  # settled: the reservations became the real costs
    assert key_spend_in_redis(sibling) is None  # no budget, no counter

    # Settled at their real (small) costs, the five left room; a request whose worst case exceeds
    # the whole budget (20000 × 0.60 per 1M = $0.012) never fits. The openai SDK, retries on,
    # gives up at once: one request, one record.
    before = UsageRecord.objects.filter(api_key=capped, error_type="budget_exhausted").count()
    client = openai.OpenAI(base_url=f"{two_gateways[0]}/v1", api_key=capped_raw, max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], max_tokens=20000)
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "budget_exhausted"
    assert UsageRecord.objects.filter(api_key=capped, error_type="budget_exhausted").count() == before + 1


def test_a_key_budget_spent_before_the_gateway_started_counting_is_a_402_on_the_anthropic_endpoint(
    two_gateways, catalog, alice
):
    capped, capped_raw = api_key_create(tenant=alice, name="capped", monthly_budget=Decimal("0.01"))
    _, sibling_raw = api_key_create(tenant=alice, name="sibling")
    # This month's records already hold the whole budget: the key's counter starts from them.
    UsageRecord.objects.create(
        request_id="spent-earlier",
        created_at=timezone.now(),
        tenant=alice,
        api_key=capped,
        model="claude-test",
        endpoint="messages",
        status_code=200,
        cost=Decimal("0.01"),
    )

    def ask(raw: str, gateway: str):
        client = anthropic.Anthropic(base_url=gateway, api_key=raw, max_retries=2)
        return client.messages.create(model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(capped_raw, two_gateways[1])
    assert caught.value.status_code == 402
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "billing_error"
    assert caught.value.body["error"]["message"].startswith("This API key's monthly budget of 0.01 USD is exhausted.")
    # Not retried by the SDK: one refusal recorded.
    assert UsageRecord.objects.filter(api_key=capped, status_code=402).count() == 1
    assert ask(sibling_raw, two_gateways[0]).content  # the tenant's other key is served
    assert key_spend_in_redis(capped) == Decimal("0.01")
