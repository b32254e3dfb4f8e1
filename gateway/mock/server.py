"""The built-in fake LLM provider: a plain ASGI app speaking the OpenAI, Azure OpenAI and Anthropic wire formats.

Run it with `manage.py mockllm --port N`. It is what the demo, the test suite and the benchmarks call
instead of a real provider, through the official SDKs, so the wire format follows the real APIs
(docs/design.md#wire-facts-billing-depends-on) and the request path avoids anything slow: no Django,
no framework, orjson for JSON.

Endpoints
    POST /v1/chat/completions                                   OpenAI; `Authorization: Bearer <any>`
    POST /openai/deployments/{deployment}/chat/completions      Azure; header `api-key`, query `api-version`
    POST /v1/embeddings, /openai/deployments/{d}/embeddings     OpenAI, Azure embeddings (see `embeddings`)
    POST /v1/messages                                           Anthropic; `anthropic-version` and a key, in
                                                                `x-api-key` or `Authorization: Bearer` (anthropic>=2)
    POST /v1/messages/count_tokens                              Anthropic's token count (gateway/mock/count_tokens.py)
    POST/GET/DELETE /v1/responses[/{id}[/input_items]]          the Responses API (gateway/mock/responses.py);
                                                                Azure: the same under /openai/responses
    GET  /v1/models                                             a small list (Anthropic shape with `anthropic-version`)
    GET  /health                                                {"status": "ok"}
    GET  /_mock/requests                                        the last 500 requests seen (not /health, /_mock)
    DELETE /_mock/requests                                      forget them

Replies are deterministic: "Mock reply from <model>:" followed by words picked from a CRC of the last
user message ("<model>" is the request's model, or the deployment name on Azure, which is also the
response's `model`). Usage is a real BPE count (`gateway.tokenizer`), in the encoding a provider would
bill with (`billing_encoding(model)`): cl100k_base for gpt-4 / gpt-3.5 names and, standing in for Claude's
own tokenizer (which no package ships), for claude-* names; o200k_base for every other name.
    OpenAI/Azure  prompt_tokens = count_message_tokens(messages), completion_tokens = count_tokens(reply)
    Anthropic     total input = count_message_tokens(messages) + count_tokens(system text), split into
                  input_tokens + cache_creation_input_tokens + cache_read_input_tokens (input EXCLUDES cache);
                  output_tokens = count_tokens(reply)
count_message_tokens counts each message's text (its text blocks joined by a space) plus 4 per message and 2.
A tool call's output tokens are count_tokens(name) + count_tokens(arguments JSON).
The reply is cut at the first `stop` / `stop_sequences` string, then to `max_completion_tokens` /
`max_tokens` tokens ("length" / "max_tokens", billed as that many); otherwise it ends with "stop" / "end_turn".

Streams send one content chunk per token (`split_tokens`: a token that ends inside a UTF-8 character travels
with the next, which never happens to the ASCII replies, so a text stream has exactly completion_tokens content
chunks; an empty reply still sends one). OpenAI: the first chunk carries `delta.role`, the last
content chunk `finish_reason`; with `stream_options.include_usage` every chunk has `"usage": null` and a
last chunk with `choices: []` carries the usage, then `data: [DONE]`. Azure streams start, like the real
service, with a chunk whose `choices` is empty and which holds `prompt_filter_results`. Anthropic:
message_start (input usage, output_tokens 1) → content_block_start → ping → content_block_delta per
piece → content_block_stop → message_delta (stop_reason and CUMULATIVE usage) → message_stop.

Directives, written anywhere in the text of the last user message, drive the reply (combine freely;
an unknown or malformed one is a 400, so that a typo does not pass silently):
    [[mock:status=N]]          answer HTTP N (400-599) with the provider's error body; 429 carries
                               retry-after and x-ratelimit-* (anthropic-ratelimit-*) headers
    [[mock:retry_after=N]]     the retry-after seconds of a 429 (default 1)
    [[mock:quota]]             OpenAI/Azure 429 insufficient_quota; Anthropic 400 "credit balance is too low"
    [[mock:content_filter]]    a blocked prompt: HTTP 400, error.code "content_filter" (Anthropic: 400)
    [[mock:filtered_output]]   HTTP 200, finish_reason "content_filter" (Anthropic: stop_reason "refusal")
    [[mock:cached=N]]          N cached prompt tokens: OpenAI cached_tokens (inside prompt_tokens);
                               Anthropic cache_read_input_tokens (outside input_tokens)
    [[mock:cache_write=N]]     Anthropic cache_creation_input_tokens (outside input_tokens), written for 5 minutes
    [[mock:cache_write_1h=N]]  N more cache-write tokens, written for 1 hour: `usage.cache_creation` splits
                               the writes into ephemeral_5m_input_tokens / ephemeral_1h_input_tokens. The
                               request's cache_control breakpoints decide the lifetimes, as at the real API:
                               with only 5-minute breakpoints ({"type": "ephemeral"} or "ttl": "5m") every
                               write is a 5-minute one, with only "ttl": "1h" ones every write is a 1-hour
                               one, with both (or with none: a translated request carries none) the split
                               is as the directives say. A ttl other than "5m" / "1h" is a 400.
    [[mock:words=N]]           a reply of exactly N tokens (before max_tokens)
    [[mock:latency_ms=N]]      wait N ms before the first byte (overrides --latency-ms)
    [[mock:chunk_delay_ms=N]]  wait N ms between stream chunks (overrides --chunk-delay-ms)
    [[mock:break_after=K]]     send K content chunks, then drop the connection mid-body: no usage, no
                               message_stop, no [DONE]; a JSON answer is cut in half
    [[mock:end_after=K]]       send K content chunks, then end the body properly: a stream closed
                               cleanly before its last event (no usage, no message_stop, no [DONE],
                               no response.completed), as a proxy's idle timeout can cut one
    [[mock:stream_error]]      after half of the content chunks, an in-band error after HTTP 200:
                               Anthropic `event: error` (overloaded_error), OpenAI `data: {"error": ...}`
    [[mock:tool]]              with `tools` in the request, call the first tool (or the one `tool_choice`
                               names) with arguments made from its JSON schema
Cached/cache_write are capped so that they never exceed the prompt. The prompt is counted as sent,
directives included. A tool call is never cut by max_tokens. The rate-limit numbers in headers are fixed.

Strict where the real APIs are, to catch gateway bugs: OpenAI refuses `stream_options` without `stream`;
Anthropic requires `max_tokens` and refuses a "system" role inside `messages`; Azure accepts only `api-key`.
Paced streams (a chunk delay) stop when the client disconnects.

A provider's prompt cache, per mock process (`--prompt-cache-seconds N`, off by default): a prompt
prefix this process saw within N seconds is reported as cached input (gateway/mock/prompt_cache.py).

Faults from the command line: each model request draws once from `random.Random(seed)`; a draw below
`fault_rate` answers `fault_status` with the provider's error body, before authentication.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import re
import secrets
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson

from gateway.mock import embeddings, prompt_cache, responses
from gateway.tokenizer import (
    CL100K,
    O200K,
    count_message_tokens,
    count_tokens,
    encoding_for_model,
    split_tokens,
    text_of,
)

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MockSettings:
    latency_ms: int = 0
    chunk_delay_ms: int = 0
    fault_rate: float = 0.0
    fault_status: int = 500
    seed: int | None = None
    history: int = 500
    prompt_cache_seconds: float = 0  # > 0: simulate a provider's prompt cache (gateway/mock/prompt_cache.py)


class Api(StrEnum):
    OPENAI = "openai"
    AZURE = "azure"
    ANTHROPIC = "anthropic"


class ApiError(Exception):
    """An error answered in the wire format of the API that was called."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        openai_type: str | None = None,
        headers: Headers | None = None,
        extra: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.openai_type = openai_type
        self.headers = headers or []
        self.extra = extra or {}


