"""Responses API <-> Anthropic Messages translation (gateway/translate_responses.py): pure, no database.

Every shape is checked with the SDKs' own parsers: requests against the anthropic SDK's
MessageCreateParams, responses against openai's Response, streams through openai's
ResponseStreamState and through `client.responses.stream()` itself (over an in-process transport).
"""

import json

import httpx2
import openai
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from anthropic.types import message_create_params as anthropic_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.translate_responses import (
    DEFAULT_MAX_TOKENS,
    REASONING_BUDGETS,
    AnthropicToResponsesStream,
    StreamError,
    TranslationError,
    anthropic_message_to_response,
    input_items,
    responses_request_to_anthropic,
)

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF_B64 = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f", None]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
TIME_TOOL = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}

ANTHROPIC_REQUEST = {
    True: TypeAdapter(anthropic_params.MessageCreateParamsStreaming),
    False: TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming),
}
ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)


def _forced(value):
    """Walk pydantic's lazy iterators so that every nested item really gets validated."""
    if isinstance(value, dict):
        return {k: _forced(v) for k, v in value.items()}
    if isinstance(value, str | bytes | int | float | bool | None):
        return value
    return [_forced(v) for v in value]


def assert_valid_anthropic_request(body):
    _forced(ANTHROPIC_REQUEST[bool(body.get("stream"))].validate_python(body))
    roles = [message["role"] for message in body["messages"]]
    assert roles[0] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))


def _to_anthropic(body, history=()):
    out = responses_request_to_anthropic(body, upstream_model="claude-sonnet-4-5", history=list(history))
    assert_valid_anthropic_request(out)
    return out


def _refused(body, history=()):
    with pytest.raises(TranslationError) as exc:
        responses_request_to_anthropic(body, upstream_model="claude-sonnet-4-5", history=list(history))
    return exc.value


def _user(text):
    return {"role": "user", "content": text}


# --- input_items -----------------------------------------------------------------------------


def test_a_string_input_is_one_user_message_item_with_an_id():
    items = input_items({"model": "m", "input": "Hello"})

    assert len(items) == 1
    assert items[0]["id"].startswith("msg_")
    assert {k: v for k, v in items[0].items() if k != "id"} == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Hello"}],
    }


def test_input_items_keep_given_ids_and_fill_missing_ones():
    items = input_items(
        {
            "input": [
                {"role": "user", "content": "a"},
                {"type": "message", "role": "assistant", "content": "b", "id": "msg_given"},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "42"},
            ]
        }
    )

    assert [item["type"] for item in items] == ["message", "message", "function_call", "function_call_output"]
    assert items[1]["id"] == "msg_given"
    assert items[1]["content"] == [{"type": "output_text", "text": "b", "annotations": []}]
    assert items[2]["id"].startswith("fc_")
    assert items[3]["id"].startswith("fco_")
    assert len({item["id"] for item in items}) == 4


def test_input_items_refuse_what_is_not_an_item():
    with pytest.raises(TranslationError) as exc:
        input_items({"input": ["just a string"]})
    assert exc.value.param == "input[0]"
    with pytest.raises(TranslationError) as exc:
        input_items({"input": 42})
    assert exc.value.param == "input"


# --- request ---------------------------------------------------------------------------------


def test_a_string_input_with_instructions():
    out = _to_anthropic({"model": "claude", "input": "Hi", "instructions": "Be brief."})

    assert out == {
        "model": "claude-sonnet-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "Hi"}],
        "system": "Be brief.",
    }


def test_max_output_tokens_becomes_max_tokens():
    assert _to_anthropic({"model": "m", "input": "Hi", "max_output_tokens": 123})["max_tokens"] == 123


def test_developer_and_system_items_join_the_instructions_in_system():
    out = _to_anthropic(
        {
            "model": "m",
            "instructions": "Rule one.",
            "input": [
                {"role": "developer", "content": "Rule two."},
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Rule three."}]},
                _user("Hi"),
                {"role": "developer", "content": "Rule four."},
            ],
        }
    )

    assert out["system"] == [
        {"type": "text", "text": "Rule one."},
        {"type": "text", "text": "Rule two."},
        {"type": "text", "text": "Rule three."},
        {"type": "text", "text": "Rule four."},
    ]
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_text_and_images_by_url_and_by_data_url():
    out = _to_anthropic(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in these?"},
                        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"},
                        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "low"},
                    ],
                }
            ],
        }
    )

    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        }
    ]


