"""The fake provider (`manage.py mockllm`), started as a real process and called through the official SDKs.

Usage numbers are checked against `gateway.tokenizer`, which is what the mock promises to report.
"""

import asyncio
import json
import random
import select
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from gateway.mock.server import parse_directives, reply_text, token_pieces
from gateway.tokenizer import CL100K, count_message_tokens, count_tokens

ROOT = Path(__file__).resolve().parent.parent
# The mock bills claude-* names with cl100k_base, standing in for Claude's tokenizer (gateway/mock/server.py).
CLAUDE = {"encoding": CL100K}
AZURE_VERSION = "2024-10-21"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


@dataclass
class MockServer:
    url: str
    process: subprocess.Popen

    def requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_mock/requests", timeout=5) as response:
            return json.loads(response.read())

    def clear(self) -> None:
        request = urllib.request.Request(f"{self.url}/_mock/requests", method="DELETE")
        urllib.request.urlopen(request, timeout=5).close()


def start_mock(*args: str) -> tuple[MockServer, Any]:
    """Start `manage.py mockllm --port 0`, read the port from its one line, wait until /health answers."""
    stderr = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "mockllm", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("mockllm listening on http://"):
        process.kill()
        stderr.seek(0)
        pytest.fail(f"mockllm did not start: {line!r} {stderr.read()}")
    server = MockServer(url=line.split()[-1], process=process)
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=1) as response:
                assert json.loads(response.read()) == {"status": "ok"}
                return server, stderr
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop_mock(server: MockServer, stderr: Any) -> None:
    server.process.terminate()
    server.process.wait(timeout=10)
    stderr.seek(0)
    output = stderr.read()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server, stderr = start_mock()
    yield server
    stop_mock(server, stderr)


def openai_client(mock: MockServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mock.url}/v1", api_key="sk-test", max_retries=0, timeout=10)


def azure_client(mock: MockServer) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=mock.url, api_key="azure-key", api_version=AZURE_VERSION, max_retries=0, timeout=10
    )


def anthropic_client(mock: MockServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock.url, api_key="sk-ant-test", max_retries=0, timeout=10)


def raw_post(url: str, body: object, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- OpenAI ---------------------------------------------------------------------------------------------


def test_health_and_model_lists(mock):
    assert "gpt-4o-mini" in [model.id for model in openai_client(mock).models.list()]
    assert "claude-haiku-4-5" in [model.id for model in anthropic_client(mock).models.list()]


def test_openai_reply_is_deterministic_and_usage_comes_from_the_tokenizer(mock):
    client = openai_client(mock)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rivers."}]

    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    text = completion.choices[0].message.content
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert text.startswith("Mock reply from gpt-4o-mini:")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == count_message_tokens(messages)
    assert completion.usage.completion_tokens == count_tokens(text)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    again = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert again.choices[0].message.content == text
    assert again.id != completion.id
    other = client.chat.completions.create(model="gpt-4o-mini", messages=user("Tell me about lakes."))
    assert other.choices[0].message.content != text


def test_openai_stream_with_include_usage_matches_the_json_reply(mock):
    client = openai_client(mock)
    messages = user("Stream me something.")
    expected = client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )

    content, usage_chunks = chunks[:-1], chunks[-1:]
    assert all(chunk.choices for chunk in content)
    assert usage_chunks[0].choices == []
    assert all("usage" in chunk.model_fields_set and chunk.usage is None for chunk in content)
    assert content[0].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for chunk in content] == [None] * (len(content) - 1) + ["stop"]
    text = "".join(chunk.choices[0].delta.content for chunk in content)
    assert text == expected.choices[0].message.content
    usage = usage_chunks[0].usage
    assert len(content) == usage.completion_tokens == count_tokens(text)
    assert usage.prompt_tokens == count_message_tokens(messages)
    assert usage.model_dump() == expected.usage.model_dump()


