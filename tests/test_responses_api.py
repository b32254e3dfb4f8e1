"""The Responses API (POST/GET/DELETE /v1/responses, input_items) with the unchanged openai SDK
against a live gateway and the mock provider: OpenAI and Azure natively, Anthropic translated.

After every call this reads what the request left behind: one usage record with endpoint
`responses`, tokens equal to the provider's usage, the cost exact, nothing in flight, the spend and
tokens counters equal to the records (`wait_until_settled`).
"""

import base64
import json
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from decimal import Decimal

import httpx2
import openai
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from tenants.models import Deployment, StoredResponse
from tenants.services import api_key_create, stored_responses_purge_expired

from .conftest import ROOT, free_port, make_model, start_gateway, stop, wait_until_up
from .test_request_lifecycle import WINDOW_SECONDS, wait_until_settled

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = ["gpt-test", "azure-gpt-test", "claude-test"]
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module")
def gw(mock_llm, django_db_setup):
    process, url = start_gateway(
        mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_LIMIT_WINDOW_SECONDS=str(WINDOW_SECONDS)
    )
    yield url
    stop(process)


@pytest.fixture
def limited(settings, catalog, alice):
    """alice with limits of every kind (so that every counter is kept), and a key with its own."""
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = WINDOW_SECONDS
    alice.max_concurrent = 4
    alice.tokens_per_minute = 1_000_000
    alice.save()
    alice.subscription.monthly_budget = Decimal("50.00")
    alice.subscription.save()
    key, secret = api_key_create(tenant=alice, name="responses")
    key.max_concurrent = 4
    key.tokens_per_minute = 1_000_000
    key.monthly_budget = Decimal("20.00")
    key.save()
    return alice, key, secret


def sdk(gateway: str, key: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=30, **options)


def window() -> int:
    return int(time.time()) // WINDOW_SECONDS


def price_of(model: str):
    from billing.models import ModelPrice

    return ModelPrice.objects.get(model__name=model)


def check_record(tenant, key, usage, *, model: str, streamed: bool, records: int, w: int) -> UsageRecord:
    """The newest record is this request's: endpoint responses, the provider's tokens, the exact cost."""
    wait_until_settled(tenant, key, records=records, window=w)
    record = UsageRecord.objects.filter(tenant=tenant).order_by("-created_at").first()
    assert record.endpoint == "responses"
    assert (record.status_code, record.error_type, record.estimated) == (200, "", False)
    assert record.streamed is streamed
    assert record.model == model
    cached = usage.input_tokens_details.cached_tokens
    written = usage.input_tokens_details.cache_write_tokens or 0
    assert (record.input_tokens, record.cached_input_tokens, record.cache_write_tokens, record.output_tokens) == (
        usage.input_tokens,
        cached,
        written,
        usage.output_tokens,
    )
    price = price_of(model)
    cached_price = price.cached_input_per_1m if price.cached_input_per_1m is not None else price.input_per_1m
    write_price = price.cache_write_per_1m if price.cache_write_per_1m is not None else price.input_per_1m
    expected = (
        (usage.input_tokens - cached - written) * price.input_per_1m
        + cached * cached_price
        + written * write_price
        + usage.output_tokens * price.output_per_1m
    ) / Decimal(1_000_000)
    assert record.cost == expected
    assert record.cost > 0
    return record


def run(client: openai.OpenAI, stream: bool, **params):
    """`responses.create` or `responses.stream` (the SDK's accumulating helper); the final Response."""
    if not stream:
        return client.responses.create(**params)
    with client.responses.stream(**params) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    return final


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", MODELS)
def test_text(gw, limited, model, stream):
    tenant, key, secret = limited
    w = window()
    response = run(sdk(gw, secret), stream, model=model, input="Say hello", instructions="Be brief.")
    assert response.model == model
    assert response.status == "completed"
    assert response.output_text.startswith("Mock reply from")
    check_record(tenant, key, response.usage, model=model, streamed=stream, records=1, w=w)
    stored = StoredResponse.objects.get(response_id=response.id)
    assert stored.tenant_id == tenant.id
    assert stored.kept_by_gateway is (model == "claude-test")
    assert stored.expires_at == stored.created_at + timedelta(days=tenant.log_retention_days)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", MODELS)
