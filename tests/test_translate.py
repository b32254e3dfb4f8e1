"""OpenAI <-> Anthropic translation (gateway/translate.py): pure functions, no database.

Outputs are checked against the installed SDKs' own types and stream accumulators, so what the
gateway emits is what a client SDK parses.
"""

import json

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types import message_create_params as anthropic_params
from hypothesis import given
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as openai_params
from pydantic import TypeAdapter

from gateway.translate import (
    DEFAULT_MAX_TOKENS,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    StreamError,
    TranslationError,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    anthropic_usage_to_openai,
    finish_reason_to_stop_reason,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
    openai_usage_to_anthropic,
    stop_reason_to_finish_reason,
)

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF_B64 = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _minimal(**extra):
    return {"model": "claude-haiku", "messages": [{"role": "user", "content": "Hi"}], **extra}


def _to_anthropic(body):
    return openai_request_to_anthropic(body, upstream_model="claude-haiku-4-5")


def _to_openai(body):
    return anthropic_request_to_openai(body, upstream_model="gpt-4o-mini-2024-07-18")


def _forced(value):
    """Walk pydantic's lazy iterators so that every nested item really gets validated."""
    if isinstance(value, dict):
        return {k: _forced(v) for k, v in value.items()}
    if isinstance(value, str | bytes | int | float | bool | None):
        return value
    return [_forced(v) for v in value]


# Module-level: pydantic's lazy iterators need their adapter alive while they are walked.
ANTHROPIC_REQUEST = {
    True: TypeAdapter(anthropic_params.MessageCreateParamsStreaming),
    False: TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming),
}
OPENAI_REQUEST = {
    True: TypeAdapter(openai_params.CompletionCreateParamsStreaming),
    False: TypeAdapter(openai_params.CompletionCreateParamsNonStreaming),
}
ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)


def assert_valid_anthropic_request(body):
    _forced(ANTHROPIC_REQUEST[bool(body.get("stream"))].validate_python(body))


def assert_valid_openai_request(body):
    _forced(OPENAI_REQUEST[bool(body.get("stream"))].validate_python(body))


# --- realistic payloads ----------------------------------------------------------------------

OPENAI_AGENT_REQUEST = {
    "model": "claude-haiku",
    "messages": [
        {"role": "system", "content": "You are a concise travel assistant."},
        {"role": "user", "content": "What's the weather and time in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"c"}'},
                },
                {
                    "id": "call_tokyo",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city":"Tokyo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_tokyo", "content": "21:40"},
        {"role": "assistant", "content": "Paris is 18C and sunny; it is 21:40 in Tokyo."},
        {"role": "user", "content": "Thanks! And tomorrow?"},
    ],
    "tools": [WEATHER_TOOL, TIME_TOOL],
    "tool_choice": "auto",
    "max_completion_tokens": 512,
    "temperature": 0.3,
    "stop": ["\n\nUser:"],
    "user": "end-user-42",
}

ANTHROPIC_AGENT_REQUEST = {
    "model": "gpt-4o-mini",
    "max_tokens": 1024,
    "system": "You are a concise travel assistant.",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is on this picture, and what's the weather there?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "That is the Eiffel Tower. Let me check the weather."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C, sunny"},
                {"type": "text", "text": "Great, and in Fahrenheit?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 0.2,
    "metadata": {"user_id": "end-user-42"},
}


# --- stop and finish reasons -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("some_future_reason", "stop"),
        (None, None),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason, finish_reason):
    assert stop_reason_to_finish_reason(stop_reason) == finish_reason


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, None),
    ],
)
def test_finish_reason_maps_to_stop_reason(finish_reason, stop_reason):
    assert finish_reason_to_stop_reason(finish_reason) == stop_reason


# --- OpenAI request -> Anthropic request -----------------------------------------------------


def test_it_translates_a_realistic_agent_conversation():
    out = _to_anthropic(OPENAI_AGENT_REQUEST)

    assert_valid_anthropic_request(out)
    assert out == {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "system": "You are a concise travel assistant.",
        "messages": [
            {"role": "user", "content": "What's the weather and time in Paris and Tokyo?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_paris",
                        "name": "get_weather",
                        "input": {"city": "Paris", "unit": "c"},
                    },
                    {"type": "tool_use", "id": "call_tokyo", "name": "get_time", "input": {"city": "Tokyo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_paris", "content": "18C, sunny"},
                    {"type": "tool_result", "tool_use_id": "call_tokyo", "content": "21:40"},
                ],
            },
            {"role": "assistant", "content": "Paris is 18C and sunny; it is 21:40 in Tokyo."},
            {"role": "user", "content": "Thanks! And tomorrow?"},
        ],
        "temperature": 0.3,
        "stop_sequences": ["\n\nUser:"],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            },
            {
                "name": "get_time",
                "description": "Local time in a city.",
                "input_schema": TIME_TOOL["function"]["parameters"],
            },
        ],
        "metadata": {"user_id": "end-user-42"},
    }