def test_openai_stream_without_include_usage_has_no_usage_chunk(mock):
    chunks = list(
        openai_client(mock).chat.completions.create(model="gpt-4o-mini", messages=user("No usage."), stream=True)
    )

    assert all(chunk.choices for chunk in chunks)
    assert not any("usage" in chunk.model_fields_set for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_options_on_a_json_request_is_refused_like_the_real_api(mock):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(mock).chat.completions.create(
            model="gpt-4o-mini", messages=user("hi"), stream_options={"include_usage": True}
        )
    assert caught.value.param == "stream_options"


def test_max_tokens_truncates_with_finish_reason_length(mock):
    client = openai_client(mock)
    full = client.chat.completions.create(model="gpt-4o-mini", messages=user("Long one."))

    cut = client.chat.completions.create(model="gpt-4o-mini", messages=user("Long one."), max_completion_tokens=3)
    legacy = client.chat.completions.create(model="gpt-4o-mini", messages=user("Long one."), max_tokens=3)
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=user("Long one."), max_tokens=3, stream=True)
    )

    expected_text = "".join(token_pieces(full.choices[0].message.content)[:3])
    for completion in (cut, legacy):
        assert completion.choices[0].message.content == expected_text
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 3
    assert len(chunks) == 3
    assert chunks[-1].choices[0].finish_reason == "length"


def test_words_directive_sets_the_reply_length(mock):
    client = openai_client(mock)

    five = client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:words=5]] go"))
    forty = client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:words=40]] go"))
    capped = client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:words=40]] go"), max_tokens=10)

    assert five.usage.completion_tokens == 5
    assert five.choices[0].message.content == "Mock reply from gpt-4o-mini"[: len(five.choices[0].message.content)]
    assert forty.usage.completion_tokens == 40
    assert (capped.usage.completion_tokens, capped.choices[0].finish_reason) == (10, "length")


def test_stop_strings_cut_the_reply(mock):
    completion = openai_client(mock).chat.completions.create(
        model="gpt-4o-mini", messages=user("Stop early."), stop=[" from", "zzz"]
    )
    assert completion.choices[0].message.content == "Mock reply"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 2


def test_cached_tokens_are_inside_openai_prompt_tokens(mock):
    messages = user("Cache me [[mock:cached=5]]")
    completion = openai_client(mock).chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.usage.prompt_tokens == count_message_tokens(messages)
    assert completion.usage.prompt_tokens_details.cached_tokens == 5


def test_openai_requires_a_bearer_key(mock):
    status, body = raw_post(f"{mock.url}/v1/chat/completions", {"model": "m", "messages": user("hi")}, {})

    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_a_429_is_a_rate_limit_error_with_retry_headers(mock):
    client = openai_client(mock)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:status=429]]"))

    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert set(error.body) == {"message", "type", "param", "code"}
    assert error.response.headers["retry-after"] == "1"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-reset-requests"] == "1s"
    assert "x-ratelimit-limit-tokens" in error.response.headers
    with pytest.raises(openai.RateLimitError) as slower:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:status=429]][[mock:retry_after=7]]"))
    assert slower.value.response.headers["retry-after"] == "7"


def test_server_errors_and_exhausted_quota(mock):
    client = openai_client(mock)
    with pytest.raises(openai.InternalServerError) as server_error:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:status=503]]"))
    with pytest.raises(openai.RateLimitError) as quota:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:quota]]"))

    assert server_error.value.status_code == 503
    assert server_error.value.type == "server_error"
    assert quota.value.code == "insufficient_quota"


def test_unknown_directive_is_a_bad_request(mock):
    with pytest.raises(openai.BadRequestError, match="mock:statsu=500"):
        openai_client(mock).chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:statsu=500]]"))