def test_files_become_documents():
    text_b64 = "aGVsbG8gd29ybGQ="  # "hello world"
    out = _to_anthropic(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_file",
                            "filename": "a.pdf",
                            "file_data": f"data:application/pdf;base64,{PDF_B64}",
                        },
                        {"type": "input_file", "filename": "b.pdf", "file_data": PDF_B64},
                        {"type": "input_file", "file_url": "https://example.com/c.pdf"},
                        {"type": "input_file", "filename": "d.txt", "file_data": f"data:text/plain;base64,{text_b64}"},
                    ],
                }
            ],
        }
    )

    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
            "title": "a.pdf",
        },
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
            "title": "b.pdf",
        },
        {"type": "document", "source": {"type": "url", "url": "https://example.com/c.pdf"}},
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "hello world"},
            "title": "d.txt",
        },
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "file_id": "file-1", "detail": "auto"}, "input[0].content[0]"),
        (
            {"type": "input_image", "image_url": "data:image/bmp;base64,AAAA", "detail": "auto"},
            "input[0].content[0].image_url",
        ),
        ({"type": "input_image", "image_url": "ftp://x/y.png", "detail": "auto"}, "input[0].content[0].image_url"),
        ({"type": "input_file", "file_id": "file-1"}, "input[0].content[0]"),
        ({"type": "input_file", "file_data": "data:application/zip;base64,AAAA"}, "input[0].content[0]"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "input[0].content[0].type"),
    ],
)
def test_content_the_model_cannot_read_is_refused_by_name(part, param):
    error = _refused({"model": "m", "input": [{"role": "user", "content": [part]}]})

    assert error.param == param


def test_function_tools_tool_choice_and_parallel_calls():
    out = _to_anthropic(
        {
            "model": "m",
            "input": "Weather in Paris?",
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
        }
    )

    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": WEATHER_TOOL["parameters"],
            "strict": True,
        },
        {"name": "get_time", "input_schema": TIME_TOOL["parameters"]},
    ]
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", None),
        (None, None),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "name": "get_time"}, {"type": "tool", "name": "get_time"}),
    ],
)
def test_tool_choice(choice, expected):
    body = {"model": "m", "input": "Hi", "tools": [WEATHER_TOOL, TIME_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice

    out = _to_anthropic(body)

    assert out.get("tool_choice") == expected


def test_allowed_tools_send_only_the_allowed_ones():
    out = _to_anthropic(
        {
            "model": "m",
            "input": "Hi",
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_time"}],
            },
        }
    )

    assert [tool["name"] for tool in out["tools"]] == ["get_time"]
    assert out["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search"},
        {"type": "web_search_preview"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        {"type": "mcp", "server_label": "x", "server_url": "https://x"},
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
        {"type": "local_shell"},
        {"type": "custom", "name": "apply_patch"},
    ],
)
def test_built_in_tools_are_refused_by_name(tool):
    error = _refused({"model": "m", "input": "Hi", "tools": [WEATHER_TOOL, tool]})

    assert error.param == "tools[1].type"
    assert repr(tool["type"]) in error.message


def test_a_tool_choice_naming_a_built_in_tool_is_refused():
    error = _refused(
        {"model": "m", "input": "Hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "web_search_preview"}}
    )

    assert error.param == "tool_choice"


def test_function_calls_and_their_outputs_become_tool_use_and_one_user_turn_of_results():
    out = _to_anthropic(
        {
            "model": "m",
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "input": [
                _user("Weather and time in Paris?"),
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "10:00"}],
                },
            ],
        }
    )

    assert out["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "10:00"}]},
            ],
        },
    ]


def test_a_user_message_after_tool_results_joins_their_turn_after_them():
    out = _to_anthropic(
        {
            "model": "m",
            "input": [
                _user("Go"),
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""},
                _user("also this"),
                {"type": "function_call_output", "call_id": "c1", "output": ""},
            ],
        }
    )

    assert out["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "c1"}, {"type": "text", "text": "also this"}],
        },
    ]


def test_a_function_call_without_its_output_is_refused():
    error = _refused(
        {
            "model": "m",
            "input": [_user("Go"), {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
        }
    )

    assert error.param == "input"
    assert "c1" in error.message


def test_a_call_left_unanswered_among_answered_ones_is_refused():
    error = _refused(
        {
            "model": "m",
            "input": [
                _user("Go"),
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "x"},
                _user("and?"),
            ],
        }
    )

    assert error.param == "input"
    assert "'c2'" in error.message


def test_an_output_without_its_function_call_is_refused():
    error = _refused(
        {"model": "m", "input": [_user("Go"), {"type": "function_call_output", "call_id": "c9", "output": "x"}]}
    )

    assert error.param == "input"
    assert "c9" in error.message


def test_function_call_arguments_must_be_a_json_object():
    error = _refused(
        {
            "model": "m",
            "input": [
                _user("Go"),
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "[1"},
                {"type": "function_call_output", "call_id": "c1", "output": "x"},
            ],
        }
    )

    assert error.param == "input[1].arguments"


def test_history_comes_first_and_the_new_input_continues_it():
    first = {"model": "m", "input": "Weather in Paris?", "tools": [WEATHER_TOOL]}
    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "unit": None}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    response = anthropic_message_to_response(reply, model="claude", response_id="resp_1", request=first, created_at=1)
    history = input_items(first) + response["output"]

    out = _to_anthropic(
        {
            "model": "m",
            "previous_response_id": "resp_1",
            "tools": [WEATHER_TOOL],
            "input": [{"type": "function_call_output", "call_id": "toolu_1", "output": "18C"}],
        },
        history=history,
    )

    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": reply["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
    ]