def test_system_and_developer_messages_become_one_top_level_system():
    out = _to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hello"},
            ],
        }
    )

    assert out["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}]
    assert out["messages"] == [{"role": "user", "content": "Hello"}]


def test_consecutive_same_role_messages_are_merged_so_roles_alternate():
    out = _to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "First part."},
                {"role": "user", "content": [{"type": "text", "text": "Second part."}]},
                {"role": "assistant", "content": "One."},
                {"role": "assistant", "content": "Two."},
                {"role": "user", "content": "Go on."},
            ],
        }
    )

    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
        {"role": "user", "content": "Go on."},
    ]


def test_tool_results_come_before_user_text_in_the_same_turn():
    out = _to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
                {"role": "user", "content": "In Fahrenheit please."},
            ],
            "tools": [WEATHER_TOOL],
        }
    )

    # The empty assistant text is dropped: Anthropic rejects empty text blocks.
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
            {"type": "text", "text": "In Fahrenheit please."},
        ],
    }
    assert_valid_anthropic_request(out)


def test_images_become_base64_or_url_sources():
    out = _to_anthropic(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare these."},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "high"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ],
                }
            ],
        }
    )

    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert_valid_anthropic_request(out)


@pytest.mark.parametrize(
    "url",
    ["data:image/bmp;base64,Qk0=", "data:image/png,rawbytes", "ftp://example.com/cat.png", "file:///etc/passwd"],
)
def test_unusable_image_urls_are_refused(url):
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}

    with pytest.raises(TranslationError) as exc:
        _to_anthropic(body)

    assert exc.value.param == "messages[0].content[0].image_url.url"


def test_a_pdf_file_part_becomes_a_document_block():
    part = {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}}

    out = _to_anthropic({"model": "m", "messages": [{"role": "user", "content": [part]}]})

    assert out["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}}
    ]
    assert_valid_anthropic_request(out)


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, "messages[0].content[0]"),
        ({"type": "file", "file": {"file_id": "file-abc123"}}, "messages[0].content[0].file"),
    ],
)
def test_content_parts_the_other_side_cannot_read_are_refused(part, param):
    with pytest.raises(TranslationError) as exc:
        _to_anthropic({"model": "m", "messages": [{"role": "user", "content": [part]}]})

    assert exc.value.param == param


@pytest.mark.parametrize(
    ("params", "max_tokens"),
    [
        ({}, DEFAULT_MAX_TOKENS),
        ({"max_tokens": 300}, 300),
        ({"max_completion_tokens": 700}, 700),
        ({"max_tokens": 300, "max_completion_tokens": 700}, 700),
    ],
)
def test_max_tokens_is_always_set(params, max_tokens):
    assert _to_anthropic(_minimal(**params))["max_tokens"] == max_tokens


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"temperature": 0.7}, {"temperature": 0.7}),
        ({"temperature": 1.8}, {"temperature": 1.0}),
        ({"temperature": 0}, {"temperature": 0}),
        ({"top_p": 0.9}, {"top_p": 0.9}),
        ({"temperature": 0.5, "top_p": 0.9}, {"temperature": 0.5}),
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["END", "###"]}, {"stop_sequences": ["END", "###"]}),
        ({"stop": None}, {}),
    ],
)
def test_sampling_parameters(params, expected):
    out = _to_anthropic(_minimal(**params))

    assert {k: out[k] for k in ("temperature", "top_p", "stop_sequences") if k in out} == expected


def test_stream_flag_is_kept_and_stream_options_dropped():
    out = _to_anthropic(_minimal(stream=True, stream_options={"include_usage": True}))

    assert out["stream"] is True
    assert "stream_options" not in out
    assert_valid_anthropic_request(out)


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", None),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"}),
    ],
)
def test_tool_choice(tool_choice, expected):
    out = _to_anthropic(_minimal(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice))

    assert out.get("tool_choice") == expected
    assert_valid_anthropic_request(out)


def test_allowed_tools_sends_only_the_allowed_tools():
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]},
    }

    out = _to_anthropic(_minimal(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice))

    assert [tool["name"] for tool in out["tools"]] == ["get_time"]
    assert out["tool_choice"] == {"type": "any"}


def test_parallel_tool_calls_false_disables_parallel_tool_use():
    out = _to_anthropic(_minimal(tools=[WEATHER_TOOL], parallel_tool_calls=False))

    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_strict_function_tools_stay_strict():
    strict_tool = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}

    assert _to_anthropic(_minimal(tools=[strict_tool]))["tools"][0]["strict"] is True


def test_custom_tools_are_refused():
    custom = {"type": "custom", "custom": {"name": "grammar_tool"}}

    with pytest.raises(TranslationError) as exc:
        _to_anthropic(_minimal(tools=[custom]))

    assert exc.value.param == "tools[0].type"