def test_latency_directive_delays_the_answer(mock):
    started = time.monotonic()
    openai_client(mock).chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:latency_ms=300]]"))
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("pacing", ["", "[[mock:chunk_delay_ms=5]]"])
def test_break_after_drops_an_openai_stream_without_usage(mock, pacing):
    stream = openai_client(mock).chat.completions.create(
        model="gpt-4o-mini",
        messages=user(f"Break [[mock:break_after=3]] {pacing}"),
        stream=True,
        stream_options={"include_usage": True},
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)  # keeps what arrived before the error

    assert len(received) == 3
    assert all(chunk.choices and chunk.usage is None for chunk in received)


def test_a_client_leaving_a_paced_stream_is_not_a_server_error(mock):
    # The module fixture fails on any traceback in the server's output when it stops.
    stream = openai_client(mock).chat.completions.create(
        model="gpt-4o-mini", messages=user("[[mock:words=50]] [[mock:chunk_delay_ms=20]]"), stream=True
    )
    first = next(iter(stream))
    stream.close()
    time.sleep(0.1)

    assert first.choices[0].delta.content == "Mock"
    assert openai_client(mock).chat.completions.create(model="gpt-4o-mini", messages=user("still up")).choices


def test_break_after_cuts_a_json_response(mock):
    with pytest.raises(openai.APIConnectionError):
        openai_client(mock).chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:break_after=0]]"))


def test_stream_error_is_an_error_chunk_after_http_200_for_openai(mock):
    stream = openai_client(mock).chat.completions.create(
        model="gpt-4o-mini", messages=user("[[mock:words=6]] [[mock:stream_error]]"), stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="server had an error"):
        received.extend(stream)  # keeps what arrived before the error
    assert len(received) == 3


def test_openai_tool_call_json_and_stream(mock):
    client = openai_client(mock)
    messages = user("Weather please [[mock:tool]]")

    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
    with client.chat.completions.stream(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]) as stream:
        streamed = stream.get_final_completion()
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=user("no tool"), tools=[WEATHER_TOOL])

    choice = completion.choices[0]
    call = choice.message.tool_calls[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "unit": "c"}
    assert completion.usage.completion_tokens == count_tokens("get_weather") + count_tokens(call.function.arguments)
    streamed_call = streamed.choices[0].message.tool_calls[0]
    assert streamed.choices[0].finish_reason == "tool_calls"
    assert (streamed_call.function.name, streamed_call.function.arguments) == ("get_weather", call.function.arguments)
    assert plain.choices[0].finish_reason == "stop"


def test_openai_stream_helper_accumulates_the_reply(mock):
    client = openai_client(mock)
    messages = user("Helper.")
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=messages, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    expected = client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert final.choices[0].message.content == expected.choices[0].message.content
    assert final.usage.completion_tokens == expected.usage.completion_tokens


# --- Azure OpenAI ---------------------------------------------------------------------------------------


def test_azure_reports_the_deployment_and_the_request_is_recorded(mock):
    mock.clear()
    messages = user("Hello Azure.")

    completion = azure_client(mock).chat.completions.create(model="gpt4o-prod-deployment", messages=messages)

    assert completion.model == "gpt4o-prod-deployment"
    assert completion.choices[0].message.content.startswith("Mock reply from gpt4o-prod-deployment:")
    assert completion.usage.prompt_tokens == count_message_tokens(messages)
    assert completion.usage.completion_tokens == count_tokens(completion.choices[0].message.content)
    [record] = mock.requests()
    assert record["method"] == "POST"
    assert record["path"] == "/openai/deployments/gpt4o-prod-deployment/chat/completions"
    assert record["query"] == {"api-version": AZURE_VERSION}
    assert record["headers"]["api-key"] == "azure-key"
    assert record["body"]["messages"] == messages


def test_azure_stream_starts_with_prompt_filter_results_like_the_real_service(mock):
    chunks = list(
        azure_client(mock).chat.completions.create(
            model="dep", messages=user("Azure stream."), stream=True, stream_options={"include_usage": True}
        )
    )

    assert chunks[0].choices == []
    assert chunks[0].model_extra["prompt_filter_results"][0]["prompt_index"] == 0
    content = chunks[1:-1]
    text = "".join(chunk.choices[0].delta.content for chunk in content)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(content) == count_tokens(text)
    assert {chunk.model for chunk in content} == {"dep"}