def test_instructions_are_not_carried_over_from_history():
    history = [
        {"id": "msg_a", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {
            "id": "msg_b",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}],
        },
    ]

    out = _to_anthropic({"model": "m", "instructions": "New rules.", "input": "And now?"}, history=history)

    assert out["system"] == "New rules."
    assert out["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And now?"},
    ]


def test_an_item_reference_stands_for_the_earlier_item():
    history = [
        {"id": "msg_a", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"id": "msg_b", "type": "message", "role": "assistant", "content": "Hello"},
    ]

    out = _to_anthropic({"model": "m", "input": [{"type": "item_reference", "id": "msg_a"}]}, history=history)
    error = _refused({"model": "m", "input": [{"type": "item_reference", "id": "msg_zz"}]}, history=history)

    assert out["messages"] == [_user("Hi"), {"role": "assistant", "content": "Hello"}, _user("Hi")]
    assert error.param == "input[0].id"


def test_an_unknown_item_type_is_refused_by_name():
    error = _refused(
        {"model": "m", "input": [_user("Hi"), {"type": "computer_call_output", "call_id": "c", "output": {}}]}
    )

    assert error.param == "input[1].type"


def test_a_conversation_must_start_with_the_user():
    error = _refused({"model": "m", "input": [{"role": "assistant", "content": "I speak first."}]})

    assert error.param == "input"


def test_errors_in_stored_history_name_previous_response_id():
    error = _refused({"model": "m", "input": "Hi"}, history=[{"type": "web_search_call", "id": "ws_1"}])

    assert error.param == "previous_response_id.type"


@pytest.mark.parametrize(
    ("effort", "budget", "max_tokens"),
    [
        ("low", 1024, 1024 + DEFAULT_MAX_TOKENS),
        ("medium", 4096, 4096 + DEFAULT_MAX_TOKENS),
        ("high", 16384, 16384 + DEFAULT_MAX_TOKENS),
        ("xhigh", 24576, 24576 + DEFAULT_MAX_TOKENS),
        ("max", 28000, 32000),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(effort, budget, max_tokens):
    out = _to_anthropic({"model": "m", "input": "Think.", "reasoning": {"effort": effort, "summary": "auto"}})

    assert REASONING_BUDGETS[effort] == budget
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == max_tokens


@pytest.mark.parametrize("effort", ["none", "minimal", None])
def test_no_or_minimal_reasoning_means_no_thinking(effort):
    assert "thinking" not in _to_anthropic({"model": "m", "input": "Hi", "reasoning": {"effort": effort}})


def test_max_output_tokens_bounds_the_thinking_budget():
    out = _to_anthropic({"model": "m", "input": "Hi", "reasoning": {"effort": "high"}, "max_output_tokens": 6000})

    assert out["max_tokens"] == 6000
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert _refused({"model": "m", "input": "Hi", "reasoning": {"effort": "low"}, "max_output_tokens": 1024}).param == (
        "max_output_tokens"
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 0.2}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        ({"reasoning": {"effort": "enormous"}}, "reasoning.effort"),
    ],
)
def test_what_thinking_cannot_do_is_refused(extra, param):
    body = {"model": "m", "input": "Hi", "reasoning": {"effort": "low"}, **extra}

    assert _refused(body).param == param


def test_sampling_and_user():
    assert _to_anthropic({"model": "m", "input": "Hi", "temperature": 1.5, "top_p": 0.5})["temperature"] == 1.0
    out = _to_anthropic({"model": "m", "input": "Hi", "top_p": 0.5, "safety_identifier": "u-1", "stream": True})
    assert out["top_p"] == 0.5
    assert out["metadata"] == {"user_id": "u-1"}
    assert out["stream"] is True


