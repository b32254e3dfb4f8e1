"""What happens when things go wrong mid-way: disconnects, broken streams, dead deployments,
oversized bodies, and tool calls across formats. Live gateway and mock provider, real SDKs.
"""

import socket
import time

import anthropic
import openai
import orjson
import pytest

from billing.models import UsageRecord
from gateway.tokenizer import count_tokens
from tenants.models import Deployment

from .conftest import free_port, make_model, start_gateway, stop

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for_record(**filters) -> UsageRecord:
    """Records of cancelled requests are written on their own task, just after the cancel."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = UsageRecord.objects.filter(**filters).first()
        if record is not None:
            return record
        time.sleep(0.1)
    raise AssertionError(f"no usage record with {filters}")


def test_a_client_that_disconnects_mid_stream_is_billed_for_what_was_generated(gateway, catalog, alice, alice_key):
    body = orjson.dumps(
        {
            "model": "gpt-test",
            "stream": True,
            "messages": [{"role": "user", "content": "[[mock:words=200]] [[mock:chunk_delay_ms=20]] tell a story"}],
        }
    )
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {alice_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.settimeout(10)
        received = b""
        while received.count(b"data: ") < 5:
            data = sock.recv(65536)
            assert data, f"the gateway closed the connection early: {received[:300]!r}"
            received += data
        # Gone, after a few chunks of a 200-token answer.
    record = wait_for_record(tenant=alice, error_type="client_disconnected")
    assert record.estimated
    assert record.streamed
    assert record.status_code == 499
    assert 0 < record.output_tokens < 200
    assert record.input_tokens > 0
    assert record.cost > 0


def test_an_anthropic_error_event_reaches_an_openai_client_and_is_recorded(gateway, catalog, alice_key):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-test",
        messages=[{"role": "user", "content": "[[mock:words=20]] [[mock:stream_error]] hi"}],
        stream=True,
    )
    chunks = []

    def consume():
        chunks.extend(raw.parse())

    with pytest.raises(openai.APIError, match="(?i)overloaded"):
        consume()
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert record.error_type == "upstream_stream_error"
    assert record.estimated
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert record.output_tokens == count_tokens(text) > 0
    assert record.input_tokens > 0  # reported by message_start before the error


def test_a_dead_deployment_falls_back_to_the_next(gateway, mock_llm, catalog, alice_key):
    model = catalog["gpt"]
    primary = model.deployments.get()
    Deployment.objects.create(
        model=model, provider="openai", upstream="gpt-dead", base_url=f"http://127.0.0.1:{free_port()}/v1", priority=0
    )
    primary.priority = 1
    primary.save()
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.parse().choices[0].message.content
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert record.upstream_model == primary.upstream
    assert record.status_code == 200


def test_an_unreachable_upstream_is_502_and_a_slow_one_504(mock_llm, catalog, alice, alice_key):
    """Told apart although the SDKs' aiohttp transport reports a refused connection as a timeout."""
    make_model("gpt-nowhere", "openai", "gpt-nowhere", input_per_1m="1", output_per_1m="1").deployments.update(
        base_url=f"http://127.0.0.1:{free_port()}/v1"
    )
    process, url = start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_UPSTREAM_TIMEOUT="1")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=alice_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as unreachable:
            client.chat.completions.create(model="gpt-nowhere", messages=[{"role": "user", "content": "hello"}])
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as slow:
            client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "[[mock:latency_ms=5000]] hello"}]
            )
        waited = time.monotonic() - started
        with pytest.raises(openai.APIStatusError) as slow_stream:
            client.chat.completions.create(
                model="claude-test", messages=[{"role": "user", "content": "[[mock:latency_ms=5000]] hi"}], stream=True
            )
    finally:
        stop(process)
    assert (unreachable.value.status_code, unreachable.value.body["code"]) == (502, "upstream_unreachable")
    assert (slow.value.status_code, slow.value.body["code"]) == (504, "upstream_timeout")
    assert waited < 4  # the upstream timeout, not the mock's latency
    assert (slow_stream.value.status_code, slow_stream.value.body["code"]) == (504, "upstream_timeout")
    records = UsageRecord.objects.filter(tenant=alice).order_by("created_at")
    assert [(r.status_code, r.error_type) for r in records] == [
        (502, "upstream_unreachable"),
        (504, "upstream_timeout"),
        (504, "upstream_timeout"),
    ]


def test_a_request_error_is_not_retried_on_another_deployment(gateway, mock_llm, catalog, alice_key):
    model = catalog["gpt"]
    Deployment.objects.create(model=model, provider="openai", upstream="gpt-second", priority=5)
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "[[mock:status=400]]"}])
    import httpx2

    seen = [r["body"]["model"] for r in httpx2.get(f"{mock_llm}/_mock/requests").json()[-2:]]
    assert "gpt-second" not in seen


def test_an_oversized_body_is_413(gateway, catalog, alice_key, settings):
    client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    huge = "x" * (settings.GATEWAY_MAX_BODY_BYTES + 10)
    with pytest.raises(anthropic.APIStatusError) as error:
        client.messages.create(model="claude-test", max_tokens=5, messages=[{"role": "user", "content": huge}])
    assert error.value.status_code == 413
    assert error.value.body["error"]["type"] == "request_too_large"


def test_tool_calls_cross_formats(gateway, catalog, alice_key):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    completion = client.chat.completions.create(
        model="claude-test", tools=tools, messages=[{"role": "user", "content": "[[mock:tool]] weather in Paris?"}]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    orjson.loads(choice.message.tool_calls[0].function.arguments)

    messages = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    message = messages.messages.create(
        model="gpt-test",
        max_tokens=100,
        tools=[{"name": "get_weather", "input_schema": tools[0]["function"]["parameters"]}],
        messages=[{"role": "user", "content": "[[mock:tool]] weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    assert message.content[-1].type == "tool_use"
    assert message.content[-1].name == "get_weather"


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_a_client_that_hangs_up_before_the_answer_is_billed_with_the_providers_numbers(
    gateway, catalog, alice, alice_key, model
):
    """The provider answers (and bills) whether or not our client waited: the record keeps its
    reported tokens, exactly, not an estimate, and the request's concurrency slot comes back."""
    alice.max_concurrent = 1
    alice.save()
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0, timeout=0.5)
    question = [{"role": "user", "content": "[[mock:latency_ms=1500]] [[mock:words=30]] are you there?"}]
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=model, messages=question, max_tokens=100)

    record = wait_for_record(tenant=alice, error_type="client_disconnected")
    assert record.status_code == 499
    assert not record.estimated
    assert not record.streamed
    assert record.output_tokens == 30  # the mock's reply, as it reported it
    assert record.input_tokens > 0
    assert record.cost > 0
    # Its slot is free again: the next request of a tenant allowed one at a time goes through.
    patient = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    answer = patient.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.status_code == 200
    assert UsageRecord.objects.filter(tenant=alice).count() == 2


def test_a_client_that_hangs_up_while_its_request_is_refused_upstream_is_still_recorded(
    gateway, catalog, alice, alice_key
):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0, timeout=0.5)
    question = [{"role": "user", "content": "[[mock:latency_ms=1500]] [[mock:status=500]] hi"}]
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-test", messages=question)
    record = wait_for_record(tenant=alice, error_type="upstream_error")
    assert record.status_code == 502
    assert record.cost == 0