def test_azure_requires_api_key_and_api_version(mock):
    path = f"{mock.url}/openai/deployments/dep/chat/completions"
    body = {"messages": user("hi")}

    no_key, _ = raw_post(f"{path}?api-version={AZURE_VERSION}", body, {})
    no_version, error = raw_post(path, body, {"api-key": "k"})
    bearer_only, _ = raw_post(f"{path}?api-version={AZURE_VERSION}", body, {"authorization": "Bearer k"})

    assert (no_key, no_version, bearer_only) == (401, 400, 401)
    assert error["error"]["code"] == "MissingApiVersionParameter"


def test_azure_content_filter_blocks_the_prompt_or_the_output(mock):
    client = azure_client(mock)
    with pytest.raises(openai.BadRequestError) as blocked:
        client.chat.completions.create(model="dep", messages=user("[[mock:content_filter]]"))
    filtered = client.chat.completions.create(model="dep", messages=user("[[mock:filtered_output]]"))
    chunks = list(client.chat.completions.create(model="dep", messages=user("[[mock:filtered_output]]"), stream=True))

    assert blocked.value.status_code == 400
    assert blocked.value.code == "content_filter"
    assert filtered.choices[0].finish_reason == "content_filter"
    assert chunks[-1].choices[0].finish_reason == "content_filter"


# --- Anthropic ------------------------------------------------------------------------------------------


def test_anthropic_message_and_usage(mock):
    system = "You are terse."
    messages = user("Name a river.")

    message = anthropic_client(mock).messages.create(
        model="claude-haiku-4-5", max_tokens=200, system=system, messages=messages
    )

    text = message.content[0].text
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-haiku-4-5")
    assert message.content[0].type == "text"
    assert text.startswith("Mock reply from claude-haiku-4-5:")
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.input_tokens == count_message_tokens(messages, **CLAUDE) + count_tokens(system, **CLAUDE)
    assert message.usage.output_tokens == count_tokens(text, **CLAUDE)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0


def test_anthropic_stream_sends_the_real_event_sequence_with_cumulative_usage(mock):
    client = anthropic_client(mock)
    kwargs = {"model": "claude-haiku-4-5", "max_tokens": 200, "messages": user("Stream, Claude.")}
    expected = client.messages.create(**kwargs)

    events = list(client.messages.create(**kwargs, stream=True))
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    raw = urllib.request.Request(
        f"{mock.url}/v1/messages",
        data=json.dumps({**kwargs, "stream": True}).encode(),
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01", "content-type": "application/json"},
    )
    with urllib.request.urlopen(raw, timeout=5) as response:
        raw_names = [line[7:] for line in response.read().decode().splitlines() if line.startswith("event: ")]

    deltas = [event for event in events if event.type == "content_block_delta"]
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(deltas),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert raw_names[:3] == ["message_start", "content_block_start", "ping"]
    text = "".join(event.delta.text for event in deltas)
    assert text == expected.content[0].text
    assert events[0].message.usage.input_tokens == expected.usage.input_tokens
    assert events[0].message.usage.output_tokens == 1
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == len(deltas) == expected.usage.output_tokens == count_tokens(text, **CLAUDE)
    assert final.usage.output_tokens == expected.usage.output_tokens
    assert final.usage.input_tokens == expected.usage.input_tokens
    assert final.content[0].text == text


