"""Every level in one admission, through the gateway (issue 14's first "Done when"): a project's
budget and an end user's, each under 50 concurrent requests over two gateway processes sharing one
Redis, stop spending at their limit while a sibling project and another end user are served;
every refusal names its level. Then, in this process so that the limits' clock can be injected,
a key's daily budget resets at 00:00 UTC; and the attribution (project, end user, tags) lands on
the usage records, with bad end user ids and tags refused in the caller's wire format."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anthropic
import openai
import orjson
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from gateway import limits
from gateway.attribution import end_user_recorded
from gateway.providers import close_clients
from tenants.models import Project
from tenants.services import api_key_create

from .asgi import asgi_request, use_mock_upstreams
from .conftest import start_gateway, stop

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "[[mock:latency_ms=4000]] hi"  # long enough that the fifty overlap on a loaded machine


@pytest.fixture(scope="module")
def two_gateways(mock_llm, django_db_setup):
    # Sixty requests at once on a loaded machine can wait on Redis past the default 0.5 s (a 503
    # limits_unavailable): these tests are about budgets, not that timeout.
    env = {"GATEWAY_AUTH_CACHE_SECONDS": "0", "GATEWAY_LIMITS_REDIS_TIMEOUT": "5"}
    processes = [start_gateway(mock_llm, **env) for _ in range(2)]
    yield [url for _, url in processes]
    for process, _ in processes:
        stop(process)


def fifty_at_once(ask, sibling, *, count: int = 50, siblings: int = 10) -> tuple[list, list]:
    """`ask(i)` 50 times and `sibling(i)` 10 times, all at once; each returns (status, body)."""
    results: list = []
    others: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(ask(i))) for i in range(count)]
    threads += [threading.Thread(target=lambda i=i: others.append(sibling(i))) for i in range(siblings)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return results, others


def openai_call(gateway: str, key: str, **extra) -> tuple[int, dict]:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": SLOW}], max_tokens=3000, **extra
        )
    except openai.APIStatusError as error:
        return error.status_code, error.body
    return 200, {}


def counter(tenant_id: int, level: str, ident, period: str) -> Decimal | None:
    async def read():
        try:
            units = await limits._redis_store.spend(limits.keys.budget_keys(tenant_id, level, ident, period).spend)
            return None if units is None else limits.from_units(units)
        finally:
            await limits.aclose()

    return asyncio.run(read())


def test_a_project_budget_stops_its_spending_under_50_concurrent_requests_while_a_sibling_is_served(
    two_gateways, catalog, alice
):
    search = Project.objects.create(tenant=alice, name="search", monthly_budget=Decimal("0.01"))
    chat = Project.objects.create(tenant=alice, name="chat", monthly_budget=Decimal("5.00"))
    _, search_raw = api_key_create(tenant=alice, name="search-key", project=search)
    _, chat_raw = api_key_create(tenant=alice, name="chat-key", project=chat)
    # The worst case of one request is about $0.0018 (3000 output tokens at 0.60 per 1M): five fit.
    results, others = fifty_at_once(
        lambda i: openai_call(two_gateways[i % 2], search_raw),
        lambda i: openai_call(two_gateways[i % 2], chat_raw),
    )

    statuses = [status for status, _ in results]
    # Five fit at their worst case; a request settled early (at its real, small cost) makes room
    # for another, so a few more may be served. What may never happen: spending past the budget.
    assert 5 <= statuses.count(200) <= 10
    assert statuses.count(402) == 50 - statuses.count(200)
    for status, body in results:
        if status == 402:
            assert (body["type"], body["code"], body["level"]) == ("insufficient_quota", "budget_exhausted", "project")
            assert body["message"].startswith('Project "search" monthly budget of 0.01 USD is exhausted.')
            assert "chat" not in body["message"]
    assert [status for status, _ in others] == [200] * 10  # the sibling project, by both processes
    served = UsageRecord.objects.filter(project=search, status_code=200)
    spent = sum(r.cost for r in served)
    assert served.count() == statuses.count(200)
    assert 0 < spent <= Decimal("0.01")
    # Refusals are recorded, attributed, and cost nothing; the counter holds exactly what was spent.
    assert UsageRecord.objects.filter(project=search, status_code=402).count() == statuses.count(402)
    assert counter(alice.id, "project", search.id, timezone.now().strftime("%Y-%m")) == spent
    assert UsageRecord.objects.filter(project=chat, status_code=200).count() == 10


def test_an_end_user_budget_stops_its_spending_under_50_concurrent_requests_while_another_is_served(
    two_gateways, catalog, alice
):
    alice.end_user_limits = {"monthly_budget": "0.01"}
    alice.hash_end_user_ids = True
    alice.save()
    _, raw = api_key_create(tenant=alice, name="app")

    def other(i: int) -> tuple[int, dict]:
        client = anthropic.Anthropic(base_url=two_gateways[i % 2], api_key=raw, max_retries=0, timeout=60)
        try:
            client.messages.create(
                model="claude-test",
                max_tokens=100,  # 10 x $0.0005 at worst: this end user's own $0.01 holds them all
                messages=[{"role": "user", "content": SLOW}],
                metadata={"user_id": "paying-user"},
            )
        except anthropic.APIStatusError as error:
            return error.status_code, error.body
        return 200, {}

    # The end user in OpenAI's `user` for half of them, in the header (which wins) for the others.
    results, others = fifty_at_once(
        lambda i: (
            openai_call(two_gateways[i % 2], raw, user="free-user")
            if i % 2
            else openai_call(two_gateways[i % 2], raw, user="ignored", extra_headers={"x-end-user-id": "free-user"})
        ),
        other,
    )

    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 402}, results
    assert 5 <= statuses.count(200) <= 10  # as for the project above
    assert statuses.count(402) == 50 - statuses.count(200)
    for status, body in results:
        if status == 402:
            assert (body["code"], body["level"]) == ("budget_exhausted", "end_user")
            assert body["message"].startswith("End user monthly budget of 0.01 USD is exhausted.")
    assert [status for status, _ in others] == [200] * 10
    free = end_user_recorded("free-user", tenant_id=alice.id, hashed=True)
    paying = end_user_recorded("paying-user", tenant_id=alice.id, hashed=True)
    assert len(free) == 64
    assert free != end_user_recorded("free-user", tenant_id=alice.id + 1, hashed=True)  # per tenant
    served = UsageRecord.objects.filter(tenant=alice, end_user=free, status_code=200)
    spent = sum(r.cost for r in served)
    assert served.count() == statuses.count(200)
    assert 0 < spent <= Decimal("0.01")
    assert counter(alice.id, "end_user", free, timezone.now().strftime("%Y-%m")) == spent
    assert UsageRecord.objects.filter(tenant=alice, end_user=paying, status_code=200).count() == 10
    # The ids themselves are nowhere: only their hashes.
    assert not UsageRecord.objects.filter(end_user__in=["free-user", "paying-user", "ignored"]).exists()


# --- in this process: the injected clock, attribution and refusals ---


@pytest.fixture
def upstreams(settings, mock_llm):
    settings.REDIS_URL = settings.REDIS_URL or "redis://127.0.0.1:6379/5"
    yield from use_mock_upstreams(settings, mock_llm)


def send(path: str, key: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    async def scenario():
        try:
            return await asgi_request(path, key=key, body=orjson.dumps(body), headers=headers)
        finally:
            await close_clients()
            await limits.aclose()

    status, _, content = asyncio.run(scenario())
    return status, orjson.loads(content)


CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000}


def test_a_key_daily_budget_resets_at_midnight_utc(upstreams, catalog, alice):
    key, raw = api_key_create(tenant=alice, name="daily", daily_budget=Decimal("0.01"))
    # Today's records already hold the whole day's budget: the day's counter starts from them.
    UsageRecord.objects.create(
        request_id="spent-today",
        created_at=timezone.now(),
        tenant=alice,
        api_key=key,
        model="gpt-test",
        endpoint="chat",
        status_code=200,
        cost=Decimal("0.01"),
    )
    today = timezone.now().astimezone(UTC).date()
    before_midnight = datetime(today.year, today.month, today.day, 23, 59, 30, tzinfo=UTC)
    with limits.use_clock(limits.ManualClock(int(before_midnight.timestamp() * 1000))) as clock:
        status, refused = send("/v1/chat/completions", raw, CHAT)
        assert status == 402
        assert (refused["error"]["code"], refused["error"]["level"]) == ("budget_exhausted", "key")
        assert refused["error"]["message"].startswith("This API key's daily budget of 0.01 USD is exhausted.")
        assert "tomorrow (00:00 UTC)" in refused["error"]["message"]
        clock.advance(29.999)  # 23:59:59.999: still today
        assert send("/v1/chat/completions", raw, CHAT)[0] == 402
        clock.advance(0.001)  # 00:00:00 UTC: a new day's counter, from the records since midnight (none)
        assert send("/v1/chat/completions", raw, CHAT)[0] == 200
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert (
        counter(alice.id, "key", key.id, tomorrow)
        == UsageRecord.objects.exclude(request_id="spent-today").get(api_key=key, status_code=200).cost
    )
    assert counter(alice.id, "key", key.id, today.isoformat()) == Decimal("0.01")  # refusals reserved nothing


def test_the_end_user_and_the_tags_are_recorded_and_bad_ones_are_400_in_the_callers_format(upstreams, catalog, alice):
    key, raw = api_key_create(tenant=alice, name="tagged")
    status, _ = send(
        "/v1/chat/completions", raw, {**CHAT, "user": "u-42"}, {"x-request-tags": "feature=chat, env=prod"}
    )
    assert status == 200
    record = UsageRecord.objects.get(api_key=key)
    assert (record.end_user, record.tags) == ("u-42", {"feature": "chat", "env": "prod"})

    status, body = send("/v1/chat/completions", raw, CHAT, {"x-request-tags": "feature=chat,env"})
    assert status == 400
    assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == (
        "invalid_request_error",
        "invalid_tags",
        "x-request-tags",
    )
    many = ",".join(f"k{i}=v" for i in range(11))
    assert "at most 10 tags" in send("/v1/chat/completions", raw, CHAT, {"x-request-tags": many})[1]["error"]["message"]
    status, body = send("/v1/chat/completions", raw, {**CHAT, "user": "line\nbreak"})
    assert (status, body["error"]["param"]) == (400, "user")
    messages = {"model": "claude-test", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    status, body = send("/v1/messages", raw, {**messages, "metadata": {"user_id": "x" * 257}})
    assert status == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "metadata.user_id" in body["error"]["message"]
    status, body = send("/v1/messages", raw, messages, {"x-end-user-id": "h" * 300})
    assert status == 400
    assert "x-end-user-id" in body["error"]["message"]
    # Refused before admission: recorded as invalid, with nothing to attribute.
    assert UsageRecord.objects.filter(api_key=key, status_code=400).count() == 5
