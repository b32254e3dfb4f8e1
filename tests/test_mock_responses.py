"""The mock provider's Responses API (gateway/mock/responses.py), called directly with the
unchanged openai SDK: the wire format the gateway forwards, and the state that makes a wrongly
routed continuation fail."""

import json

import openai
import pytest

from gateway.mock.server import billing_encoding
from gateway.tokenizer import count_message_tokens, count_tokens

TOOLS = [
    {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
]


@pytest.fixture
def client(mock_llm):
    return openai.OpenAI(base_url=f"{mock_llm}/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def azure(mock_llm):
    return openai.AzureOpenAI(azure_endpoint=mock_llm, api_key="sk-test", api_version="2024-10-21", max_retries=0)


def test_usage_is_the_bpe_count_of_input_and_instructions(client):
    response = client.responses.create(model="gpt-4o-mini", input="hello there", instructions="be brief")
    encoding = billing_encoding("gpt-4o-mini")
    prompt = count_message_tokens([{"role": "user", "content": "hello there"}], encoding=encoding)
    assert response.usage.input_tokens == prompt + count_tokens("be brief", encoding=encoding)
    assert response.usage.output_tokens == count_tokens(response.output_text, encoding=encoding)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.status == "completed"


def test_the_stream_is_what_the_sdk_accumulates(client):
    with client.responses.stream(model="gpt-4o-mini", input="[[mock:words=5]] hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 5
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.usage.output_tokens == 5
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_a_function_call_then_its_output_then_text(client):
    first = client.responses.create(model="gpt-4o-mini", input="find it [[mock:tool]]", tools=TOOLS)
    call = first.output[0]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "lookup", {"q": "mock"})
    second = client.responses.create(
        model="gpt-4o-mini",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "found"}],
        tools=TOOLS,
    )
    assert second.output[0].type == "message"
    # The earlier turn is part of the prompt.
    assert second.usage.input_tokens > first.usage.input_tokens


def test_reasoning_and_cache_directives(client):
    response = client.responses.create(
        model="gpt-4o-mini",
        input="[[mock:reasoning=9]] [[mock:cached=4]] [[mock:cache_write=3]] think",
        include=["reasoning.encrypted_content"],
    )
    assert response.output[0].type == "reasoning"
    assert response.output[0].encrypted_content
    assert response.usage.output_tokens_details.reasoning_tokens == 9
    details = response.usage.input_tokens_details
    assert (details.cached_tokens, details.cache_write_tokens) == (4, 3)


def test_max_output_tokens_makes_an_incomplete_response(client):
    response = client.responses.create(model="gpt-4o-mini", input="[[mock:words=9]] hi", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_state_retrieve_input_items_delete_and_unknown_ids(client):
    response = client.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": "one"}])
    assert client.responses.retrieve(response.id).output_text == response.output_text
    items = client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in items.data] == ["one"]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", previous_response_id=response.id, input="again")
    unstored = client.responses.create(model="gpt-4o-mini", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_azure_serves_responses_under_openai_with_api_key(azure):
    with azure.responses.stream(model="my-deployment", input="hi") as stream:
        final = stream.get_final_response()
    assert final.model == "my-deployment"
    assert azure.responses.retrieve(final.id).id == final.id