# --- directives -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Directives:
    status: int | None = None
    retry_after: int | None = None
    quota: bool = False
    content_filter: bool = False
    filtered_output: bool = False
    cached: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    words: int | None = None
    latency_ms: int | None = None
    chunk_delay_ms: int | None = None
    break_after: int | None = None
    end_after: int | None = None
    stream_error: bool = False
    tool: bool = False


_DIRECTIVE = re.compile(r"\[\[mock:([^\]=]*)(?:=([^\]]*))?\]\]")
_NUMBER_DIRECTIVES = frozenset(
    {
        "status",
        "retry_after",
        "cached",
        "cache_write",
        "cache_write_1h",
        "words",
        "latency_ms",
        "chunk_delay_ms",
        "break_after",
        "end_after",
    }
)
_FLAG_DIRECTIVES = frozenset({"quota", "content_filter", "filtered_output", "stream_error", "tool"})


def parse_directives(text: str) -> Directives:
    """The `[[mock:...]]` directives in `text`; ApiError(400) for an unknown or malformed one."""
    directives = Directives()
    if "[[mock:" not in text:
        return directives
    for name, value in _DIRECTIVE.findall(text):
        if name in _NUMBER_DIRECTIVES and value.isascii() and value.isdigit():
            setattr(directives, name, int(value))
        elif name in _FLAG_DIRECTIVES and not value:
            setattr(directives, name, True)
        else:
            shown = f"{name}={value}" if value else name
            raise ApiError(400, f"Unknown or malformed mock directive [[mock:{shown}]].", param="messages")
    if directives.status is not None and not 400 <= directives.status <= 599:
        raise ApiError(400, "[[mock:status=N]] needs an error status, 400 to 599.", param="messages")
    return directives