def test_a_function_call_and_its_result_in_a_second_turn(gw, limited, model, stream):
    tenant, key, secret = limited
    client = sdk(gw, secret)
    w = window()
    first = run(client, stream, model=model, input="Weather in Paris? [[mock:tool]]", tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "mock"}
    check_record(tenant, key, first.usage, model=model, streamed=stream, records=1, w=w)

    second = run(
        client,
        stream,
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        tools=TOOLS,
    )
    assert second.output_text.startswith("Mock reply from")
    assert second.previous_response_id == first.id
    record = check_record(tenant, key, second.usage, model=model, streamed=stream, records=2, w=w)
    # The conversation was part of the prompt: the second turn's input is more than its own item.
    assert record.input_tokens > first.usage.input_tokens


@pytest.mark.parametrize("model", MODELS)
def test_an_image_input(gw, limited, model):
    tenant, key, secret = limited
    w = window()
    content = [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
    ]
    response = sdk(gw, secret).responses.create(model=model, input=[{"role": "user", "content": content}])
    assert response.output_text.startswith("Mock reply from")
    check_record(tenant, key, response.usage, model=model, streamed=False, records=1, w=w)


@pytest.mark.parametrize("model", MODELS)
def test_retrieve_input_items_and_delete(gw, limited, model):
    tenant, key, secret = limited
    client = sdk(gw, secret)
    first = client.responses.create(model=model, input="My name is Ada.")
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[
            {"role": "user", "content": "What is my name?"},
            {"role": "user", "content": [{"type": "input_text", "text": "Answer in one word."}]},
        ],
    )
    again = client.responses.retrieve(second.id)
    assert (again.id, again.model, again.output_text) == (second.id, model, second.output_text)

    items = client.responses.input_items.list(second.id)
    texts = [item.content[0].text for item in items.data]
    assert texts == ["Answer in one word.", "What is my name?"]  # newest first by default
    assert all(item.id for item in items.data)
    ascending = client.responses.input_items.list(second.id, order="asc", limit=1)
    assert [item.content[0].text for item in ascending.data] == ["What is my name?"]
    assert ascending.has_more is True
    rest = client.responses.input_items.list(second.id, order="asc", after=ascending.data[0].id)
    assert [item.content[0].text for item in rest.data] == ["Answer in one word."]

    client.responses.delete(second.id)
    assert not StoredResponse.objects.filter(response_id=second.id).exists()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model, previous_response_id=second.id, input="and?")
    # Reads are not billed: two records, the failed continuation's included.
    assert UsageRecord.objects.filter(tenant=tenant).count() == 3


@pytest.mark.parametrize("model", MODELS)
def test_another_tenant_gets_404_on_every_use_of_a_response(gw, limited, bob_key, model):
    tenant, key, secret = limited
    response = sdk(gw, secret).responses.create(model=model, input="secret plans")
    bob = sdk(gw, bob_key)
    missing = sdk(gw, secret)
    for client, response_id in ((bob, response.id), (missing, "resp_does_not_exist")):
        for attempt in (
            lambda c, rid: c.responses.retrieve(rid),
            lambda c, rid: c.responses.delete(rid),
            lambda c, rid: c.responses.input_items.list(rid),
            lambda c, rid: c.responses.create(model=model, previous_response_id=rid, input="more"),
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                attempt(client, response_id)
            assert caught.value.body["code"] == "response_not_found"
    assert sdk(gw, secret).responses.retrieve(response.id).id == response.id  # still alice's


def test_a_continuation_goes_to_the_deployment_that_holds_the_response(gw, limited, mock_llm):
    """gpt-two has two deployments on two mock processes (each keeps its own responses, and
    answers 404 for another's). The first turn is made on the second deployment while the first
    is off; the continuation must go there again, although the first now comes first."""
    tenant, key, secret = limited
    port = free_port()
    other = subprocess.Popen([sys.executable, "manage.py", "mockllm", "--port", str(port)], cwd=ROOT)
    try:
        other_url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{other_url}/health", other)
        model = make_model("gpt-two", "openai", "gpt-4o-mini", input_per_1m="0.15", output_per_1m="0.60")
        first_deployment = Deployment.objects.get(model=model)
        first_deployment.active = False
        first_deployment.save()
        second_deployment = Deployment.objects.create(
            model=model, provider="openai", upstream="gpt-4o-mini-b", base_url=f"{other_url}/v1", priority=5
        )
        client = sdk(gw, secret)
        w = window()
        first = client.responses.create(model="gpt-two", input="remember 42")
        assert StoredResponse.objects.get(response_id=first.id).deployment_id == second_deployment.id
        first_deployment.active = True
        first_deployment.save()
        for stream in (False, True):
            second = run(client, stream, model="gpt-two", previous_response_id=first.id, input="what number?")
            check_record(tenant, key, second.usage, model="gpt-two", streamed=stream, records=2 + stream, w=w)
        seen = json.loads(urllib.request.urlopen(f"{other_url}/_mock/requests").read())
        continued = [r for r in seen if (r.get("body") or {}).get("previous_response_id") == first.id]
        assert len(continued) == 2
        # ... and never to the first one (whose 404 a fallback would have hidden).
        seen_first = json.loads(urllib.request.urlopen(f"{mock_llm}/_mock/requests").read())
        assert not [r for r in seen_first if (r.get("body") or {}).get("previous_response_id") == first.id]
        assert client.responses.retrieve(first.id).id == first.id  # read from the holding deployment too
        # A new conversation still goes to the first deployment (it comes first again).
        fresh = client.responses.create(model="gpt-two", input="new topic")
        assert StoredResponse.objects.get(response_id=fresh.id).deployment_id == first_deployment.id
        # Another model continues a response on the same provider account, and none elsewhere.
        other_model = client.responses.create(model="gpt-test", previous_response_id=fresh.id, input="go on")
        assert other_model.previous_response_id == fresh.id
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="gpt-test", previous_response_id=first.id, input="go on")
        assert caught.value.body["param"] == "previous_response_id"
    finally:
        stop(other)