def test_reasoning_from_history_returns_as_thinking_only_when_thinking_is_on():
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Paris is in France.", "signature": "c2lnbmF0dXJl"},
            {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    first = {"model": "m", "input": "Weather?", "tools": [WEATHER_TOOL], "reasoning": {"effort": "low"}}
    response = anthropic_message_to_response(message, model="claude", response_id="resp_1", request=first, created_at=1)
    history = input_items(first) + response["output"]
    follow_up = {
        "model": "m",
        "tools": [WEATHER_TOOL],
        "input": [{"type": "function_call_output", "call_id": "toolu_1", "output": "18C"}],
    }

    thinking = _to_anthropic({**follow_up, "reasoning": {"effort": "low"}}, history=history)
    plain = _to_anthropic(follow_up, history=history)

    assert thinking["messages"][1] == {"role": "assistant", "content": message["content"]}
    assert plain["messages"][1] == {"role": "assistant", "content": [message["content"][2]]}


def test_a_tool_loop_begun_without_thinking_continues_without_it():
    body = {
        "model": "m",
        "reasoning": {"effort": "high"},
        "input": [
            _user("Weather?"),
            {"type": "function_call", "call_id": "c1", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "10:00"},
        ],
    }

    out = _to_anthropic(body)
    fresh = _to_anthropic(
        {**body, "input": [*body["input"], {"role": "assistant", "content": "It is 10."}, _user("And?")]}
    )

    assert "thinking" not in out
    assert out["max_tokens"] == DEFAULT_MAX_TOKENS
    assert fresh["thinking"] == {"type": "enabled", "budget_tokens": REASONING_BUDGETS["high"]}


def test_reasoning_items_of_other_models_are_left_out():
    history = [
        {"id": "msg_a", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "gAAAAB-openai-blob"},
        {"id": "msg_b", "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hey"}]},
    ]

    out = _to_anthropic({"model": "m", "input": "Again", "reasoning": {"effort": "low"}}, history=history)

    assert out["messages"][1] == {"role": "assistant", "content": "Hey"}


def test_text_format_json_schema_becomes_output_config():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }

    out = _to_anthropic(
        {
            "model": "m",
            "input": "Hi",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}},
        }
    )

    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in _to_anthropic({"model": "m", "input": "Hi", "text": {"format": {"type": "text"}}})
    assert _refused({"model": "m", "input": "Hi", "text": {"format": {"type": "json_object"}}}).param == "text.format"


def test_fields_that_change_nothing_for_the_answer_are_accepted():
    out = _to_anthropic(
        {
            "model": "m",
            "input": "Hi",
            "store": False,
            "metadata": {"k": "v"},
            "previous_response_id": None,
            "include": ["reasoning.encrypted_content"],
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "truncation": "auto",
            "max_tool_calls": 3,
            "stream_options": {"include_obfuscation": False},
            "text": {"verbosity": "low"},
        }
    )

    assert out == {"model": "claude-sonnet-4-5", "max_tokens": DEFAULT_MAX_TOKENS, "messages": [_user("Hi")]}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"instructions": [{"role": "system", "content": "x"}]}, "instructions"),
        ({"n": 2}, "n"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(extra, param):
    assert _refused({"model": "m", "input": "Hi", **extra}).param == param


def test_a_malformed_body_is_a_translation_error_not_a_crash():
    assert _refused({"model": "m", "input": [{"type": "function_call", "name": "f"}]}).param == "call_id"
    with pytest.raises(TranslationError):
        responses_request_to_anthropic(["not", "a", "dict"], upstream_model="m", history=[])
    assert _refused({"model": "m"}).param == "input"


AGENTS_TOOL = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "close_agent",
            "description": "Close an agent.",
            "strict": False,
            "parameters": {"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]},
        }
    ],
}


def _dev(item_id, *texts):
    return {
        "type": "message",
        "id": item_id,
        "role": "developer",
        "content": [{"type": "input_text", "text": t} for t in texts],
    }


def _codex_body(**extra):
    """The shape of what Codex CLI sends (see the agents helper's capture): developer items with ids,
    function and namespace tools, store false, reasoning summary without effort, client_metadata."""
    return {
        "model": "claude-sonnet",
        "stream": True,
        "input": [
            _dev("msg_1", "You are Codex."),
            _dev("msg_2", "Sandbox: ", "read-only."),
            {"type": "message", "id": "msg_3", "role": "user", "content": [{"type": "input_text", "text": "<env/>"}]},
            {"type": "message", "id": "msg_4", "role": "user", "content": [{"type": "input_text", "text": "Say pong"}]},
        ],
        "tools": [TIME_TOOL, AGENTS_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "4f1c",
        "client_metadata": {"thread_id": "t", "x-codex-turn-metadata": "{}"},
        **extra,
    }


def test_a_codex_cli_request_translates():
    out = _to_anthropic(_codex_body())

    assert out["system"] == [
        {"type": "text", "text": "You are Codex."},
        {"type": "text", "text": "Sandbox: "},
        {"type": "text", "text": "read-only."},
    ]
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "<env/>"}, {"type": "text", "text": "Say pong"}]}
    ]
    assert [tool["name"] for tool in out["tools"]] == ["get_time", "multi_agent_v1__close_agent"]
    assert "thinking" not in out
    assert out["stream"] is True


def test_a_codex_cli_request_with_its_web_search_tool_is_refused_by_name():
    body = _codex_body()
    body["tools"] = [*body["tools"], {"type": "web_search", "external_web_access": False}]

    assert _refused(body).param == "tools[2].type"


