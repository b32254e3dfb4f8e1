"""Deployments given in the configuration file reach a live gateway: two accounts of one provider
serving one upstream model (two base_urls) are two deployments, and the gateway uses the second
when the first is down. Real SDK as the client, the mock provider over HTTP."""

from decimal import Decimal

import httpx2
import openai
import pytest

from billing.models import UsageRecord
from config.apply import config_apply

from .conftest import free_port
from .test_request_lifecycle import read_counters

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_second_account_given_in_the_file_answers_when_the_first_is_down(
    gateway, mock_llm, catalog, alice, alice_key
):
    upstream = "gpt-4o-mini-2024-07-18"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    changes = config_apply(
        document={
            "models": {
                "gpt-test": {
                    "deployments": [
                        {"provider": "openai", "upstream": upstream, "base_url": dead, "timeout_seconds": 5},
                        {"provider": "openai", "upstream": upstream, "base_url": f"{mock_llm}/v1", "weight": 2},
                    ]
                }
            }
        }
    )
    assert (
        f"create deployment gpt-test → openai:{upstream} @any via {dead} (priority 0, weight 1, timeout_seconds 5.0)"
        in changes
    )
    httpx2.delete(f"{mock_llm}/_mock/requests")
    alice.max_concurrent = 2  # limits and a budget, so that there are counters to find settled
    alice.save()
    alice.subscription.monthly_budget = Decimal("5.00")
    alice.subscription.save()

    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello"}]
    )

    answer = raw.parse()
    assert answer.choices[0].message.content
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert (record.status_code, record.upstream_model) == (200, upstream)
    assert (record.input_tokens, record.output_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    expected = (Decimal(record.input_tokens) * Decimal("0.15") + Decimal(record.output_tokens) * Decimal("0.60")) / (
        10**6
    )
    assert record.cost == expected
    seen = [r["body"]["model"] for r in httpx2.get(f"{mock_llm}/_mock/requests").json()]
    assert seen == [upstream]  # the mock (the second account) got it once
    usage, _ = read_counters(alice.id, record.api_key_id)
    assert usage.in_flight == 0
    assert usage.month_spend == record.cost