def test_reasoning_tokens_are_billed_as_output(gw, limited):
    tenant, key, secret = limited
    w = window()
    response = sdk(gw, secret).responses.create(
        model="gpt-test", input="think hard [[mock:reasoning=37]]", reasoning={"effort": "high"}
    )
    assert response.usage.output_tokens_details.reasoning_tokens == 37
    record = check_record(tenant, key, response.usage, model="gpt-test", streamed=False, records=1, w=w)
    assert record.output_tokens == response.usage.output_tokens > 37
    assert response.output[0].type == "reasoning"
    today = timezone.now().date().isoformat()
    usage = httpx2.get(
        f"{gw}/v1/usage", params={"start": today, "end": today}, headers={"authorization": f"Bearer {secret}"}
    ).json()
    assert [(row["endpoint"], row["requests"], Decimal(row["cost"])) for row in usage["by_endpoint"]] == [
        ("responses", 1, record.cost)
    ]


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_cache_reads_and_writes_are_billed_at_their_prices(gw, limited, model):
    tenant, key, secret = limited
    w = window()
    text = "[[mock:cached=8]] [[mock:cache_write=5]] hello again"
    response = sdk(gw, secret).responses.create(model=model, input=text)
    details = response.usage.input_tokens_details
    assert (details.cached_tokens, details.cache_write_tokens) == (8, 5)
    record = check_record(tenant, key, response.usage, model=model, streamed=False, records=1, w=w)
    assert (record.cached_input_tokens, record.cache_write_tokens) == (8, 5)