def test_a_namespaced_call_comes_back_with_its_namespace_and_returns_joined():
    body = _codex_body(stream=False)
    tool_use = {"type": "tool_use", "id": "toolu_9", "name": "multi_agent_v1__close_agent", "input": {"target": "a1"}}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [tool_use],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    events = _stream_events(_tool_block("toolu_9", tool_use["name"], '{"target": "a1"}'), stop_reason="tool_use")

    response = anthropic_message_to_response(message, model="claude", response_id="resp_1", request=body, created_at=1)
    stream = AnthropicToResponsesStream(model="claude", response_id="resp_1", request=body, created_at=1)
    frames = [frame for event in events for frame in stream.feed(event)] + stream.finish()
    history = input_items(body) + response["output"]
    output = [{"type": "function_call_output", "call_id": "toolu_9", "output": "closed"}]
    follow_up = _to_anthropic({**body, "input": output}, history=history)

    call = Response.model_validate(response).output[0]
    assert (call.name, call.namespace, call.call_id) == ("close_agent", "multi_agent_v1", "toolu_9")
    assert _parse_frames(frames)[-1]["response"]["output"] == response["output"]
    assert Response.model_validate(response).tools[1].type == "namespace"
    assert follow_up["messages"][1]["content"] == [tool_use]


# --- response --------------------------------------------------------------------------------

USAGE = {
    "input_tokens": 1200,
    "output_tokens": 340,
    "cache_creation_input_tokens": 500,
    "cache_read_input_tokens": 7000,
}
REQUEST = {
    "model": "claude-sonnet",
    "input": "Weather in Paris?",
    "instructions": "Be brief.",
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
    "temperature": 0.3,
    "max_output_tokens": 2048,
    "metadata": {"k": "v"},
    "store": True,
}


def _message(*content, stop_reason="end_turn", usage=USAGE):
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _response(message, request=REQUEST):
    out = anthropic_message_to_response(
        message, model="claude-sonnet", response_id="resp_gw1", request=request, created_at=1765000000
    )
    return out, Response.model_validate(out)


def test_a_text_answer_is_a_completed_response_the_sdk_parses():
    raw, response = _response(_message({"type": "text", "text": "Sunny, 18C."}))

    assert response.id == "resp_gw1"
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Sunny, 18C."
    assert response.output[0].type == "message"
    assert response.output[0].role == "assistant"
    assert response.output[0].content[0].type == "output_text"
    assert "output_text" not in raw
    assert response.model == "claude-sonnet"
    assert response.created_at == 1765000000
    assert response.incomplete_details is None


def test_usage_counts_the_cache_in_the_input_as_openai_does():
    _, response = _response(_message({"type": "text", "text": "x"}))

    assert response.usage.input_tokens == 1200 + 500 + 7000
    assert response.usage.input_tokens_details.cached_tokens == 7000
    assert response.usage.input_tokens_details.cache_write_tokens == 500
    assert response.usage.output_tokens == 340
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.total_tokens == 1200 + 500 + 7000 + 340


def test_thinking_tokens_are_reasoning_tokens():
    usage = {"input_tokens": 10, "output_tokens": 90, "output_tokens_details": {"thinking_tokens": 60}}

    _, response = _response(_message({"type": "text", "text": "x"}, usage=usage))

    assert response.usage.output_tokens == 90
    assert response.usage.output_tokens_details.reasoning_tokens == 60


def test_tool_use_becomes_a_function_call_item():
    _, response = _response(
        _message(
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
            stop_reason="tool_use",
        )
    )

    assert response.status == "completed"
    call = response.output[1]
    assert call.type == "function_call"
    assert call.call_id == "toolu_01"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "c"}
    assert call.id.startswith("fc_")
    assert call.status == "completed"


def test_max_tokens_is_an_incomplete_response():
    _, response = _response(_message({"type": "text", "text": "Sunny and"}, stop_reason="max_tokens"))

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


def test_a_refusal_is_incomplete_for_content_filter():
    _, response = _response(_message({"type": "text", "text": "I can't help."}, stop_reason="refusal"))

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "content_filter"


def test_thinking_becomes_a_reasoning_item_with_its_summary():
    _, response = _response(
        _message(
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "b3BhcXVl"},
            {"type": "text", "text": "Sunny."},
        )
    )

    reasoning, redacted, answer = response.output
    assert reasoning.type == "reasoning"
    assert [part.text for part in reasoning.summary] == ["The user wants weather."]
    assert reasoning.encrypted_content
    assert redacted.type == "reasoning"
    assert redacted.summary == []
    assert redacted.encrypted_content
    assert response.output_text == "Sunny."


def test_the_request_is_echoed_as_openai_echoes_it():
    _, response = _response(_message({"type": "text", "text": "x"}))

    assert response.instructions == "Be brief."
    assert response.temperature == 0.3
    assert response.max_output_tokens == 2048
    assert response.metadata == {"k": "v"}
    assert response.store is True
    assert response.tool_choice == "auto"
    assert response.parallel_tool_calls is True
    assert response.tools[0].name == "get_weather"
    assert response.tools[0].strict is True
    assert response.text.format.type == "text"
    assert response.previous_response_id is None

    _, bare = _response(_message({"type": "text", "text": "x"}), request={"model": "m", "input": "x"})
    assert (bare.temperature, bare.top_p, bare.tools, bare.metadata, bare.store) == (1.0, 1.0, [], {}, True)