# --- what a request asks for, in terms common to the three APIs ----------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    model: str
    prompt_tokens: int
    prompt_text: str
    max_tokens: int | None
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    tool: tuple[str, Json] | None
    directives: Directives
    cache_ttls: frozenset[str] = frozenset()  # lifetimes the request's cache_control breakpoints ask for


def openai_exchange(body: Json, *, deployment: str | None) -> Exchange:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
    model = deployment or body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        # The real API refuses this; a gateway that forwards it on a JSON request has a bug.
        raise ApiError(
            400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    max_tokens = _optional_count(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_count(body, "max_tokens")
    prompt_text = _last_user_text(messages)
    return Exchange(
        model=model,
        prompt_tokens=prompt_tokens(messages, encoding=billing_encoding(model)),
        prompt_text=prompt_text,
        max_tokens=max_tokens,
        stops=_stop_strings(body.get("stop")),
        stream=stream,
        include_usage=stream and isinstance(options, dict) and options.get("include_usage") is True,
        tool=_openai_tool(body),
        directives=parse_directives(prompt_text),
    )


def anthropic_exchange(body: Json) -> Exchange:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: Field required")
    max_tokens = _optional_count(body, "max_tokens")
    if max_tokens is None:
        raise ApiError(400, "max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: at least one message is required")
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            # Catches an OpenAI-style system message forwarded untranslated.
            raise ApiError(
                400,
                f'messages: Unexpected role "{role}". The Messages API accepts a top-level `system` parameter, '
                "not as an input message role.",
            )
    prompt_text = _last_user_text(messages)
    return Exchange(
        model=model,
        prompt_tokens=prompt_tokens(messages, body.get("system"), encoding=billing_encoding(model)),
        prompt_text=prompt_text,
        max_tokens=max_tokens,
        stops=_stop_strings(body.get("stop_sequences")),
        stream=body.get("stream") is True,
        include_usage=False,
        tool=_anthropic_tool(body),
        directives=parse_directives(prompt_text),
        cache_ttls=_cache_ttls(body),
    )


def _cache_ttls(body: Json) -> frozenset[str]:
    """The ttls of every cache_control breakpoint (system, message blocks, tools); none given is "5m"."""
    blocks: list[Any] = [*_list(body.get("system")), *_list(body.get("tools"))]
    for message in _list(body.get("messages")):
        if isinstance(message, dict):
            blocks.extend(_list(message.get("content")))
    ttls = set()
    for block in blocks:
        control = block.get("cache_control") if isinstance(block, dict) else None
        if not isinstance(control, dict):
            continue
        ttl = control.get("ttl", "5m")
        if ttl not in ("5m", "1h"):
            raise ApiError(400, "cache_control.ttl: Input should be '5m' or '1h'")
        ttls.add(ttl)
    return frozenset(ttls)


def billing_encoding(model: str) -> str:
    """The BPE the mock bills `model` with: the OpenAI model's own, cl100k for Claude, else o200k."""
    if isinstance(model, str) and model.lower().startswith("claude"):
        return CL100K
    return encoding_for_model(model) if isinstance(model, str) and encoding_for_model(model) else O200K


def prompt_tokens(messages: list[Any], system: object = None, *, encoding: str = O200K) -> int:
    """count_message_tokens(messages) + count_tokens(system text), memoised on the serialized prompt.

    Counting is most of the mock's CPU time per request, and benchmarks send the same prompt again and again.
    """
    return _count_serialized_prompt(orjson.dumps([messages, system]), encoding)


@functools.lru_cache(maxsize=2048)
def _count_serialized_prompt(serialized: bytes, encoding: str) -> int:
    messages, system = orjson.loads(serialized)
    return count_message_tokens(messages, encoding=encoding) + count_tokens(text_of(system), encoding=encoding)


def _optional_count(body: Json, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"Invalid '{key}': expected an integer of at least 1.", param=key)
    return value


def _stop_strings(value: object) -> tuple[str, ...]:
    candidates = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return tuple(stop for stop in candidates if isinstance(stop, str) and stop)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def _openai_tool(body: Json) -> tuple[str, Json] | None:
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    named = choice.get("function") if isinstance(choice, dict) else None
    wanted = named.get("name") if isinstance(named, dict) else None
    functions = [tool.get("function") for tool in _list(body.get("tools")) if isinstance(tool, dict)]
    candidates = [(fn["name"], fn.get("parameters")) for fn in functions if isinstance(fn, dict) and "name" in fn]
    return _pick_tool(candidates, wanted)


def _anthropic_tool(body: Json) -> tuple[str, Json] | None:
    choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
    if choice.get("type") == "none":
        return None
    wanted = choice.get("name") if choice.get("type") == "tool" else None
    tools = [tool for tool in _list(body.get("tools")) if isinstance(tool, dict) and "name" in tool]
    return _pick_tool([(tool["name"], tool.get("input_schema")) for tool in tools], wanted)


def _pick_tool(candidates: list[tuple[Any, Any]], wanted: object) -> tuple[str, Json] | None:
    for name, schema in candidates:
        if isinstance(name, str) and (wanted is None or name == wanted):
            return name, schema if isinstance(schema, dict) else {}
    return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- the reply ------------------------------------------------------------------------------------------

Finish = Literal["end", "length", "stop_sequence", "filtered", "tool"]
_OPENAI_FINISH: dict[str, str] = {
    "end": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "filtered": "content_filter",
    "tool": "tool_calls",
}
_ANTHROPIC_STOP: dict[str, str] = {
    "end": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "filtered": "refusal",
    "tool": "tool_use",
}
_VOCABULARY = (
    "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor",
    "indigo", "juniper", "kelp", "lumen", "meadow", "nectar", "opal", "pebble",
    "quartz", "river", "sierra", "tundra", "umber", "violet", "willow", "xenon",
    "yarrow", "zephyr", "aspen", "birch", "coral", "dune", "echo", "flint",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    input: Json  # the same, parsed, as Anthropic sends it


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    pieces: list[str]  # stream chunks: text pieces, or the tool arguments' pieces
    finish: Finish
    output_tokens: int
    stop_sequence: str | None = None
    tool: ToolCall | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int  # all input, cache reads and writes included
    cache_read: int
    cache_write: int  # one-hour writes included
    output_tokens: int
    cache_write_1h: int = 0


def token_pieces(text: str, *, encoding: str = O200K) -> list[str]:
    """`split_tokens`: one piece per token, joining back to the text exactly, so that chunk count
    equals completion tokens and streamed text equals the JSON reply.
    """
    return split_tokens(text, encoding=encoding)


def reply_text(model: str, prompt: str, words: int | None = None) -> str:
    """The reply: `Mock reply from <model>:`, then words picked by a CRC of the prompt; `words` tokens if given."""
    state = zlib.crc32(prompt.encode())
    count = 8 + state % 17 if words is None else words
    chosen = []
    for _ in range(count):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF  # an LCG: the same words on every machine
        chosen.append(_VOCABULARY[(state >> 16) % len(_VOCABULARY)])
    text = f"Mock reply from {model}:" + "".join(" " + word for word in chosen)
    return text if words is None else "".join(token_pieces(text, encoding=billing_encoding(model))[:words])


def tool_arguments(schema: Json) -> Json:
    """Arguments that fit a JSON schema's properties: the first enum value, else a sample of the type."""
    samples: dict[str, Any] = {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    arguments: Json = {}
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        enum = spec.get("enum")
        kind = spec.get("type")
        kind = kind[0] if isinstance(kind, list) and kind else kind
        arguments[name] = enum[0] if isinstance(enum, list) and enum else samples.get(kind, "mock")
    return arguments


def compose_reply(exchange: Exchange, *, tool_id: str) -> Reply:
    directives = exchange.directives
    encoding = billing_encoding(exchange.model)
    if directives.tool and exchange.tool is not None:
        name, schema = exchange.tool
        arguments = tool_arguments(schema)
        text = orjson.dumps(arguments).decode()
        call = ToolCall(id=tool_id, name=name, arguments=text, input=arguments)
        tokens = count_tokens(name, encoding=encoding) + count_tokens(text, encoding=encoding)
        return Reply("", token_pieces(text, encoding=encoding), "tool", tokens, tool=call)
    text, stop = _cut_at_stop(reply_text(exchange.model, exchange.prompt_text, directives.words), exchange.stops)
    pieces = token_pieces(text, encoding=encoding)
    finish: Finish = "end" if stop is None else "stop_sequence"
    output_tokens = count_tokens(text, encoding=encoding)
    if exchange.max_tokens is not None and len(pieces) > exchange.max_tokens:
        # A provider bills the tokens it generated before the limit, not how their text would encode again.
        pieces, finish, stop = pieces[: exchange.max_tokens], "length", None
        output_tokens = exchange.max_tokens
    if directives.filtered_output:
        finish = "filtered"
    return Reply("".join(pieces), pieces, finish, output_tokens, stop_sequence=stop)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    found = [(text.find(stop), stop) for stop in stops if stop in text]
    if not found:
        return text, None
    index, stop = min(found)
    return text[:index], stop


def usage_of(exchange: Exchange, reply: Reply) -> Usage:
    total = exchange.prompt_tokens
    directives, ttls = exchange.directives, exchange.cache_ttls
    read = min(directives.cached, total)
    write = min(directives.cache_write + directives.cache_write_1h, total - read)
    one_hour = min(directives.cache_write_1h, write)
    if ttls == {"5m"}:
        one_hour = 0
    elif ttls == {"1h"}:
        one_hour = write
    output = reply.output_tokens
    return Usage(prompt_tokens=total, cache_read=read, cache_write=write, output_tokens=output, cache_write_1h=one_hour)


# --- OpenAI and Azure wire format -----------------------------------------------------------------------

_FINGERPRINT = "fp_mock0001"


def openai_usage(usage: Usage) -> Json:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.prompt_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_completion(
    exchange: Exchange, reply: Reply, usage: Usage, *, api: Api, response_id: str, created: int
) -> Json:
    message: Json = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
    if reply.tool is not None:
        message["content"] = None
        message["tool_calls"] = [_openai_tool_call(reply.tool)]
    choice: Json = {"index": 0, "message": message, "logprobs": None, "finish_reason": _OPENAI_FINISH[reply.finish]}
    payload: Json = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": exchange.model,
        "choices": [choice],
        "usage": openai_usage(usage),
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
    if api is Api.AZURE:
        choice["content_filter_results"] = _azure_filter_results(filtered=reply.finish == "filtered")
        payload["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _azure_filter_results()}]
    return payload


def _openai_tool_call(call: ToolCall) -> Json:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _azure_filter_results(*, filtered: bool = False) -> Json:
    results: Json = {
        category: {"filtered": False, "severity": "safe"} for category in ("hate", "self_harm", "sexual", "violence")
    }
    if filtered:
        results["violence"] = {"filtered": True, "severity": "medium"}
    return results


@dataclass(frozen=True, slots=True)
class StreamBody:
    head: list[bytes]  # events before the first content chunk
    content: list[bytes]  # one event per piece: what break_after and stream_error count
    tail: list[bytes]  # finish, usage, terminator
    error: bytes  # the in-band error of [[mock:stream_error]]


def _sse_data(payload: Json) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_stream(
    exchange: Exchange, reply: Reply, usage: Usage, *, api: Api, response_id: str, created: int
) -> StreamBody:
    base: Json = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": exchange.model,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
    if exchange.include_usage:
        base["usage"] = None  # every chunk says "no usage yet" when usage was asked for
    deltas = _openai_deltas(reply)
    last = len(deltas) - 1
    finish = _OPENAI_FINISH[reply.finish]
    content = [
        _sse_data({**base, "choices": [_chunk_choice(delta, finish if index == last else None)]})
        for index, delta in enumerate(deltas)
    ]
    head = [_sse_data(_AZURE_PROMPT_FILTER_CHUNK)] if api is Api.AZURE else []
    tail = [_sse_data({**base, "choices": [], "usage": openai_usage(usage)})] if exchange.include_usage else []
    tail.append(b"data: [DONE]\n\n")
    error = _sse_data(
        {"error": {"message": _STATUS_MESSAGES[500], "type": "server_error", "param": None, "code": None}}
    )
    return StreamBody(head=head, content=content, tail=tail, error=error)


def _chunk_choice(delta: Json, finish: str | None) -> Json:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


# Azure opens every stream with this chunk, before any choice: a client must not assume choices[0].
_AZURE_PROMPT_FILTER_CHUNK: Json = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _azure_filter_results()}],
}


def _openai_deltas(reply: Reply) -> list[Json]:
    if reply.tool is not None:
        call = reply.tool
        start = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        first: Json = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [start]}
        return [first] + [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in reply.pieces]
    pieces = reply.pieces or [""]
    return [{"role": "assistant", "content": pieces[0], "refusal": None}] + [{"content": p} for p in pieces[1:]]


# --- Anthropic wire format ------------------------------------------------------------------------------


def anthropic_usage(usage: Usage) -> Json:
    return {
        "input_tokens": usage.prompt_tokens - usage.cache_read - usage.cache_write,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write - usage.cache_write_1h,
            "ephemeral_1h_input_tokens": usage.cache_write_1h,
        },
        "output_tokens": usage.output_tokens,
        "service_tier": "standard",
    }