@pytest.mark.parametrize("field", ["user", "safety_identifier"])
def test_the_end_user_id_becomes_metadata_user_id(field):
    assert _to_anthropic(_minimal(**{field: "end-user-42"}))["metadata"] == {"user_id": "end-user-42"}


def test_json_schema_response_format_becomes_output_config():
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}

    out = _to_anthropic(_minimal(response_format=response_format))

    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert_valid_anthropic_request(out)


def test_text_response_format_is_the_default():
    assert "output_config" not in _to_anthropic(_minimal(response_format={"type": "text"}))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 5}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [WEATHER_TOOL["function"]]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice_mode": "fast"}, "tool_choice_mode"),
    ],
)
def test_params_that_change_the_answer_are_refused(params, param):
    with pytest.raises(TranslationError) as exc:
        _to_anthropic(_minimal(**params))

    assert exc.value.param == param
    assert exc.value.message


def test_n_2_is_refused_naming_n():
    with pytest.raises(TranslationError, match="n must be 1") as exc:
        _to_anthropic(_minimal(n=2))

    assert exc.value.param == "n"
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize(
    "params",
    [
        {"n": 1},
        {"logprobs": False},
        {"modalities": ["text"]},
        {"frequency_penalty": 0.5},
        {"presence_penalty": -0.2},
        {"seed": 42},
        {"logit_bias": {"50256": -100}},
        {"parallel_tool_calls": True},
        {"store": True},
        {"metadata": {"run": "nightly"}},
        {"service_tier": "auto"},
        {"reasoning_effort": "low"},
        {"verbosity": "low"},
        {"prompt_cache_key": "tenant-a"},
        {"prediction": {"type": "content", "content": "draft"}},
    ],
)
def test_harmless_params_are_dropped(params):
    assert _to_anthropic(_minimal(**params)) == _to_anthropic(_minimal())


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "system", "content": "Only a system prompt."}], "messages"),
        ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
        ([{"role": "critic", "content": "x"}], "messages[0].role"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([{"role": "tool", "content": "18C"}], "tool_call_id"),
    ],
)
def test_unusable_messages_are_refused(messages, param):
    with pytest.raises(TranslationError) as exc:
        _to_anthropic({"model": "m", "messages": messages})

    assert exc.value.param == param


@pytest.mark.parametrize("body", [[], {"model": "m", "messages": "hi"}, {"model": "m", "messages": ["hi"]}])
def test_malformed_bodies_are_a_translation_error_not_a_crash(body):
    with pytest.raises(TranslationError):
        _to_anthropic(body)


# --- Anthropic request -> OpenAI request -----------------------------------------------------


def test_it_translates_a_realistic_anthropic_conversation():
    out = _to_openai(ANTHROPIC_AGENT_REQUEST)

    assert_valid_openai_request(out)
    assert out == {
        "model": "gpt-4o-mini-2024-07-18",
        "messages": [
            {"role": "system", "content": "You are a concise travel assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is on this picture, and what's the weather there?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "That is the Eiffel Tower. Let me check the weather.",
                "tool_calls": [
                    {
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C, sunny"},
            {"role": "user", "content": "Great, and in Fahrenheit?"},
        ],
        "max_tokens": 1024,
        "temperature": 0.2,
        "stop": ["\n\nHuman:"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                },
            }
        ],
        "user": "end-user-42",
    }


def test_system_blocks_and_system_role_messages_become_system_messages():
    out = _to_openai(
        {
            "model": "m",
            "max_tokens": 100,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Answer in French."},
            ],
            "messages": [
                {"role": "user", "content": "Bonjour"},
                {"role": "system", "content": "From now on, answer in English."},
                {"role": "user", "content": "Hello"},
            ],
        }
    )

    assert out["messages"] == [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}],
        },
        {"role": "user", "content": "Bonjour"},
        {"role": "system", "content": "From now on, answer in English."},
        {"role": "user", "content": "Hello"},
    ]
    assert_valid_openai_request(out)


def test_documents_url_images_and_thinking_history():
    out = _to_openai(
        {
            "model": "m",
            "max_tokens": 100,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "title": "q3.pdf",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "The user wants a summary.", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "opaque"},
                        {"type": "text", "text": "Here is the summary."},
                    ],
                },
                {"role": "user", "content": "Shorter."},
            ],
        }
    )

    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "file", "file": {"filename": "q3.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}},
                {"type": "text", "text": "Plain notes."},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {"role": "assistant", "content": "Here is the summary."},
        {"role": "user", "content": "Shorter."},
    ]
    assert_valid_openai_request(out)