def test_server_tool_blocks_are_left_out():
    _, response = _response(
        _message(
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "text", "text": "Done."},
        )
    )

    assert [item.type for item in response.output] == ["message"]


# --- stream ----------------------------------------------------------------------------------


def _usage(**counts):
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        **counts,
    }


def _stream_events(*blocks, stop_reason="end_turn", final_usage=None):
    """A realistic Anthropic event sequence for `blocks` (each a list of events after its start)."""
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(
                    input_tokens=1200, cache_creation_input_tokens=500, cache_read_input_tokens=7000, output_tokens=1
                ),
            },
        },
        {"type": "ping"},
    ]
    for index, (start, deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events.extend({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas)
        events.append({"type": "content_block_stop", "index": index})
        events.append({"type": "ping"})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            # Cumulative: it replaces message_start's counts.
            "usage": final_usage
            or _usage(
                input_tokens=1200, cache_creation_input_tokens=500, cache_read_input_tokens=7000, output_tokens=340
            ),
        }
    )
    events.append({"type": "message_stop"})
    return events


def _text_block(*pieces):
    return {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]


def _tool_block(tool_id, name, *json_pieces):
    start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return start, [{"type": "input_json_delta", "partial_json": p} for p in json_pieces]


def _thinking_block(*pieces, signature="c2lnbmF0dXJl"):
    deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces]
    return {"type": "thinking", "thinking": "", "signature": ""}, [
        *deltas,
        {"type": "signature_delta", "signature": signature},
    ]


TEXT_EVENTS = _stream_events(_text_block("Sunny", ", 18C", "."))
TOOL_EVENTS = _stream_events(
    _thinking_block("The user wants ", "the weather."),
    _text_block("Let me check."),
    _tool_block("toolu_01", "get_weather", '{"city": "Pa', 'ris", "unit": ', '"c"}'),
    _tool_block("toolu_02", "get_time", ""),
    stop_reason="tool_use",
)
CUT_EVENTS = _stream_events(_text_block("Sunny and"), stop_reason="max_tokens")


def _anthropic_message(events):
    """What the anthropic SDK's own accumulator makes of the events: the same message, unstreamed."""
    snapshot, json_bufs = None, {}
    for event in (e for e in events if e["type"] != "ping"):  # the SDK drops pings before accumulating
        snapshot = accumulate_event(
            event=ANTHROPIC_EVENT.validate_python(event), current_snapshot=snapshot, json_bufs=json_bufs
        )
    return snapshot.to_dict()


def _parse_frames(frames):
    parsed = []
    for frame in frames:
        head, data = frame.decode().removesuffix("\n\n").split("\n")
        assert head.startswith("event: ")
        assert data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == head.removeprefix("event: ")
        parsed.append(payload)
    return parsed


def _run(events, request=REQUEST):
    stream = AnthropicToResponsesStream(
        model="claude-sonnet", response_id="resp_gw1", request=request, created_at=1765000000
    )
    frames = [frame for event in events for frame in stream.feed(event)]
    return stream, frames, stream.finish()


def _accumulate(payloads):
    state = ResponseStreamState(input_tools=REQUEST["tools"], text_format=openai.omit)
    for payload in payloads:
        state.handle_event(RESPONSES_EVENT.validate_python(payload))
    return state


@pytest.mark.parametrize("events", [TEXT_EVENTS, TOOL_EVENTS], ids=["text", "thinking+text+tools"])
def test_the_stream_accumulates_to_the_unstreamed_response(events):
    for event in events:
        if event["type"] != "ping":
            ANTHROPIC_EVENT.validate_python(event)  # the input is Anthropic's real wire format

    stream, frames, final = _run(events)
    payloads = _parse_frames(frames + final)
    state = _accumulate(payloads)

    expected = anthropic_message_to_response(
        _anthropic_message(events),
        model="claude-sonnet",
        response_id="resp_gw1",
        request=REQUEST,
        created_at=1765000000,
    )
    assert payloads[-1]["type"] == "response.completed"
    assert payloads[-1]["response"] == expected
    assert stream.response == expected
    completed = state._completed_response
    assert completed is not None
    assert Response.model_validate(expected).output_text == completed.output_text
    assert [item.type for item in completed.output] == [item["type"] for item in expected["output"]]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))