def test_anthropic_cache_reads_and_writes_are_outside_input_tokens(mock):
    client = anthropic_client(mock)
    messages = user("Cached prompt [[mock:cached=4]] [[mock:cache_write=6]]")
    total = count_message_tokens(messages, **CLAUDE)

    message = client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=messages)
    start = next(iter(client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=messages, stream=True)))

    for usage in (message.usage, start.message.usage):
        assert usage.input_tokens == total - 10
        assert usage.cache_read_input_tokens == 4
        assert usage.cache_creation_input_tokens == 6


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_errors_have_the_documented_types(mock, status, error_class, error_type):
    with pytest.raises(error_class) as caught:
        anthropic_client(mock).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=user(f"[[mock:status={status}]]")
        )

    assert caught.value.status_code == status
    assert caught.value.body["type"] == "error"
    assert caught.value.type == error_type
    assert caught.value.request_id.startswith("req_")
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_anthropic_requires_its_headers_and_a_valid_body(mock):
    url = f"{mock.url}/v1/messages"
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": user("hi")}
    version = {"anthropic-version": "2023-06-01"}

    no_key = raw_post(url, body, version)
    with_x_api_key = raw_post(url, body, {"x-api-key": "k", **version})
    no_version = raw_post(url, body, {"x-api-key": "k"})
    no_max_tokens = raw_post(url, {**body, "max_tokens": None}, {"x-api-key": "k", **version})
    system_role = raw_post(
        url, {**body, "messages": [{"role": "system", "content": "x"}, *user("hi")]}, {"x-api-key": "k", **version}
    )

    assert (no_key[0], no_key[1]["error"]["type"]) == (401, "authentication_error")
    assert (with_x_api_key[0], with_x_api_key[1]["type"]) == (200, "message")
    assert (no_version[0], no_version[1]["error"]["type"]) == (400, "invalid_request_error")
    assert no_max_tokens[0] == 400
    assert system_role[0] == 400
    assert "system" in system_role[1]["error"]["message"]


def test_anthropic_stop_sequences_and_max_tokens(mock):
    client = anthropic_client(mock)

    stopped = client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=user("Stop."), stop_sequences=[" from"]
    )
    capped = client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=user("Cap."))
    refused = client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=user("[[mock:filtered_output]]"))

    assert (stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence) == (
        "Mock reply",
        "stop_sequence",
        " from",
    )
    assert (capped.content[0].text, capped.stop_reason, capped.usage.output_tokens) == ("Mock reply", "max_tokens", 2)
    assert refused.stop_reason == "refusal"


def test_anthropic_stream_error_raises_in_the_sdk_after_http_200(mock):
    stream = anthropic_client(mock).messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=user("[[mock:words=6]] [[mock:stream_error]]"), stream=True
    )
    received = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        received.extend(event.type for event in stream)

    assert caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"
    assert received.count("content_block_delta") == 3
    assert "message_stop" not in received


def test_break_after_drops_an_anthropic_stream_before_message_stop(mock):
    stream = anthropic_client(mock).messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=user("[[mock:break_after=2]]"), stream=True
    )
    received = []
    # The anthropic SDK does not wrap a broken body in its own error: httpx2's error surfaces.
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        received.extend(event.type for event in stream)

    assert received == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]


def test_anthropic_tool_use_json_and_stream(mock):
    client = anthropic_client(mock)
    tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    kwargs = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": user("[[mock:tool]]"), "tools": [tool]}

    message = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()

    for result in (message, streamed):
        block = result.content[0]
        assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"city": "mock", "unit": "c"})
        assert block.id.startswith("toolu_")
        assert result.stop_reason == "tool_use"
    assert message.usage.output_tokens == count_tokens("get_weather", **CLAUDE) + count_tokens(
        '{"city":"mock","unit":"c"}', **CLAUDE
    )
    assert streamed.usage.output_tokens == message.usage.output_tokens


# --- async clients, the log, the command ----------------------------------------------------------------