def test_tool_results_become_tool_messages_in_order():
    out = _to_openai(
        {
            "model": "m",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"city": "Paris"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "14:05", "is_error": False},
                    ],
                },
            ],
        }
    )

    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city":"Paris"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "14:05"},
    ]
    assert_valid_openai_request(out)


def test_max_tokens_field_can_be_max_completion_tokens_for_reasoning_models():
    out = anthropic_request_to_openai(
        ANTHROPIC_AGENT_REQUEST, upstream_model="o4-mini", max_tokens_field="max_completion_tokens"
    )

    assert out["max_completion_tokens"] == 1024
    assert "max_tokens" not in out


def test_top_k_is_dropped_and_top_p_kept():
    out = _to_openai(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], "top_k": 40, "top_p": 0.8}
    )

    assert out["top_p"] == 0.8
    assert "top_k" not in out


def test_streaming_always_asks_openai_for_usage():
    out = _to_openai({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], "stream": True})

    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert_valid_openai_request(out)


def test_non_streaming_sends_no_stream_options():
    out = _to_openai({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], "stream": False})

    assert "stream" not in out
    assert "stream_options" not in out


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, {}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, {"parallel_tool_calls": False}),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"tool_choice": "required", "parallel_tool_calls": False},
        ),
    ],
)
def test_anthropic_tool_choice(tool_choice, expected):
    out = _to_openai({**ANTHROPIC_AGENT_REQUEST, "tool_choice": tool_choice})

    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected
    assert_valid_openai_request(out)


def test_output_config_format_becomes_strict_json_schema():
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "high"},
    }

    out = _to_openai(body)

    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert "reasoning_effort" not in out
    assert_valid_openai_request(out)


@pytest.mark.parametrize(
    "params",
    [
        {"thinking": {"type": "enabled", "budget_tokens": 2048}},
        {"thinking": {"type": "adaptive"}},
        {"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
        {"context_management": {"edits": []}},
    ],
)
def test_thinking_and_clearing_it_are_dropped_for_an_openai_model(params):
    """What Claude Code sends on every turn: an OpenAI model shows no thinking, and a translated
    conversation has none to clear."""
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], **params}
    out = _to_openai(body)
    assert "thinking" not in out
    assert "context_management" not in out
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_disabled_thinking_is_fine():
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
        "thinking": {"type": "disabled"},
    }

    assert "thinking" not in _to_openai(body)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
        ({"container": "container_abc"}, "container"),
        ({"inference_geo": "eu"}, "inference_geo"),
        ({"tool_choice": {"type": "unknown"}, "tools": ANTHROPIC_AGENT_REQUEST["tools"]}, "tool_choice"),
        ({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, "context_management.edits.0"),
        ({"context_management": {"edits": "all"}}, "context_management"),
    ],
)
def test_anthropic_params_that_change_the_answer_are_refused(params, param):
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], **params}

    with pytest.raises(TranslationError) as exc:
        _to_openai(body)

    assert exc.value.param == param


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "search_result", "source": "s", "title": "t", "content": []}], "messages.0.content.0"),
        ([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}], "messages.0.content.0.source"),
        (
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "image", "source": {"type": "url", "url": "u"}}],
                }
            ],
            "messages.0.content.0.content[0]",
        ),
    ],
)
def test_anthropic_blocks_openai_cannot_read_are_refused(content, param):
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": content}]}

    with pytest.raises(TranslationError) as exc:
        _to_openai(body)

    assert exc.value.param == param


def test_a_missing_field_names_it():
    with pytest.raises(TranslationError) as exc:
        _to_openai({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text"}]}]})

    assert exc.value.param == "text"


# --- request round trips ---------------------------------------------------------------------


def test_openai_request_survives_a_round_trip():
    original = {
        **OPENAI_AGENT_REQUEST,
        "messages": [
            *OPENAI_AGENT_REQUEST["messages"][:-1],
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/tower.jpg"}},
                ],
            },
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stream": True,
    }

    back = anthropic_request_to_openai(_to_anthropic(original), upstream_model="claude-haiku")

    expected = {k: v for k, v in original.items() if k not in ("max_completion_tokens", "stream")}
    expected["max_tokens"] = original["max_completion_tokens"]
    expected["messages"][2] = {**expected["messages"][2], "content": None}
    assert back == {**expected, "stream": True, "stream_options": {"include_usage": True}}


def test_anthropic_request_survives_a_round_trip():
    back = openai_request_to_anthropic(_to_openai(ANTHROPIC_AGENT_REQUEST), upstream_model="gpt-4o-mini")

    # {"type": "auto"} is the default on both sides, so it is not repeated.
    assert back == {k: v for k, v in ANTHROPIC_AGENT_REQUEST.items() if k != "tool_choice"}


# --- responses -------------------------------------------------------------------------------

ANTHROPIC_TOOL_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [
        {"type": "thinking", "thinking": "I should look it up.", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "Let me check the weather in Paris."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"city": "Paris", "unit": "c"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 1200,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 5000,
        "output_tokens": 450,
        "output_tokens_details": {"thinking_tokens": 120},
    },
}


def test_an_anthropic_tool_use_message_becomes_a_chat_completion():
    out = anthropic_response_to_openai(ANTHROPIC_TOOL_MESSAGE, model="claude-haiku", created=1_700_000_000)

    ChatCompletion.model_validate(out)
    assert out == {
        "id": "chatcmpl-01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-haiku",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check the weather in Paris.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"c"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 6500,
            "completion_tokens": 450,
            "total_tokens": 6950,
            "prompt_tokens_details": {"cached_tokens": 5000, "cache_write_tokens": 300},
            "completion_tokens_details": {"reasoning_tokens": 120},
        },
    }