def test_the_stream_emits_the_event_order_the_sdk_expects():
    _, frames, final = _run(TOOL_EVENTS)
    kinds = [p["type"] for p in _parse_frames(frames + final)]

    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_the_function_call_streams_its_arguments_and_ends_with_them_whole():
    _, frames, final = _run(TOOL_EVENTS)
    payloads = _parse_frames(frames + final)
    done = [p for p in payloads if p["type"] == "response.function_call_arguments.done"]

    assert [(p["name"], json.loads(p["arguments"])) for p in done] == [
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("get_time", {}),
    ]
    added = [
        p["item"]
        for p in payloads
        if p["type"] == "response.output_item.added" and p["item"]["type"] == "function_call"
    ]
    assert [(item["call_id"], item["arguments"], item["status"]) for item in added] == [
        ("toolu_01", "", "in_progress"),
        ("toolu_02", "", "in_progress"),
    ]
    parsed = _accumulate(payloads)._completed_response.output[2]
    assert parsed.parsed_arguments == {"city": "Paris", "unit": "c"}  # strict tool: the SDK parses it


def test_the_last_frame_waits_for_finish_and_usage_is_cumulative():
    stream, frames, final = _run(TEXT_EVENTS)

    assert "response.completed" not in [p["type"] for p in _parse_frames(frames)]
    assert [p["type"] for p in _parse_frames(final)] == ["response.completed"]
    tokens = stream.reported_tokens()
    assert (tokens.input, tokens.cached_input, tokens.cache_write, tokens.output) == (8700, 7000, 500, 340)
    assert _parse_frames(final)[0]["response"]["usage"]["output_tokens"] == 340
    assert stream.text == "Sunny, 18C."


def test_a_stream_cut_by_max_tokens_ends_incomplete():
    stream, frames, final = _run(CUT_EVENTS)
    payloads = _parse_frames(frames + final)

    assert payloads[-1]["type"] == "response.incomplete"
    assert payloads[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    done = [p for p in payloads if p["type"] == "response.output_item.done"]
    assert done[-1]["item"]["status"] == "incomplete"
    expected = anthropic_message_to_response(
        _anthropic_message(CUT_EVENTS),
        model="claude-sonnet",
        response_id="resp_gw1",
        request=REQUEST,
        created_at=1765000000,
    )
    assert payloads[-1]["response"] == expected == stream.response
    for payload in payloads:
        RESPONSES_EVENT.validate_python(payload)


def test_a_block_left_open_by_upstream_is_closed_before_the_end():
    events = [e for e in TEXT_EVENTS if e["type"] != "content_block_stop"]

    _, frames, final = _run(events)
    state = _accumulate(_parse_frames(frames + final))

    assert state._completed_response.output_text == "Sunny, 18C."


def test_an_upstream_error_event_raises_and_becomes_failed_and_error_frames():
    stream = AnthropicToResponsesStream(model="claude-sonnet", response_id="resp_gw1", request=REQUEST, created_at=1)
    for event in TEXT_EVENTS[:4]:
        stream.feed(event)

    with pytest.raises(StreamError) as exc:
        stream.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    payloads = _parse_frames(stream.error_frame(exc.value.error_type, exc.value.message))

    assert exc.value.error_type == "overloaded_error"
    assert [p["type"] for p in payloads] == ["response.failed", "error"]
    for payload in payloads:
        RESPONSES_EVENT.validate_python(payload)
    assert payloads[0]["response"]["status"] == "failed"
    assert payloads[0]["response"]["error"] == {"code": "server_error", "message": "Overloaded"}
    assert payloads[1]["message"] == "Overloaded"
    assert stream.response is None
    assert stream.reported_tokens().output == 1  # message_start's count, for the partial record


def test_no_tokens_are_reported_before_message_start():
    stream = AnthropicToResponsesStream(model="m", response_id="resp_1", request={}, created_at=1)

    assert stream.reported_tokens() is None
    assert stream.response is None


# --- the openai SDK as the client ------------------------------------------------------------


def _client(handler):
    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        api_key="k", base_url="http://gateway.test/v1", http_client=httpx2.Client(transport=transport), max_retries=0
    )


def _sse_handler(events, *, error=None):
    def handler(request):
        body = json.loads(request.content)
        stream = AnthropicToResponsesStream(model=body["model"], response_id="resp_gw1", request=body, created_at=1)
        frames = [frame for event in events for frame in stream.feed(event)]
        frames += stream.error_frame(*error) if error else stream.finish()
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(frames))

    return handler


def test_client_responses_stream_gets_the_final_response():
    client = _client(_sse_handler(TOOL_EVENTS))

    with client.responses.stream(model="claude-sonnet", input="Weather?", tools=[WEATHER_TOOL]) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert "".join(deltas) == "Let me check."
    assert final.output_text == "Let me check."
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.output[2].parsed_arguments == {"city": "Paris", "unit": "c"}
    assert final.usage.input_tokens == 8700
    assert final.usage.output_tokens == 340


def test_client_sees_an_error_event_as_an_api_error():
    client = _client(_sse_handler(TEXT_EVENTS[:4], error=("overloaded_error", "Overloaded")))

    def read_all():
        with client.responses.stream(model="claude-sonnet", input="Weather?") as stream:
            for _ in stream:
                pass

    with pytest.raises(openai.APIError, match="Overloaded"):
        read_all()