def test_async_clients_parse_json_and_streams(mock):
    async def exercise() -> tuple[str, str, str, int]:
        async with (
            openai.AsyncOpenAI(base_url=f"{mock.url}/v1", api_key="k", max_retries=0) as oai,
            openai.AsyncAzureOpenAI(azure_endpoint=mock.url, api_key="k", api_version=AZURE_VERSION) as azure,
            anthropic.AsyncAnthropic(base_url=mock.url, api_key="k", max_retries=0) as claude,
        ):
            stream = await oai.chat.completions.create(
                model="gpt-4o-mini", messages=user("async"), stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
            completion = await azure.chat.completions.create(model="dep", messages=user("async"))
            async with claude.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=user("async")) as s:
                message = await s.get_final_message()
            text = "".join(chunk.choices[0].delta.content for chunk in chunks if chunk.choices)
            return text, completion.model, message.content[0].text, chunks[-1].usage.completion_tokens

    text, azure_model, claude_text, completion_tokens = asyncio.run(exercise())

    assert text.startswith("Mock reply from gpt-4o-mini:")
    assert completion_tokens == count_tokens(text)
    assert azure_model == "dep"
    assert claude_text.startswith("Mock reply from claude-haiku-4-5:")


def test_the_request_log_records_model_calls_and_can_be_cleared(mock):
    mock.clear()
    assert mock.requests() == []

    anthropic_client(mock).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("log me"))
    urllib.request.urlopen(f"{mock.url}/health", timeout=5).close()

    [record] = mock.requests()
    assert record["path"] == "/v1/messages"
    # anthropic>=2 sends the key as a bearer token, not x-api-key.
    assert record["headers"]["authorization"] == "Bearer sk-ant-test"
    assert record["headers"]["anthropic-version"]
    assert record["body"]["model"] == "claude-haiku-4-5"
    mock.clear()
    assert mock.requests() == []


def test_cli_fault_rate_is_seeded_and_latency_and_chunk_delay_apply():
    server, stderr = start_mock(
        "--fault-rate", "0.5", "--seed", "11", "--fault-status", "503", "--latency-ms", "100", "--chunk-delay-ms", "30"
    )
    try:
        draws = random.Random(11)
        expected_failures = [draws.random() < 0.5 for _ in range(6)]
        assert True in expected_failures
        assert False in expected_failures
        client = openai_client(server)
        for should_fail in expected_failures:
            started = time.monotonic()
            if should_fail:
                with pytest.raises(openai.InternalServerError) as caught:
                    client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:words=4]]"), stream=True)
                assert caught.value.status_code == 503
                assert time.monotonic() - started >= 0.1
            else:
                chunks = list(
                    client.chat.completions.create(model="gpt-4o-mini", messages=user("[[mock:words=4]]"), stream=True)
                )
                assert len(chunks) == 4
                assert time.monotonic() - started >= 0.1 + 3 * 0.03
    finally:
        stop_mock(server, stderr)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])  # noqa: S104
def test_the_command_refuses_non_loopback_hosts(host):
    with pytest.raises(CommandError, match="loopback"):
        call_command("mockllm", host=host, port=0)


# --- pure helpers ---------------------------------------------------------------------------------------


def test_directives_combine_and_plain_text_has_none():
    directives = parse_directives("hi [[mock:status=429]] and [[mock:cached=12]][[mock:stream_error]]")

    assert (directives.status, directives.cached, directives.stream_error) == (429, 12, True)
    assert parse_directives("just [[text]] and [mock:status=500]") == parse_directives("")


def test_token_pieces_are_one_per_token_and_join_back():
    alphabet = "ab Z_9 \n\t.,-"
    rng = random.Random(5)
    for _ in range(300):
        text = "x" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        pieces = token_pieces(text)
        assert "".join(pieces) == text
        assert len(pieces) == count_tokens(text)


@pytest.mark.parametrize("text", ["中文和日本語のテキスト", "emoji 😀🎉👍🏽 and é", "\x00\ufffd tail"])
def test_a_token_ending_inside_a_character_travels_with_the_next(text):
    pieces = token_pieces(text, encoding=CL100K)

    assert "".join(pieces) == text
    assert 0 < len(pieces) <= count_tokens(text, encoding=CL100K)


def test_reply_keeps_model_names_whole():
    text = reply_text("my_deployment", "prompt")
    assert text.startswith("Mock reply from my_deployment:")
    assert "".join(token_pieces(text)) == text