def test_a_codex_style_stream_is_accepted_and_not_stored(gw, limited):
    """What Codex CLI sends: instructions, input items, function tools, store false, include,
    parallel_tool_calls, reasoning, prompt_cache_key, always streamed."""
    tenant, key, secret = limited
    w = window()
    client = sdk(gw, secret)
    stream = client.responses.create(
        model="gpt-test",
        instructions="You are a coding agent.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "cwd: /tmp"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "list files [[mock:tool]]"}]},
        ],
        tools=[{**TOOLS[0], "strict": False}],
        tool_choice="auto",
        parallel_tool_calls=False,
        reasoning={"effort": "medium", "summary": "auto"},
        store=False,
        stream=True,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="session-1",
    )
    events = list(stream)
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.model == "gpt-test"
    assert completed.response.output[0].type == "function_call"
    check_record(tenant, key, completed.response.usage, model="gpt-test", streamed=True, records=1, w=w)
    assert not StoredResponse.objects.filter(tenant=tenant).exists()


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_the_body_codex_cli_sends(gw, limited, model):
    """The body Codex CLI 0.171 sends (captured by the agents helper, tests/data/codex-request-body.json):
    developer items with ids, function, namespace and web_search tools, store false, include,
    reasoning.summary, prompt_cache_key, client_metadata. Codex needs `response.completed`."""
    tenant, key, secret = limited
    body = json.loads((ROOT / "tests" / "data" / "codex-request-body.json").read_text())
    body["model"] = model
    if model == "claude-test":  # hosted tools (web_search) are refused by the translation, naming the field
        body["tools"] = [tool for tool in body["tools"] if tool["type"] != "web_search"]
    headers = {"authorization": f"Bearer {secret}", "accept": "text/event-stream", "originator": "codex_exec"}
    with httpx2.stream("POST", f"{gw}/v1/responses", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        frames = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert frames[-1]["type"] == "response.completed"
    done = [f["item"] for f in frames if f["type"] == "response.output_item.done"]
    assert done[-1]["type"] == "message"
    assert done[-1]["content"][0]["text"].startswith("Mock reply from")
    usage = openai.types.responses.ResponseUsage.model_validate(frames[-1]["response"]["usage"])
    check_record(tenant, key, usage, model=model, streamed=True, records=1, w=window())
    assert not StoredResponse.objects.filter(tenant=tenant).exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-test"}, "input"),
        ({"model": "gpt-test", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "gpt-test", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "gpt-test", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "gpt-test", "input": "x", "background": True}, "background"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(gw, limited, body, param):
    tenant, key, secret = limited
    response = httpx2.post(f"{gw}/v1/responses", json=body, headers={"authorization": f"Bearer {secret}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("model", MODELS)
def test_the_tenants_max_tokens_ceiling_holds_max_output_tokens(gw, limited, model):
    tenant, key, secret = limited
    tenant.max_tokens_cap = 4
    tenant.save()
    response = sdk(gw, secret).responses.create(
        model=model, input="[[mock:words=30]] a long story", max_output_tokens=500
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 4
    record = UsageRecord.objects.get(tenant=tenant)
    assert record.output_tokens == 4


def test_limits_and_budgets_refuse(gw, limited):
    tenant, key, secret = limited
    client = sdk(gw, secret)
    tenant.tokens_per_minute = 20
    tenant.save()
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-test", input="a prompt that is longer than twenty tokens " * 3)
    tenant.tokens_per_minute = 1_000_000
    tenant.save()
    tenant.subscription.monthly_budget = Decimal("0.000001")
    tenant.subscription.save()
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="gpt-test", input="hello", max_output_tokens=1000)
    assert caught.value.status_code == 402
    records = UsageRecord.objects.filter(tenant=tenant).order_by("created_at")
    assert [(r.endpoint, r.status_code, r.cost) for r in records] == [("responses", 429, 0), ("responses", 402, 0)]
    wait_until_settled(tenant, key, records=2, window=window())


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_hang_up_settles_once(gw, limited, model):
    tenant, key, secret = limited
    client = sdk(gw, secret)
    raw = client.responses.with_raw_response.create(
        model=model, input="[[mock:words=200]] [[mock:chunk_delay_ms=20]] tell a story", stream=True
    )
    events = iter(raw.parse())
    next(events)
    next(events)
    raw.http_response.close()
    wait_until_settled(tenant, key, records=1, window=window())
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.endpoint, record.status_code, record.error_type) == ("responses", 499, "client_disconnected")
    assert record.estimated
    assert record.input_tokens > 0
    time.sleep(0.3)
    assert UsageRecord.objects.filter(tenant=tenant).count() == 1


@pytest.mark.parametrize("model", MODELS)
def test_an_upstream_error_mid_stream_is_an_error_event(gw, limited, model):
    tenant, key, secret = limited
    client = sdk(gw, secret)

    def read_all() -> None:
        with client.responses.stream(model=model, input="[[mock:words=20]] [[mock:stream_error]] hello") as events:
            for _ in events:
                pass

    with pytest.raises(openai.APIError):
        read_all()
    wait_until_settled(tenant, key, records=1, window=window())
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.status_code, record.error_type, record.estimated) == (200, "upstream_stream_error", True)


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_a_stream_closed_cleanly_before_its_last_event_is_an_error_not_an_answer(gw, limited, model):
    """The provider's body ends properly but without `response.completed` (or, translated, without
    `message_stop`): the client gets an error event, the record says the stream broke, and no
    response is stored as complete."""
    tenant, key, secret = limited
    client = sdk(gw, secret)

    def read_all() -> None:
        with client.responses.stream(model=model, input="[[mock:words=20]] [[mock:end_after=3]] hello") as events:
            for _ in events:
                pass

    with pytest.raises(openai.APIError):
        read_all()
    wait_until_settled(tenant, key, records=1, window=window())
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.status_code, record.error_type, record.estimated) == (200, "upstream_stream_error", True)
    assert record.input_tokens > 0
    assert not StoredResponse.objects.filter(tenant=tenant).exists()


def test_expired_stored_responses_are_purged(limited):
    tenant, key, secret = limited
    now = timezone.now()
    for response_id, age in (("resp_old", 40), ("resp_new", 1)):
        StoredResponse.objects.create(
            response_id=response_id,
            tenant=tenant,
            model="gpt-test",
            created_at=now - timedelta(days=age),
            expires_at=now - timedelta(days=age) + timedelta(days=tenant.log_retention_days),
        )
    assert stored_responses_purge_expired(now=now) == 1
    assert list(StoredResponse.objects.values_list("response_id", flat=True)) == ["resp_new"]
    assert stored_responses_purge_expired(now=now) == 0


def test_a_conversation_is_read_in_one_query_and_only_within_its_tenant(limited, bob, django_assert_num_queries):
    from tenants.selectors import stored_response_chain

    tenant, key, secret = limited
    now = timezone.now()

    def row(response_id, previous="", owner=tenant, expires=now + timedelta(days=1)):
        StoredResponse.objects.create(
            response_id=response_id,
            tenant=owner,
            model="claude-test",
            created_at=now,
            expires_at=expires,
            kept_by_gateway=True,
            previous_response_id=previous,
        )

    row("resp_1")
    row("resp_2", "resp_1")
    row("resp_3", "resp_2")
    with django_assert_num_queries(1):
        chain = stored_response_chain(tenant_id=tenant.id, response_id="resp_3")
    assert [r.response_id for r in chain] == ["resp_1", "resp_2", "resp_3"]
    # A link of another tenant, or an expired one, breaks the chain.
    row("resp_b1", owner=bob)
    row("resp_a2", "resp_b1")
    row("resp_old", expires=now - timedelta(seconds=1))
    row("resp_a3", "resp_old")
    assert stored_response_chain(tenant_id=tenant.id, response_id="resp_a2") is None
    assert stored_response_chain(tenant_id=tenant.id, response_id="resp_a3") is None
    assert stored_response_chain(tenant_id=bob.id, response_id="resp_3") is None


@pytest.mark.parametrize("fault", ["[[mock:status=500]]", "[[mock:break_after=2]]", "[[mock:status=400]]"])
@pytest.mark.parametrize("model", MODELS)
def test_an_upstream_failure_before_the_answer_is_recorded_at_zero_and_released(gw, limited, model, fault):
    tenant, key, secret = limited
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gw, secret).responses.create(model=model, input=f"{fault} [[mock:words=20]] hello")
    status = 400 if fault == "[[mock:status=400]]" else 502
    assert caught.value.status_code == status
    wait_until_settled(tenant, key, records=1, window=window())
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.endpoint, record.status_code, record.cost) == ("responses", status, 0)
    assert not StoredResponse.objects.filter(tenant=tenant).exists()