def test_client_responses_create_parses_the_translated_response_and_what_it_sent_translates():
    sent = []

    def handler(request):
        body = json.loads(request.content)
        sent.append(body)
        message = _message(
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris", "unit": None}},
            stop_reason="tool_use",
        )
        return httpx2.Response(
            200,
            json=anthropic_message_to_response(
                message, model=body["model"], response_id="resp_gw1", request=body, created_at=1
            ),
        )

    client = _client(handler)
    response = client.responses.create(
        model="claude-sonnet",
        instructions="Be brief.",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "auto"},
                ],
            }
        ],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=500,
        store=True,
        metadata={"app": "test"},
    )

    assert response.output[0].type == "function_call"
    assert response.output[0].call_id == "toolu_01"
    assert response.tool_choice.name == "get_weather"
    anthropic_body = _to_anthropic(sent[0])
    assert anthropic_body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert anthropic_body["messages"][0]["content"][1]["type"] == "image"


# --- properties ------------------------------------------------------------------------------

_texts = st.text(min_size=1, max_size=8)


@st.composite
def _conversations(draw):
    """Valid Responses input: it starts with the user, and every function call is answered before
    the next user or assistant turn."""
    items = [{"role": "user", "content": draw(_texts)}]
    calls = 0
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["user", "user_parts", "assistant", "developer", "calls", "empty_user"]))
        if kind == "user":
            items.append({"type": "message", "role": "user", "content": draw(_texts)})
        elif kind == "empty_user":
            items.append({"role": "user", "content": ""})
        elif kind == "user_parts":
            parts = [{"type": "input_text", "text": draw(st.text(max_size=5))}]
            if draw(st.booleans()):
                parts.append({"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}", "detail": "auto"})
            items.append({"role": "user", "content": parts})
        elif kind == "assistant":
            items.append(
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": draw(st.text(max_size=5)), "annotations": []}],
                }
            )
        elif kind == "developer":
            items.append({"role": "developer", "content": draw(_texts)})
        else:
            ids = [f"call_{calls + k}" for k in range(draw(st.integers(1, 3)))]
            calls += len(ids)
            args = draw(st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3))
            items.extend(
                {"type": "function_call", "call_id": i, "name": "f", "arguments": json.dumps(args)} for i in ids
            )
            outputs = [{"type": "function_call_output", "call_id": i, "output": draw(st.text(max_size=5))} for i in ids]
            items.extend(draw(st.permutations(outputs)))
    return items


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=_conversations(),
    split=st.integers(0, 20),
    effort=st.sampled_from([None, "low", "high"]),
    stream=st.booleans(),
)
def test_any_valid_conversation_translates_to_a_valid_anthropic_request(items, split, effort, stream):
    split = min(split, len(items))
    # History as the gateway stores it: input items with ids.
    history = input_items({"input": items[:split]})
    body = {"model": "m", "input": items[split:] or "Go on.", "tools": [TIME_TOOL], "stream": stream}
    if effort:
        body["reasoning"] = {"effort": effort}

    out = _to_anthropic(body, history=history)

    uses = [
        b["id"]
        for m in out["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_use"
    ]
    results = [
        b["tool_use_id"]
        for m in out["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_result"
    ]
    assert sorted(uses) == sorted(results)
    last = out["messages"][-1]["content"]
    in_tool_loop = isinstance(last, list) and any(block["type"] == "tool_result" for block in last)
    # History made without thinking has no thinking blocks: a tool loop in it continues without.
    assert ("thinking" in out) == bool(effort and not in_tool_loop)
    if "thinking" in out:
        assert out["thinking"]["budget_tokens"] < out["max_tokens"]


_ITEM_KINDS = st.sampled_from(["user", "assistant", "system", "call", "output", "reasoning", "unknown"])


@settings(max_examples=150)
@given(kinds=st.lists(_ITEM_KINDS, max_size=8))
def test_any_item_sequence_translates_or_is_refused_with_a_param(kinds):
    items = []
    for i, kind in enumerate(kinds):
        items.append(
            {
                "user": {"role": "user", "content": f"u{i}"},
                "assistant": {"role": "assistant", "content": f"a{i}"},
                "system": {"role": "system", "content": f"s{i}"},
                "call": {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"},
                "output": {"type": "function_call_output", "call_id": f"c{i - 1}", "output": "r"},
                "reasoning": {"type": "reasoning", "id": f"rs_{i}", "summary": []},
                "unknown": {"type": "shell_call", "call_id": "x", "action": {"commands": []}},
            }[kind]
        )

    body = {"model": "m", "input": items}
    outcome = None
    try:
        outcome = responses_request_to_anthropic(body, upstream_model="m", history=[])
    except TranslationError as exc:
        outcome = exc
    if isinstance(outcome, TranslationError):
        assert outcome.param
        assert outcome.param.startswith("input")
    else:
        assert_valid_anthropic_request(outcome)
