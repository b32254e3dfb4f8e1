"""Issue 10's estimate proof, against a live gateway and the mock provider: prompts that a
pre-tokenizer under-counts (a run of one letter, CJK text) cannot overspend a budget, because
admission holds an upper bound of what they cost, and the provider's bill settles it.

A 1.00 USD monthly budget on models priced like gpt-4 (30 / 60 USD per 1M tokens): whatever is
sent concurrently, spend (the usage records' cost) never passes the budget by more than one
request's real cost.
"""

import threading
from decimal import Decimal

import anthropic
import openai
import pytest

from billing.models import UsageRecord

from .conftest import make_model

pytestmark = pytest.mark.django_db(transaction=True)

BUDGET = Decimal("1.00")
LATENCY = "[[mock:latency_ms=1500]] "  # every request is in flight while the others are admitted
HAN = "".join(chr(0x4E00 + (i * 7919) % 0x5200) for i in range(200_000))  # 200,000 CJK characters


@pytest.fixture
def gpt4_priced(db):
    price = {"input_per_1m": "30", "output_per_1m": "60"}
    return {
        "chat": make_model("gpt-4-0613", "openai", "gpt-4-0613", **price),
        "messages": make_model("claude-priced-4", "anthropic", "claude-priced-4", **price),
    }


def send(gateway: str, key: str, endpoint: str, text: str, statuses: list[int]) -> None:
    """One request, through the official SDK of its wire format; its HTTP status joins `statuses`."""
    try:
        if endpoint == "chat":
            openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=60).chat.completions.create(
                model="gpt-4-0613", max_tokens=16, messages=[{"role": "user", "content": LATENCY + text}]
            )
        else:
            anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0, timeout=60).messages.create(
                model="claude-priced-4", max_tokens=16, messages=[{"role": "user", "content": LATENCY + text}]
            )
        statuses.append(200)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        statuses.append(exc.status_code)


def spend_after(gateway: str, key: str, requests: list[tuple[str, str]]) -> tuple[Decimal, Decimal, list[int]]:
    """Send `requests` at once; then the spend (the usage records' cost), the largest cost, the statuses."""
    statuses: list[int] = []
    threads = [
        threading.Thread(target=send, args=(gateway, key, endpoint, text, statuses)) for endpoint, text in requests
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    costs = [record.cost for record in UsageRecord.objects.filter(tenant__slug="alice")]
    return sum(costs, Decimal(0)), max(costs, default=Decimal(0)), sorted(statuses)


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([("chat", "a" * 300_000)] * 20 + [("messages", HAN)] * 10, id="300k-letters-and-200k-cjk"),
        pytest.param([("chat", "a" * 40_000)] * 10 + [("messages", "b" * 40_000)] * 10, id="some-fit"),
    ],
)
def test_concurrent_gamed_prompts_never_overspend_the_budget(gateway, gpt4_priced, alice, alice_key, requests):
    alice.subscription.monthly_budget = BUDGET
    alice.subscription.save()

    spent, largest, statuses = spend_after(gateway, alice_key, requests)

    served = statuses.count(200)
    assert len(statuses) == len(requests)
    assert set(statuses) <= {200, 402}  # served, or refused for the budget: nothing else went wrong
    assert spent <= BUDGET + largest, f"{served} requests served for {spent} USD on a {BUDGET} USD budget"


def test_a_prompt_that_fits_the_budget_is_still_served(gateway, gpt4_priced, alice, alice_key):
    alice.subscription.monthly_budget = BUDGET
    alice.subscription.save()

    # 5,000 letters: ~625 tokens x 30 USD/1M ~ 0.02 USD; held at its bound, it fits many times over.
    spent, _, statuses = spend_after(gateway, alice_key, [("chat", "a" * 5_000), ("messages", "a" * 5_000)])

    assert statuses == [200, 200]
    assert 0 < spent < Decimal("0.10")