def test_a_json_client_that_hangs_up_is_billed_with_the_providers_numbers(gw, limited):
    tenant, key, secret = limited
    quick = sdk(
        gw,
        secret,
    ).with_options(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        quick.responses.create(model="gpt-test", input="[[mock:latency_ms=1500]] hello")
    wait_until_settled(tenant, key, records=1, window=window())
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.status_code, record.error_type, record.estimated) == (499, "client_disconnected", False)
    assert record.output_tokens > 0
    # The answer still came: the response is the tenant's, and can be read (its row is written
    # just after the usage record, on the same task).
    deadline = time.monotonic() + 5
    while not StoredResponse.objects.filter(tenant=tenant).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = StoredResponse.objects.get(tenant=tenant)
    assert sdk(gw, secret).responses.retrieve(stored.response_id).usage.output_tokens == record.output_tokens


def test_a_conversation_with_nul_characters_is_kept(gw, limited):
    tenant, key, secret = limited
    client = sdk(gw, secret)
    first = client.responses.create(model="claude-test", input="a\u0000b")
    assert StoredResponse.objects.get(response_id=first.id).input_items[0]["content"][0]["text"] == "ab"
    second = client.responses.create(model="claude-test", previous_response_id=first.id, input="and?")
    assert second.previous_response_id == first.id