def test_a_given_completion_id_is_used():
    out = anthropic_response_to_openai(ANTHROPIC_TOOL_MESSAGE, model="claude-haiku", completion_id="chatcmpl-gw-123")

    assert out["id"] == "chatcmpl-gw-123"
    assert isinstance(out["created"], int)


def test_a_tool_only_answer_has_null_content():
    message = {**ANTHROPIC_TOOL_MESSAGE, "content": ANTHROPIC_TOOL_MESSAGE["content"][2:]}

    out = anthropic_response_to_openai(message, model="claude-haiku")

    assert out["choices"][0]["message"]["content"] is None
    ChatCompletion.model_validate(out)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("refusal", "content_filter")],
)
def test_an_anthropic_text_message_maps_its_stop_reason(stop_reason, finish_reason):
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there."}],
        "stop_reason": stop_reason,
        "stop_sequence": "\n\nHuman:" if stop_reason == "stop_sequence" else None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 3,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        },
    }

    out = anthropic_response_to_openai(message, model="claude-haiku")

    assert out["choices"][0]["message"]["content"] == "Hello there."
    assert out["choices"][0]["finish_reason"] == finish_reason
    assert out["usage"]["prompt_tokens"] == 12
    assert "tool_calls" not in out["choices"][0]["message"]


OPENAI_TOOL_COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking both.",
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_def",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"city": "Tokyo"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 6500,
        "completion_tokens": 450,
        "total_tokens": 6950,
        "prompt_tokens_details": {"cached_tokens": 5000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}


def test_an_openai_tool_call_completion_becomes_an_anthropic_message():
    out = openai_response_to_anthropic(OPENAI_TOOL_COMPLETION, model="gpt-4o-mini")

    Message.model_validate(out)
    assert out == {
        "id": "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o-mini",
        "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_def", "name": "get_time", "input": {"city": "Tokyo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1500,
            "output_tokens": 450,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5000,
        },
    }


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
def test_an_openai_text_completion_maps_its_finish_reason(finish_reason, stop_reason):
    completion = {
        **OPENAI_TOOL_COMPLETION,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Bonjour!", "refusal": None},
                "finish_reason": finish_reason,
            }
        ],
    }

    out = openai_response_to_anthropic(completion, model="gpt-4o-mini")

    assert out["content"] == [{"type": "text", "text": "Bonjour!"}]
    assert out["stop_reason"] == stop_reason
    Message.model_validate(out)


def test_an_openai_refusal_becomes_refusal_text():
    completion = {
        **OPENAI_TOOL_COMPLETION,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                "finish_reason": "stop",
            }
        ],
    }

    out = openai_response_to_anthropic(completion, model="gpt-4o-mini")

    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"


def test_truncated_tool_arguments_become_an_empty_input():
    call = {"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Pa'}}
    completion = {
        **OPENAI_TOOL_COMPLETION,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "length",
            }
        ],
    }

    out = openai_response_to_anthropic(completion, model="gpt-4o-mini")

    assert out["content"] == [{"type": "tool_use", "id": "call_x", "name": "get_weather", "input": {}}]
    assert out["stop_reason"] == "max_tokens"
    Message.model_validate(out)


# --- usage arithmetic ------------------------------------------------------------------------


def test_anthropic_usage_counts_cache_into_prompt_tokens():
    usage = {
        "input_tokens": 1200,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 5000,
        "output_tokens": 450,
    }

    assert anthropic_usage_to_openai(usage) == {
        "prompt_tokens": 6500,
        "completion_tokens": 450,
        "total_tokens": 6950,
        "prompt_tokens_details": {"cached_tokens": 5000, "cache_write_tokens": 300},
    }


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        (
            {"cached_tokens": 5000},
            {
                "input_tokens": 1500,
                "output_tokens": 450,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 5000,
            },
        ),
        (
            {"cached_tokens": 5000, "cache_write_tokens": 300},
            {
                "input_tokens": 1200,
                "output_tokens": 450,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 5000,
            },
        ),
        (
            None,
            {
                "input_tokens": 6500,
                "output_tokens": 450,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        ),
    ],
)
def test_openai_usage_takes_cache_out_of_input_tokens(details, expected):
    usage = {"prompt_tokens": 6500, "completion_tokens": 450, "total_tokens": 6950, "prompt_tokens_details": details}

    assert openai_usage_to_anthropic(usage) == expected