def anthropic_message(exchange: Exchange, reply: Reply, usage: Usage, *, message_id: str) -> Json:
    if reply.tool is not None:
        block: Json = {"type": "tool_use", "id": reply.tool.id, "name": reply.tool.name, "input": reply.tool.input}
    else:
        block = {"type": "text", "text": reply.text}
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": [block],
        "stop_reason": _ANTHROPIC_STOP[reply.finish],
        "stop_sequence": reply.stop_sequence,
        "usage": anthropic_usage(usage),
    }


def _sse_event(name: bytes, payload: Json) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def anthropic_stream(exchange: Exchange, reply: Reply, usage: Usage, *, message_id: str) -> StreamBody:
    final_usage = anthropic_usage(usage)
    start_usage = {**final_usage, "output_tokens": min(1, usage.output_tokens)}
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    if reply.tool is not None:
        block: Json = {"type": "tool_use", "id": reply.tool.id, "name": reply.tool.name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in reply.pieces]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in reply.pieces]
    head = [
        _sse_event(b"message_start", {"type": "message_start", "message": message}),
        _sse_event(b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        _sse_event(b"ping", {"type": "ping"}),
    ]
    content = [
        _sse_event(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        for delta in deltas
    ]
    # message_delta usage is cumulative (the whole message so far), as the real API sends it.
    counts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
    delta_usage = {key: final_usage[key] for key in counts}
    stop = {"stop_reason": _ANTHROPIC_STOP[reply.finish], "stop_sequence": reply.stop_sequence}
    tail = [
        _sse_event(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse_event(b"message_delta", {"type": "message_delta", "delta": stop, "usage": delta_usage}),
        _sse_event(b"message_stop", {"type": "message_stop"}),
    ]
    error = _sse_event(b"error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    return StreamBody(head=head, content=content, tail=tail, error=error)


# --- errors ---------------------------------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STATUS_MESSAGES = {
    400: "Invalid request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "The model does not exist or you do not have access to it.",
    408: "Request timed out.",
    413: "Request exceeds the maximum allowed size.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
    529: "Overloaded",
}
_STATUS_CODES = {401: "invalid_api_key", 404: "model_not_found"}


def injected_error(api: Api, status: int, *, retry_after: int | None = None) -> ApiError:
    """The error a provider answers with this status, rate-limit headers included for a 429."""
    message = _STATUS_MESSAGES.get(status, f"Upstream error {status}.")
    if status != 429:
        return ApiError(status, message, code=_STATUS_CODES.get(status))
    seconds = 1 if retry_after is None else retry_after
    message = f"Rate limit reached for requests per min (RPM). Please try again in {seconds}s."
    headers = _rate_limit_headers(api, seconds)
    # OpenAI's error type names the exhausted limit ("requests" or "tokens").
    return ApiError(429, message, code="rate_limit_exceeded", openai_type="requests", headers=headers)


def directive_error(api: Api, directives: Directives) -> ApiError | None:
    if directives.status is not None:
        return injected_error(api, directives.status, retry_after=directives.retry_after)
    if directives.quota:
        if api is Api.ANTHROPIC:
            return ApiError(400, "Your credit balance is too low to access the Anthropic API.")
        message = "You exceeded your current quota, please check your plan and billing details."
        return ApiError(429, message, code="insufficient_quota", openai_type="insufficient_quota")
    if directives.content_filter:
        return content_filter_error(api)
    return None


def content_filter_error(api: Api) -> ApiError:
    if api is Api.ANTHROPIC:
        return ApiError(400, "Output blocked by content filtering policy")
    message = (
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
        "Please modify your prompt and retry."
    )
    inner = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": _azure_filter_results(filtered=True)}
    return ApiError(400, message, code="content_filter", param="prompt", extra={"status": 400, "innererror": inner})


def _rate_limit_headers(api: Api, retry_after: int) -> Headers:
    seconds = str(retry_after).encode()
    if api is Api.ANTHROPIC:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + retry_after)).encode()
        return [
            (b"retry-after", seconds),
            (b"anthropic-ratelimit-requests-limit", b"50"),
            (b"anthropic-ratelimit-requests-remaining", b"0"),
            (b"anthropic-ratelimit-requests-reset", reset),
            (b"anthropic-ratelimit-tokens-limit", b"50000"),
            (b"anthropic-ratelimit-tokens-remaining", b"50000"),
            (b"anthropic-ratelimit-tokens-reset", reset),
        ]
    return [
        (b"retry-after", seconds),
        (b"x-ratelimit-limit-requests", b"500"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", seconds + b"s"),
        (b"x-ratelimit-limit-tokens", b"200000"),
        (b"x-ratelimit-remaining-tokens", b"199000"),
        (b"x-ratelimit-reset-tokens", b"300ms"),
    ]


def error_body(api: Api, error: ApiError, *, request_id: str) -> Json:
    if api is Api.ANTHROPIC:
        status = error.status
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": error.message}, "request_id": request_id}
    kind = error.openai_type or ("server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code, **error.extra}}


# --- the ASGI app ---------------------------------------------------------------------------------------

_AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/chat/completions")
_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
_ANTHROPIC_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-5")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the parsed JSON; None when absent or invalid
    raw_body: bytes = field(repr=False)


class MockApp:
    """The ASGI callable; `requests` holds what it received, newest last."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.requests: deque[Json] = deque(maxlen=settings.history)
        self._faults = random.Random(settings.seed)
        self._serial = itertools.count(1)
        # Unique across restarts, as a gateway may key records on upstream ids.
        self._run = secrets.token_hex(4)
        self.responses = responses.ResponsesApi(self)
        self.prompt_cache = (
            prompt_cache.PromptCache(settings.prompt_cache_seconds) if settings.prompt_cache_seconds else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await _read_request(scope, receive)
        if request is None:
            return  # the client went away before sending its body
        if request.path == "/health":
            await _send_json(send, 200, {"status": "ok"})
        elif request.path == "/_mock/requests":
            await self._requests_endpoint(request, send)
        else:
            self._record(request)
            await self._api_endpoint(request, receive, send)

    async def _api_endpoint(self, request: Request, receive: Receive, send: Send) -> None:
        path, method = request.path, request.method
        azure = _AZURE_PATH.fullmatch(path)
        if path == "/v1/models" and method == "GET":
            await _send_json(send, 200, _models_list(anthropic="anthropic-version" in request.headers))
        elif path == "/v1/chat/completions" and method == "POST":
            await self._model_request(Api.OPENAI, request, receive, send)
        elif path == "/v1/messages" and method == "POST":
            await self._model_request(Api.ANTHROPIC, request, receive, send)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            from gateway.mock.count_tokens import count_tokens_endpoint  # the module imports this one

            await count_tokens_endpoint(self, request, send)
        elif azure and method == "POST":
            await self._model_request(Api.AZURE, request, receive, send, deployment=azure.group(1))
        elif (target := embeddings.route(path)) and method == "POST":
            await embeddings.serve(self, request, send, *target)
        elif match := responses.route(path):
            api = Api.AZURE if path.startswith("/openai/") else Api.OPENAI
            await self.responses.handle(match, api, request, receive, send)
        else:
            error = ApiError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
            await _send_json(send, 404, error_body(Api.OPENAI, error, request_id=self._id("req_")))

    async def _model_request(
        self, api: Api, request: Request, receive: Receive, send: Send, *, deployment: str | None = None
    ) -> None:
        request_id = self._id("req_")
        id_header = b"request-id" if api is Api.ANTHROPIC else b"x-request-id"
        headers: Headers = [(id_header, request_id.encode())]
        directives = Directives()
        try:
            if self.settings.fault_rate and self._faults.random() < self.settings.fault_rate:
                raise injected_error(api, self.settings.fault_status)
            _authenticate(api, request)
            if not isinstance(request.body, dict):
                raise ApiError(400, "We could not parse the JSON body of your request: expected a JSON object.")
            exchange = (
                anthropic_exchange(request.body)
                if api is Api.ANTHROPIC
                else openai_exchange(request.body, deployment=deployment)
            )
            directives = exchange.directives
            if error := directive_error(api, directives):
                raise error
        except ApiError as error:
            await self._pause_before_answer(directives)
            await _send_json(send, error.status, error_body(api, error, request_id=request_id), headers + error.headers)
            return
        reply = compose_reply(exchange, tool_id=self._id("toolu_" if api is Api.ANTHROPIC else "call_"))
        usage = usage_of(exchange, reply)
        if self.prompt_cache is not None:
            usage = self.prompt_cache.served(request.body, exchange.model, billing_encoding(exchange.model), usage)
        await self._pause_before_answer(directives)
        if exchange.stream:
            body = self._stream_body(api, exchange, reply, usage)
            delay_ms = self.settings.chunk_delay_ms if directives.chunk_delay_ms is None else directives.chunk_delay_ms
            await _send_stream(send, receive, body, headers, directives, delay_s=delay_ms / 1000)
        else:
            payload = self._json_body(api, exchange, reply, usage)
            await _send_json(send, 200, payload, headers, cut=directives.break_after is not None)

    def _json_body(self, api: Api, exchange: Exchange, reply: Reply, usage: Usage) -> Json:
        if api is Api.ANTHROPIC:
            return anthropic_message(exchange, reply, usage, message_id=self._id("msg_"))
        return openai_completion(
            exchange, reply, usage, api=api, response_id=self._id("chatcmpl-"), created=int(time.time())
        )

    def _stream_body(self, api: Api, exchange: Exchange, reply: Reply, usage: Usage) -> StreamBody:
        if api is Api.ANTHROPIC:
            return anthropic_stream(exchange, reply, usage, message_id=self._id("msg_"))
        return openai_stream(
            exchange, reply, usage, api=api, response_id=self._id("chatcmpl-"), created=int(time.time())
        )

    async def _pause_before_answer(self, directives: Directives) -> None:
        latency_ms = self.settings.latency_ms if directives.latency_ms is None else directives.latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)

    async def _requests_endpoint(self, request: Request, send: Send) -> None:
        if request.method == "GET":
            await _send_json(send, 200, list(self.requests))
        elif request.method == "DELETE":
            cleared = len(self.requests)
            self.requests.clear()
            await _send_json(send, 200, {"cleared": cleared})
        else:
            await _send_json(send, 405, {"error": {"message": "Use GET or DELETE.", "type": "invalid_request_error"}})

    def _record(self, request: Request) -> None:
        body = request.body
        if body is None and request.raw_body:
            body = request.raw_body.decode("utf-8", "replace")
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": request.headers,
                "body": body,
                "time": time.time(),
            }
        )

    def _id(self, prefix: str) -> str:
        return f"{prefix}mock{self._run}{next(self._serial):012x}"


def build_app(settings: MockSettings | None = None) -> MockApp:
    return MockApp(settings or MockSettings())


def _authenticate(api: Api, request: Request) -> None:
    headers = request.headers
    if api is Api.ANTHROPIC:
        # anthropic>=2 sends its api_key as `Authorization: Bearer`; older clients and curl use x-api-key.
        if not headers.get("x-api-key", "").strip() and not _bearer_token(headers):
            raise ApiError(401, "x-api-key header is required")
        if not headers.get("anthropic-version", "").strip():
            raise ApiError(400, "anthropic-version: header is required")
    elif api is Api.AZURE:
        if not headers.get("api-key", "").strip():
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                "key for an active subscription and use a correct regional API endpoint for your resource."
            )
            raise ApiError(401, message, code="401")
        if not request.query.get("api-version"):
            message = "The api-version query parameter (?api-version=) is required for all requests."
            raise ApiError(400, message, code="MissingApiVersionParameter")
    elif not _bearer_token(headers):
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        raise ApiError(401, message)


def _bearer_token(headers: dict[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _models_list(*, anthropic: bool) -> Json:
    if anthropic:
        data = [
            {"type": "model", "id": name, "display_name": name, "created_at": "2025-10-01T00:00:00Z"}
            for name in _ANTHROPIC_MODELS
        ]
        return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    data = [{"id": name, "object": "model", "created": 1721172741, "owned_by": "system"} for name in _OPENAI_MODELS]
    return {"object": "list", "data": data}


async def _read_request(scope: Scope, receive: Receive) -> Request | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)),
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
        body=body,
        raw_body=raw,
    )


async def _send_json(
    send: Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = (), *, cut: bool = False
) -> None:
    body = orjson.dumps(payload)
    start_headers = [_JSON, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    if cut:
        # Half the promised bytes, then return: the server drops the connection mid-body.
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        return
    await send({"type": "http.response.body", "body": body})


async def _send_stream(
    send: Send, receive: Receive, body: StreamBody, headers: Headers, directives: Directives, *, delay_s: float
) -> None:
    events, complete = _stream_events(body, directives)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE + headers})
    if delay_s <= 0:
        # One write for the whole stream: the cheap path for tests and benchmarks.
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": not complete})
        return
    gone = asyncio.create_task(_wait_for_disconnect(receive))
    try:
        for index, event in enumerate(events):
            if index:
                await asyncio.sleep(delay_s)
            if gone.done():
                return  # the client left: stop generating, as a provider does
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()


def _stream_events(body: StreamBody, directives: Directives) -> tuple[list[bytes], bool]:
    """The events to send, and whether to end the body properly.

    A stream that is not ended properly returns with its body unfinished: uvicorn then closes the connection
    without the terminating chunk, which clients see as a broken stream (as when a provider's connection drops).
    """
    if directives.break_after is not None:
        return body.head + body.content[: directives.break_after], False
    if directives.end_after is not None:
        return body.head + body.content[: directives.end_after], True
    if directives.stream_error:
        return body.head + body.content[: (len(body.content) + 1) // 2] + [body.error], True
    return body.head + body.content + body.tail, True


async def _wait_for_disconnect(receive: Receive) -> None:
    # With the request body read, uvicorn's receive() returns only when the client disconnects.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