@given(
    input_tokens=st.integers(0, 10**7),
    written=st.integers(0, 10**7),
    read=st.integers(0, 10**7),
    output=st.integers(0, 10**7),
)
def test_usage_survives_a_round_trip(input_tokens, written, read, output):
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }

    openai_usage = anthropic_usage_to_openai(usage)

    assert openai_usage["prompt_tokens"] == input_tokens + written + read
    assert openai_usage["total_tokens"] == input_tokens + written + read + output
    assert openai_usage_to_anthropic(openai_usage) == usage


# --- Anthropic stream -> OpenAI chunks -------------------------------------------------------

ANTHROPIC_EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01Stream",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1000,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " the weather."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01T1x", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 87},
    },
    {"type": "message_stop"},
]


def _run_anthropic_stream(include_usage, events=ANTHROPIC_EVENTS):
    stream = AnthropicToOpenAIStream(
        model="claude-haiku", completion_id="chatcmpl-gw1", include_usage=include_usage, created=1
    )
    chunks = [chunk for event in events for chunk in stream.feed(event)]
    return stream, chunks + stream.finish()


def _accumulate_openai(chunks):
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def test_an_anthropic_stream_becomes_openai_chunks_with_usage():
    stream, chunks = _run_anthropic_stream(include_usage=True)

    assert [chunk["choices"][0]["delta"] if chunk["choices"] else "usage" for chunk in chunks] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Let me check"},
        {"content": " the weather."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_01T1x",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]},
        {},
        "usage",
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:-1]] == [None] * 6 + ["tool_calls"]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 1025,
        "completion_tokens": 87,
        "total_tokens": 1112,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 0},
    }
    assert {(c["id"], c["object"], c["model"], c["created"]) for c in chunks} == {
        ("chatcmpl-gw1", "chat.completion.chunk", "claude-haiku", 1)
    }

    final = _accumulate_openai(chunks)
    assert final.choices[0].message.content == "Let me check the weather."
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage.prompt_tokens_details.cached_tokens == 1000
    assert stream.usage == {
        "input_tokens": 25,
        "output_tokens": 87,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1000,
    }
    assert stream.text == 'Let me check the weather.get_weather{"city": "Paris"}'


def test_an_anthropic_stream_without_include_usage_has_no_usage_at_all():
    stream, chunks = _run_anthropic_stream(include_usage=False)

    assert len(chunks) == 7
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks)
    assert stream.finish() == []
    assert stream.usage["output_tokens"] == 87  # the gateway still meters
    assert _accumulate_openai(chunks).choices[0].message.content == "Let me check the weather."


def test_parallel_tool_use_blocks_get_consecutive_tool_call_indexes():
    events = [
        ANTHROPIC_EVENTS[0],
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Two lookups."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "t2", "name": "get_time", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":"Tokyo"}'},
        },
        {"type": "content_block_stop", "index": 2},
        ANTHROPIC_EVENTS[-2],
        ANTHROPIC_EVENTS[-1],
    ]

    _, chunks = _run_anthropic_stream(include_usage=True, events=events)

    calls = _accumulate_openai(chunks).choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("t1", "get_weather", '{"city":"Paris"}'),
        ("t2", "get_time", '{"city":"Tokyo"}'),
    ]


def test_an_error_event_raises_stream_error():
    stream = AnthropicToOpenAIStream(model="claude-haiku", completion_id="chatcmpl-1", include_usage=True)
    stream.feed(ANTHROPIC_EVENTS[0])

    with pytest.raises(StreamError) as exc:
        stream.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

    assert exc.value.error_type == "overloaded_error"
    assert exc.value.message == "Overloaded"


def test_message_delta_usage_replaces_instead_of_adding():
    stream = AnthropicToOpenAIStream(model="claude-haiku", completion_id="chatcmpl-1", include_usage=True)
    stream.feed(ANTHROPIC_EVENTS[0])
    delta = {"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None}}

    stream.feed({**delta, "usage": {"output_tokens": 40}})
    stream.feed(
        {
            **delta,
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 95, "input_tokens": 30, "cache_read_input_tokens": None},
        }
    )

    assert stream.usage == {
        "input_tokens": 30,
        "output_tokens": 95,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1000,
    }
    assert stream.finish()[0]["usage"]["completion_tokens"] == 95


def test_unknown_and_bookkeeping_events_produce_nothing():
    stream = AnthropicToOpenAIStream(model="claude-haiku", completion_id="chatcmpl-1", include_usage=False)

    assert stream.feed({"type": "ping"}) == []
    assert stream.feed({"type": "message_stop"}) == []
    assert stream.feed({"type": "content_block_stop", "index": 0}) == []
    assert stream.feed({"type": "some_future_event", "data": 1}) == []


# --- OpenAI chunks -> Anthropic events -------------------------------------------------------


def _chunk(delta=None, finish_reason=None, **extra):
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {
        "id": "chatcmpl-up1",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_06737a9306",
        "choices": choices,
        "usage": None,
        **extra,
    }


OPENAI_USAGE = {
    "prompt_tokens": 6500,
    "completion_tokens": 450,
    "total_tokens": 6950,
    "prompt_tokens_details": {"cached_tokens": 5000, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}

OPENAI_CHUNKS = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Checking"}),
    _chunk({"content": " both."}),
    _chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    _chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Tokyo"}'}}]}),
    _chunk({}, finish_reason="tool_calls"),
    _chunk(usage=OPENAI_USAGE),
]


def _run_openai_stream(chunks=OPENAI_CHUNKS):
    stream = OpenAIToAnthropicStream(model="gpt-4o-mini", message_id="msg_gw1", input_tokens_estimate=6400)
    events = [event for chunk in chunks for event in stream.feed(chunk)]
    return stream, events + stream.finish()


def _accumulate_anthropic(events):
    snapshot, json_bufs = None, {}
    for event_type, data in events:
        assert data["type"] == event_type
        snapshot = accumulate_event(
            event=ANTHROPIC_EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=json_bufs
        )
    return snapshot


def test_openai_chunks_become_anthropic_events_in_order():
    stream, events = _run_openai_stream()

    assert [(event_type, data.get("index")) for event_type, data in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[0][1]["message"]["usage"] == {"input_tokens": 6400, "output_tokens": 0}
    assert events[0][1]["message"]["id"] == "msg_gw1"
    assert events[5][1]["content_block"] == {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {}}
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":'}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 1500,
            "output_tokens": 450,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5000,
        },
    }

    message = _accumulate_anthropic(events)
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Checking both."
    assert message.content[1].input == {"city": "Paris"}
    assert message.content[2].input == {"city": "Tokyo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        1500,
        5000,
        450,
    )
    assert stream.usage == OPENAI_USAGE
    assert stream.text == 'Checking both.get_weather{"city": "Paris"}get_time{"city": "Tokyo"}'


def test_a_tool_only_openai_stream_opens_no_empty_text_block():
    chunks = [OPENAI_CHUNKS[0], *OPENAI_CHUNKS[3:6], _chunk({}, finish_reason="tool_calls")]

    stream, events = _run_openai_stream(chunks)

    starts = [data["content_block"]["type"] for event_type, data in events if event_type == "content_block_start"]
    assert starts == ["tool_use"]
    assert _accumulate_anthropic(events).content[0].input == {"city": "Paris"}


def test_without_a_usage_chunk_only_output_tokens_zero_is_reported():
    chunks = [OPENAI_CHUNKS[0], _chunk({"content": "Hi!"}), _chunk({}, finish_reason="stop")]

    stream, events = _run_openai_stream(chunks)

    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 0},
    }
    assert stream.usage is None
    assert stream.text == "Hi!"
    _accumulate_anthropic(events)


def test_an_empty_openai_stream_still_makes_a_valid_anthropic_stream():
    stream = OpenAIToAnthropicStream(model="gpt-4o-mini", message_id="msg_gw1")

    events = stream.finish()

    assert [event_type for event_type, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert _accumulate_anthropic(events).content == []


def test_a_streamed_openai_refusal_stops_with_refusal():
    chunks = [OPENAI_CHUNKS[0], _chunk({"refusal": "I can't help with that."}), _chunk({}, finish_reason="stop")]

    _, events = _run_openai_stream(chunks)

    message = _accumulate_anthropic(events)
    assert message.content[0].text == "I can't help with that."
    assert message.stop_reason == "refusal"


@given(
    pieces=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20),
    arguments=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5),
    cut=st.integers(0, 200),
)
def test_a_stream_survives_both_translations(pieces, arguments, cut):
    args_json = json.dumps(arguments)
    cut = min(cut, len(args_json))
    events = [
        ANTHROPIC_EVENTS[0],
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": args_json[:cut]},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": args_json[cut:]},
        },
        {"type": "content_block_stop", "index": 1},
        ANTHROPIC_EVENTS[-2],
        ANTHROPIC_EVENTS[-1],
    ]

    _, chunks = _run_anthropic_stream(include_usage=True, events=events)
    stream, back = _run_openai_stream(chunks)

    message = _accumulate_anthropic(back)
    assert message.content[0].text == "".join(pieces)
    assert message.content[1].input == arguments
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 87
    assert message.usage.cache_read_input_tokens == 1000


@given(roles=st.lists(st.sampled_from(["user", "assistant", "tool", "system"]), min_size=1, max_size=12))
def test_translated_conversations_always_alternate(roles):
    messages = []
    for i, role in enumerate(roles):
        if role == "tool":
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": f"result {i}"})
        else:
            messages.append({"role": role, "content": f"{role} {i}"})
    if all(role == "system" for role in roles):
        return

    out = _to_anthropic({"model": "m", "messages": messages})

    turn_roles = [message["role"] for message in out["messages"]]
    assert all(a != b for a, b in zip(turn_roles, turn_roles[1:], strict=False))
    for message in out["messages"]:
        blocks = message["content"] if isinstance(message["content"], list) else [{"type": "text"}]
        kinds = [block["type"] for block in blocks]
        assert kinds == sorted(kinds, key=lambda kind: kind != "tool_result")


# --- edges -----------------------------------------------------------------------------------


def test_assistant_history_with_parts_and_refusals_becomes_text():
    out = _to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Tell me a secret."},
                {"role": "assistant", "content": None, "refusal": "I can't share that."},
                {"role": "user", "content": "And a joke?"},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Why did"}, {"type": "refusal", "refusal": "No."}],
                    "name": "helper",
                },
                {"role": "user", "content": ""},
                {"role": "assistant", "content": "Okay."},
            ],
        }
    )

    assert out["messages"][1:] == [
        {"role": "assistant", "content": "I can't share that."},
        {"role": "user", "content": "And a joke?"},
        # The empty user turn is dropped, so the assistant turns around it merge.
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Why did"},
                {"type": "text", "text": "No."},
                {"type": "text", "text": "Okay."},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "assistant", "content": None, "audio": {"id": "audio_1"}}], "messages[0].audio"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "g", "input": "x"}}],
                }
            ],
            "messages[0].tool_calls[0].type",
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}}]}],
            "messages[0].content[0].file",
        ),
        ([{"role": "user", "content": 42}], "messages[0].content"),
    ],
)
def test_more_unusable_openai_messages_are_refused(messages, param):
    with pytest.raises(TranslationError) as exc:
        _to_anthropic({"model": "m", "messages": messages})

    assert exc.value.param == param


def test_an_unknown_tool_choice_is_refused():
    with pytest.raises(TranslationError) as exc:
        _to_anthropic(_minimal(tools=[WEATHER_TOOL], tool_choice="sometimes"))

    assert exc.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "critic", "content": "x"}], "messages.0.role"),
        (
            [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}],
            "messages.0.content.0",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}],
                }
            ],
            "messages.0.content.0",
        ),
    ],
)
def test_more_unusable_anthropic_messages_are_refused(messages, param):
    with pytest.raises(TranslationError) as exc:
        _to_openai({"model": "m", "max_tokens": 10, "messages": messages})

    assert exc.value.param == param


def test_a_thinking_only_assistant_turn_is_left_out():
    out = _to_openai(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "s"}]},
                {"role": "user", "content": "Hello?"},
            ],
        }
    )

    assert out["messages"] == [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}]


def test_strict_anthropic_tools_stay_strict():
    tool = {**ANTHROPIC_AGENT_REQUEST["tools"][0], "strict": True, "cache_control": {"type": "ephemeral"}}

    out = _to_openai({**ANTHROPIC_AGENT_REQUEST, "tools": [tool]})

    assert out["tools"][0]["function"]["strict"] is True
    assert_valid_openai_request(out)


def test_text_in_a_content_block_start_is_not_lost():
    stream = AnthropicToOpenAIStream(model="claude-haiku", completion_id="chatcmpl-1", include_usage=False)
    stream.feed(ANTHROPIC_EVENTS[0])

    chunks = stream.feed({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}})

    assert [chunk["choices"][0]["delta"] for chunk in chunks] == [{"content": "Hi"}]
    assert stream.text == "Hi"


def test_server_tool_blocks_do_not_leak_into_openai_chunks():
    stream = AnthropicToOpenAIStream(model="claude-haiku", completion_id="chatcmpl-1", include_usage=False)
    stream.feed(ANTHROPIC_EVENTS[0])
    block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}

    assert stream.feed({"type": "content_block_start", "index": 0, "content_block": block}) == []
    delta = {"type": "input_json_delta", "partial_json": '{"query": "weather"}'}
    assert stream.feed({"type": "content_block_delta", "index": 0, "delta": delta}) == []


def test_empty_tool_results_stay_empty_on_both_sides():
    anthropic_turn = [
        {"role": "user", "content": "Ping the server."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "ping", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": []}]},
    ]

    out = _to_openai({"model": "m", "max_tokens": 10, "messages": anthropic_turn})

    assert out["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_1", "content": ""}
    back = openai_request_to_anthropic(out, upstream_model="m")
    assert back["messages"][-1] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}
    assert_valid_anthropic_request(back)
