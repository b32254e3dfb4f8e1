"""OpenAI Chat Completions <-> Anthropic Messages, both directions, JSON and streaming.

Pure functions over the JSON as it is on the wire (plain dicts): no Django, no I/O, no SDK
calls. The gateway uses them when the client's endpoint and the upstream provider differ
(docs/design.md#the-hot-path, step 5). Anything that cannot be said in the other format raises
`TranslationError` (a 400 for the client, naming the field); an `error` event inside an
Anthropic stream raises `StreamError`.

OpenAI request -> Anthropic request (`openai_request_to_anthropic`)
  mapped   system/developer messages -> top-level `system` (mid-conversation ones are hoisted
           too: Anthropic has one system prompt); user/assistant turns, consecutive same-role
           turns merged so roles alternate; text, image_url (data: URL -> base64 source, http(s)
           -> url source), file with a PDF data URL -> document; assistant tool_calls ->
           tool_use; role "tool" -> user tool_result (first in its turn, as Anthropic requires);
           max_completion_tokens / max_tokens -> max_tokens (DEFAULT_MAX_TOKENS when absent);
           temperature (clamped to 1); top_p (unless temperature is also set); stop ->
           stop_sequences; stream; function tools -> tools (strict kept); tool_choice
           (auto/required/none/named/allowed_tools); parallel_tool_calls=false ->
           disable_parallel_tool_use; user (or safety_identifier) -> metadata.user_id;
           response_format json_schema -> output_config.format.
  dropped  frequency_penalty, presence_penalty, seed, logit_bias, store, metadata,
           service_tier, prediction, reasoning_effort, verbosity, prompt_cache_key,
           prompt_cache_retention, prompt_cache_options, stream_options, message `name`,
           image `detail`, content-part `prompt_cache_breakpoint`: hints about cost, latency,
           storage or determinism that do not change what a correct answer looks like.
  refused  n > 1, logprobs, top_logprobs, audio, modalities other than text, input_audio and
           file_id parts, legacy functions/function_call and role "function", custom tools,
           web_search_options, moderation, response_format json_object, unknown parameters.

Anthropic request -> OpenAI request (`anthropic_request_to_openai`)
  mapped   system (string or text blocks) and role "system" messages -> system messages;
           text, image (base64 -> data: URL, url), document (base64 PDF -> file part, plain text
           -> text part), tool_use -> assistant tool_calls, tool_result -> role "tool" messages;
           max_tokens -> OPENAI_MAX_TOKENS_FIELD; stop_sequences -> stop; temperature; top_p;
           custom tools -> function tools; tool_choice; disable_parallel_tool_use ->
           parallel_tool_calls=false; metadata.user_id -> user; stream -> stream with
           stream_options.include_usage (the gateway always meters); output_config.format ->
           response_format json_schema; thinking {"type": "disabled"}.
  dropped  thinking enabled/adaptive (a request to show the model's thinking; an OpenAI model
           reasons or not on its own, and the answer simply has no thinking blocks, which
           Anthropic clients handle: Claude Code sends it on every turn), context_management
           whose edits only clear thinking (`clear_thinking_*`: a translated conversation carries
           no thinking blocks to clear), top_k (no OpenAI equivalent; it only narrows sampling), output_config.effort,
           service_tier, cache_control (top level and on blocks: OpenAI caches on its own),
           speed, diagnostics, user_profile_id, workspace_id, tool_result `is_error` (the
           text still says what went wrong), thinking/redacted_thinking blocks in history.
  refused  context_management with other edits (clearing tool uses changes what the model
           sees), server tools (web search, code execution, ...), their
           result blocks, search_result and image-bearing tool results, file-id sources,
           container, mcp_servers, inference_geo, unknown parameters.

Responses and streams map content, tool calls, stop/finish reasons (one pair of tables,
`stop_reason_to_finish_reason` / `finish_reason_to_stop_reason`) and usage
(docs/design.md#wire-facts-billing-depends-on):
Anthropic `input_tokens` excludes cache, OpenAI `prompt_tokens` includes it; cache reads travel
as `cached_tokens`, cache writes as `prompt_tokens_details.cache_write_tokens`, thinking tokens
as `reasoning_tokens`. Thinking and server-tool blocks in responses are left out (a chat
completion has no place for them).

Anthropic's SDK (2.x) no longer types temperature/top_p: a caller going through
`messages.create` passes them in `extra_body`.
"""

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires max_tokens; OpenAI clients usually leave it out."""

OPENAI_MAX_TOKENS_FIELD = "max_tokens"
"""Field for the token limit sent to OpenAI. `max_tokens` works on Azure's older API versions;
reasoning models (o-series, gpt-5) accept only `max_completion_tokens`: pass that as
`max_tokens_field` for them."""

ANTHROPIC_MAX_TEMPERATURE = 1.0

_ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class TranslationError(ValueError):
    """Request cannot be expressed in the other format; message is client-facing; `param` names the field."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class StreamError(Exception):
    """An `error` event arrived inside an Anthropic stream (possibly after HTTP 200)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def _client_body(translate: Callable[..., dict]) -> Callable[..., dict]:
    """A request body is the client's: a missing field or a wrong type is its 400, not our 500."""

    @functools.wraps(translate)
    def wrapper(body: Any, **kwargs: Any) -> dict:
        if not isinstance(body, dict):
            raise TranslationError("The request body must be a JSON object.")
        try:
            return translate(body, **kwargs)
        except KeyError as exc:
            raise TranslationError(f"Missing required field {exc.args[0]!r}.", param=str(exc.args[0])) from None
        except (TypeError, AttributeError, IndexError):
            raise TranslationError("Malformed request body: a field has the wrong type.") from None

    return wrapper


# --- stop / finish reasons -------------------------------------------------------------------

_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A paused server-tool turn has no OpenAI counterpart; what came so far is a complete answer.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_FINISH_TO_STOP = {
    # OpenAI does not say whether a stop sequence matched, so "stop" is always end_turn.
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason_to_finish_reason(r: str | None) -> str | None:
    """Anthropic stop_reason -> OpenAI finish_reason (unknown future reasons read as "stop")."""
    if r is None:
        return None
    return _STOP_TO_FINISH.get(r, "stop")


def finish_reason_to_stop_reason(r: str | None) -> str | None:
    """OpenAI finish_reason -> Anthropic stop_reason (unknown future reasons read as "end_turn")."""
    if r is None:
        return None
    return _FINISH_TO_STOP.get(r, "end_turn")


# --- usage -----------------------------------------------------------------------------------

_ANTHROPIC_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _anthropic_usage(usage: dict | None) -> dict[str, int]:
    """The four counters of an Anthropic usage object, nulls and absences as 0."""
    usage = usage or {}
    return {field: usage.get(field) or 0 for field in _ANTHROPIC_USAGE_FIELDS}


def anthropic_usage_to_openai(usage: dict | None) -> dict:
    """Anthropic usage -> OpenAI usage: prompt_tokens counts cache reads and writes, as OpenAI's does."""
    counts = _anthropic_usage(usage)
    prompt = counts["input_tokens"] + counts["cache_creation_input_tokens"] + counts["cache_read_input_tokens"]
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": counts["output_tokens"],
        "total_tokens": prompt + counts["output_tokens"],
        "prompt_tokens_details": {
            "cached_tokens": counts["cache_read_input_tokens"],
            "cache_write_tokens": counts["cache_creation_input_tokens"],
        },
    }
    thinking = ((usage or {}).get("output_tokens_details") or {}).get("thinking_tokens")
    if thinking is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return out


def openai_usage_to_anthropic(usage: dict | None) -> dict:
    """OpenAI usage -> Anthropic usage: input_tokens excludes what was read from or written to the cache."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    return {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - cached - written, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


# --- small helpers ---------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # Compact, like the arguments OpenAI models emit.
    return orjson.dumps(value).decode()


def _text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def _text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def _reject_unknown(body: dict, known: Iterable[str]) -> None:
    # Both APIs answer an unknown parameter with a 400; silently dropping it could change the answer.
    known = set(known)
    for key in body:
        if key not in known:
            raise TranslationError(f"Unrecognized request argument supplied: {key}", param=key)


def _parse_data_url(url: str, *, param: str) -> tuple[str, str]:
    """`data:<media type>;base64,<data>` -> (media type, data)."""
    header, sep, data = url.partition(",")
    media_type, _, encoding = header.removeprefix("data:").partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise TranslationError("Only base64 data URLs are supported.", param=param)
    return media_type, data


def _text_of_parts(content: Any, *, param: str) -> list[str]:
    """Text of a string or a list of text parts (system, developer and tool messages)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise TranslationError(
                f"Only text content is supported here, got {part.get('type')!r}.", param=f"{param}[{j}]"
            )
        texts.append(part["text"])
    return texts


# --- OpenAI request -> Anthropic request -----------------------------------------------------

_OPENAI_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "response_format",
    }
)
_OPENAI_DROPPED = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "logit_bias",
        "store",
        "metadata",
        "service_tier",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
_OPENAI_REFUSED = frozenset(
    {
        "n",
        "logprobs",
        "top_logprobs",
        "audio",
        "modalities",
        "functions",
        "function_call",
        "web_search_options",
        "moderation",
    }
)


def _refuse_openai_params(body: dict) -> None:
    _reject_unknown(body, _OPENAI_MAPPED | _OPENAI_DROPPED | _OPENAI_REFUSED)
    if body.get("n") not in (None, 1):
        raise TranslationError("This model returns one choice per request: n must be 1.", param="n")
    for param in ("logprobs", "top_logprobs"):
        if body.get(param):
            raise TranslationError("This model does not return log probabilities.", param=param)
    if body.get("audio") is not None or any(m != "text" for m in body.get("modalities") or ()):
        param = "audio" if body.get("audio") is not None else "modalities"
        raise TranslationError("This model produces text only.", param=param)
    for param in ("functions", "function_call"):
        if body.get(param) is not None:
            raise TranslationError("Legacy function calling is not supported for this model: use tools.", param=param)
    for param in ("web_search_options", "moderation"):
        if body.get(param) is not None:
            raise TranslationError(f"{param} is not supported for this model.", param=param)


@_client_body
def openai_request_to_anthropic(body: dict, *, upstream_model: str) -> dict:
    """OpenAI chat request -> Anthropic Messages request body for `upstream_model`."""
    _refuse_openai_params(body)
    system, messages = _openai_messages_to_anthropic(body.get("messages"))
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": _openai_max_tokens(body), "messages": messages}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out.update(_openai_sampling_to_anthropic(body))
    if body.get("stream") is not None:
        out["stream"] = bool(body["stream"])
    out.update(_openai_tools_to_anthropic(body))
    user_id = body.get("user") or body.get("safety_identifier")
    if user_id:
        out["metadata"] = {"user_id": user_id}
    output_format = _openai_response_format_to_anthropic(body.get("response_format"))
    if output_format:
        out["output_config"] = {"format": output_format}
    return out


def _openai_max_tokens(body: dict) -> int:
    # max_completion_tokens supersedes the deprecated max_tokens when both are sent.
    for field in ("max_completion_tokens", "max_tokens"):
        if body.get(field) is not None:
            return body[field]
    return DEFAULT_MAX_TOKENS


def _openai_sampling_to_anthropic(body: dict) -> dict:
    out: dict[str, Any] = {}
    temperature = body.get("temperature")
    if temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1: anything hotter than 1 becomes Anthropic's hottest.
        out["temperature"] = min(temperature, ANTHROPIC_MAX_TEMPERATURE)
    elif body.get("top_p") is not None:
        # Current Claude models refuse temperature and top_p together; temperature wins when both are set.
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return out


def _openai_response_format_to_anthropic(response_format: dict | None) -> dict | None:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_schema":
        return {"type": "json_schema", "schema": response_format["json_schema"].get("schema") or {}}
    # json_object means "any JSON": Anthropic can only constrain output to a given schema.
    raise TranslationError(
        f"response_format {kind!r} is not supported for this model: use json_schema.", param="response_format"
    )


def _openai_messages_to_anthropic(messages: Any) -> tuple[list[dict], list[dict]]:
    """-> (system text blocks, alternating user/assistant messages)."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty array.", param="messages")
    system: list[dict] = []
    turns: list[tuple[str, list[dict]]] = []
    for i, message in enumerate(messages):
        role, param = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_block(t) for t in _text_of_parts(message.get("content"), param=f"{param}.content") if t)
        elif role == "user":
            turns.append(("user", _openai_user_content(message.get("content"), param=f"{param}.content")))
        elif role == "assistant":
            turns.append(("assistant", _openai_assistant_blocks(message, param=param)))
        elif role == "tool":
            turns.append(("user", [_openai_tool_result(message, param=param)]))
        elif role == "function":
            raise TranslationError("Legacy function messages are not supported: use tools.", param=f"{param}.role")
        else:
            raise TranslationError(f"Unknown role {role!r}.", param=f"{param}.role")
    merged = _merge_turns(turns)
    if not merged:
        raise TranslationError("At least one user or assistant message with content is required.", param="messages")
    return system, merged


def _merge_turns(turns: list[tuple[str, list[dict]]]) -> list[dict]:
    """Drop empty turns and merge same-role neighbours: Anthropic wants alternating, non-empty turns."""
    merged: list[dict] = []
    for role, blocks in turns:
        if not blocks:
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"].extend(blocks)
        else:
            merged.append({"role": role, "content": list(blocks)})
    for message in merged:
        # Anthropic requires a user turn's tool_result blocks before any other content.
        message["content"].sort(key=lambda block: block["type"] != "tool_result")
        message["content"] = _collapse(message["content"])
    return merged


def _collapse(blocks: list[dict]) -> str | list[dict]:
    """A lone plain text block reads best (and round-trips) as a string."""
    if len(blocks) == 1 and blocks[0].keys() == {"type", "text"} and blocks[0]["type"] == "text":
        return blocks[0]["text"]
    return blocks


def _openai_user_content(content: Any, *, param: str) -> list[dict]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError("content must be a string or an array of content parts.", param=param)
    blocks = [_openai_part_to_block(part, param=f"{param}[{j}]") for j, part in enumerate(content)]
    return [block for block in blocks if block is not None]


def _openai_part_to_block(part: dict, *, param: str) -> dict | None:
    kind = part.get("type")
    if kind == "text":
        # Anthropic rejects empty text blocks.
        return _text_block(part["text"]) if part["text"] else None
    if kind == "image_url":
        return _openai_image_to_block(part["image_url"]["url"], param=f"{param}.image_url.url")
    if kind == "file":
        return _openai_file_to_block(part["file"], param=f"{param}.file")
    raise TranslationError(f"Content part type {kind!r} is not supported for this model.", param=param)


def _openai_image_to_block(url: str, *, param: str) -> dict:
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, param=param)
        if media_type not in _ANTHROPIC_IMAGE_TYPES:
            raise TranslationError(f"Image type {media_type!r} is not supported for this model.", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("Image URLs must be http(s) or base64 data URLs.", param=param)


def _openai_file_to_block(file: dict, *, param: str) -> dict:
    file_data = file.get("file_data")
    if not file_data:
        # A file_id points into the client's OpenAI account, which the other provider cannot read.
        raise TranslationError("Only inline file_data is supported for this model.", param=param)
    media_type, data = _parse_data_url(file_data, param=f"{param}.file_data")
    if media_type != "application/pdf":
        raise TranslationError(f"File type {media_type!r} is not supported for this model.", param=param)
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _openai_assistant_blocks(message: dict, *, param: str) -> list[dict]:
    for field in ("audio", "function_call"):
        if message.get(field):
            raise TranslationError(f"Assistant {field} is not supported for this model.", param=f"{param}.{field}")
    content = message.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        # Past refusals are plain text to the model.
        texts.extend(part.get("text") or part.get("refusal") or "" for part in content)
    if not texts and message.get("refusal"):
        texts.append(message["refusal"])
    blocks = [_text_block(text) for text in texts if text]
    for j, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_openai_tool_call_to_block(call, param=f"{param}.tool_calls[{j}]"))
    return blocks


def _openai_tool_call_to_block(call: dict, *, param: str) -> dict:
    if call.get("type", "function") != "function":
        raise TranslationError("Only function tool calls are supported for this model.", param=f"{param}.type")
    function = call["function"]
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise TranslationError("Tool call arguments must be valid JSON.", param=f"{param}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise TranslationError("Tool call arguments must be a JSON object.", param=f"{param}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _openai_tool_result(message: dict, *, param: str) -> dict:
    content = message.get("content")
    if isinstance(content, list):
        texts = _text_of_parts(content, param=f"{param}.content")
        content = [_text_block(t) for t in texts if t]
    block = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    if content:
        block["content"] = content  # optional in Anthropic, which refuses empty text
    return block


def _openai_tools_to_anthropic(body: dict) -> dict:
    tools = body.get("tools")
    if not tools:
        return {}
    out_tools = [_openai_tool_to_anthropic(tool, param=f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # Anthropic has no allow-list: sending only the allowed tools has the same effect.
        allowed = {t.get("function", {}).get("name") for t in choice["allowed_tools"]["tools"]}
        out_tools = [tool for tool in out_tools if tool["name"] in allowed]
        choice = choice["allowed_tools"]["mode"]
    out: dict[str, Any] = {"tools": out_tools}
    tool_choice = _openai_tool_choice_to_anthropic(choice)
    if body.get("parallel_tool_calls") is False and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    if tool_choice != {"type": "auto"}:
        out["tool_choice"] = tool_choice
    return out


def _openai_tool_to_anthropic(tool: dict, *, param: str) -> dict:
    if tool.get("type") != "function":
        raise TranslationError("Only function tools are supported for this model.", param=f"{param}.type")
    function = tool["function"]
    return _function_to_anthropic_tool(function["name"], function)


def _function_to_anthropic_tool(name: str, function: dict) -> dict:
    """An OpenAI function definition (`description`, `parameters`, `strict`) as an Anthropic tool."""
    out: dict[str, Any] = {"name": name}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    if function.get("strict"):
        out["strict"] = True
    return out


def _openai_tool_choice_to_anthropic(choice: Any) -> dict:
    if choice in (None, "auto"):
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    raise TranslationError("This tool_choice is not supported for this model.", param="tool_choice")


# --- Anthropic request -> OpenAI request -----------------------------------------------------

_ANTHROPIC_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "output_config",
        "context_management",
    }
)
_ANTHROPIC_DROPPED = frozenset(
    {"top_k", "service_tier", "cache_control", "speed", "diagnostics", "user_profile_id", "workspace_id"}
)
_ANTHROPIC_REFUSED = frozenset({"container", "mcp_servers", "inference_geo"})


def _refuse_anthropic_params(body: dict) -> None:
    _reject_unknown(body, _ANTHROPIC_MAPPED | _ANTHROPIC_DROPPED | _ANTHROPIC_REFUSED)
    for param in sorted(_ANTHROPIC_REFUSED):
        if body.get(param):
            raise TranslationError(f"{param} is not supported for this model.", param=param)
    management = body.get("context_management")
    if management is not None:
        edits = management.get("edits") if isinstance(management, dict) else None
        for i, edit in enumerate(edits if isinstance(edits, list) else [None]):
            kind = edit.get("type") if isinstance(edit, dict) else None
            if not (isinstance(kind, str) and kind.startswith("clear_thinking")):
                raise TranslationError(
                    "context_management is supported for this model only with edits that clear thinking.",
                    param=f"context_management.edits.{i}" if isinstance(edits, list) else "context_management",
                )


@_client_body
def anthropic_request_to_openai(
    body: dict, *, upstream_model: str, max_tokens_field: str = OPENAI_MAX_TOKENS_FIELD
) -> dict:
    """Anthropic Messages request -> OpenAI chat request for `upstream_model`."""
    _refuse_anthropic_params(body)
    messages = _anthropic_system_to_openai(body.get("system"))
    messages.extend(_anthropic_messages_to_openai(body.get("messages")))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if body.get("max_tokens") is not None:
        out[max_tokens_field] = body["max_tokens"]
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    out.update(_anthropic_tools_to_openai(body))
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        out["user"] = user_id
    response_format = _anthropic_output_format_to_openai((body.get("output_config") or {}).get("format"))
    if response_format:
        out["response_format"] = response_format
    if body.get("stream"):
        # The gateway meters from provider usage (docs/design.md#wire-facts-billing-depends-on), so it
        # always asks for it.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _anthropic_output_format_to_openai(output_format: dict | None) -> dict | None:
    if not output_format:
        return None
    # Anthropic's structured output is always enforced, which is OpenAI's strict mode.
    return {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": output_format["schema"], "strict": True},
    }


def _openai_text_content(texts: list[str]) -> str | list[dict]:
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return [_text_part(t) for t in texts]


def _anthropic_system_to_openai(system: Any) -> list[dict]:
    texts = _text_of_parts(system, param="system")
    return [{"role": "system", "content": _openai_text_content(texts)}] if texts else []


def _anthropic_messages_to_openai(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages: at least one message is required.", param="messages")
    out: list[dict] = []
    for i, message in enumerate(messages):
        role, param = message.get("role"), f"messages.{i}"
        if role == "user":
            out.extend(_anthropic_user_to_openai(message.get("content"), param=f"{param}.content"))
        elif role == "assistant":
            out.extend(_anthropic_assistant_to_openai(message.get("content"), param=f"{param}.content"))
        elif role == "system":
            texts = _text_of_parts(message.get("content"), param=f"{param}.content")
            out.append({"role": "system", "content": _openai_text_content(texts)})
        else:
            raise TranslationError(f"Unknown role {role!r}.", param=f"{param}.role")
    return out


def _blocks(content: Any) -> list[dict]:
    return [_text_block(content)] if isinstance(content, str) else list(content or ())


def _anthropic_user_to_openai(content: Any, *, param: str) -> list[dict]:
    """One Anthropic user turn -> role "tool" messages (which must follow the tool calls) then a user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(_blocks(content)):
        if block.get("type") == "tool_result":
            tool_messages.append(_anthropic_tool_result_to_openai(block, param=f"{param}.{j}"))
        else:
            parts.append(_anthropic_block_to_part(block, param=f"{param}.{j}"))
    out = tool_messages
    if parts:
        text_only = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if text_only else parts})
    return out


def _anthropic_block_to_part(block: dict, *, param: str) -> dict:
    kind = block.get("type")
    if kind == "text":
        return _text_part(block["text"])
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _anthropic_source_url(block["source"], param=param)}}
    if kind == "document":
        return _anthropic_document_to_part(block, param=param)
    raise TranslationError(f"Content block type {kind!r} is not supported for this model.", param=param)


def _anthropic_source_url(source: dict, *, param: str) -> str:
    if source.get("type") == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    if source.get("type") == "url":
        return source["url"]
    raise TranslationError(
        f"Source type {source.get('type')!r} is not supported for this model.", param=f"{param}.source"
    )


def _anthropic_document_to_part(block: dict, *, param: str) -> dict:
    source = block["source"]
    if source.get("type") == "text":
        return _text_part(source["data"])
    if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        filename = block.get("title") or "document.pdf"
        return {"type": "file", "file": {"filename": filename, "file_data": _anthropic_source_url(source, param=param)}}
    raise TranslationError("Only base64 PDF and plain-text documents are supported for this model.", param=param)


def _anthropic_tool_result_to_openai(block: dict, *, param: str) -> dict:
    content = block.get("content")
    if isinstance(content, list):
        # OpenAI tool messages carry text only.
        content = _openai_text_content(_text_of_parts(content, param=f"{param}.content"))
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content or ""}


def _anthropic_assistant_to_openai(content: Any, *, param: str) -> list[dict]:
    texts: list[str] = []
    tool_calls: list[dict] = []
    for j, block in enumerate(_blocks(content)):
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            tool_calls.append(_tool_use_to_tool_call(block))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # Earlier reasoning is Anthropic's own state; an OpenAI model neither reads nor needs it.
        else:
            raise TranslationError(
                f"Content block type {kind!r} is not supported for this model.", param=f"{param}.{j}"
            )
    if not texts and not tool_calls:
        return []  # a thinking-only turn: OpenAI refuses an assistant message with neither content nor tool calls
    message: dict[str, Any] = {"role": "assistant", "content": _openai_text_content(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return [message]


def _tool_use_to_tool_call(block: dict) -> dict:
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": _dumps(block.get("input") or {})},
    }


def _anthropic_tools_to_openai(body: dict) -> dict:
    tools = body.get("tools")
    if not tools:
        return {}
    out: dict[str, Any] = {
        "tools": [_anthropic_tool_to_openai(tool, param=f"tools.{i}") for i, tool in enumerate(tools)]
    }
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in ("any", "none"):
        out["tool_choice"] = "required" if kind == "any" else "none"
    elif kind != "auto":
        raise TranslationError(f"tool_choice {kind!r} is not supported for this model.", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def _anthropic_tool_to_openai(tool: dict, *, param: str) -> dict:
    if tool.get("type") not in (None, "custom"):
        # Server tools (web search, code execution, ...) run inside Anthropic's platform.
        raise TranslationError(f"Tool type {tool['type']!r} is not supported for this model.", param=param)
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    if tool.get("strict"):
        function["strict"] = True
    return {"type": "function", "function": function}


# --- responses -------------------------------------------------------------------------------


def anthropic_response_to_openai(
    message: dict, *, model: str, completion_id: str | None = None, created: int | None = None
) -> dict:
    """Anthropic Message JSON -> chat.completion JSON."""
    texts: list[str] = []
    tool_calls: list[dict] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_calls.append(_tool_use_to_tool_call(block))
        # Thinking and server-tool blocks have no place in a chat.completion message.
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": completion_id or _completion_id_from(message.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": stop_reason_to_finish_reason(message.get("stop_reason")) or "stop",
            }
        ],
        "usage": anthropic_usage_to_openai(message.get("usage")),
    }


def _completion_id_from(message_id: str | None) -> str:
    return f"chatcmpl-{(message_id or '').removeprefix('msg_') or int(time.time() * 1000)}"


def openai_response_to_anthropic(completion: dict, *, model: str) -> dict:
    """chat.completion JSON -> Anthropic Message JSON."""
    choice = (completion.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    content: list[dict] = []
    text = reply.get("content") or reply.get("refusal")
    if text:
        content.append(_text_block(text))
    for call in reply.get("tool_calls") or ():
        if call.get("type", "function") == "function":
            content.append(_tool_call_to_tool_use(call))
    stop_reason = "refusal" if reply.get("refusal") else finish_reason_to_stop_reason(choice.get("finish_reason"))
    return {
        "id": f"msg_{(completion.get('id') or '').removeprefix('chatcmpl-')}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason or "end_turn",
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(completion.get("usage")),
    }


def _tool_call_to_tool_use(call: dict) -> dict:
    function = call.get("function") or {}
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    # Arguments cut off by max_tokens are not JSON; Anthropic's input must be an object, and
    # stop_reason max_tokens already tells the client the call is incomplete.
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": function.get("name") or "",
        "input": arguments if isinstance(arguments, dict) else {},
    }


# --- streams ---------------------------------------------------------------------------------


class AnthropicToOpenAIStream:
    """Feeds Anthropic stream events and returns OpenAI chat.completion.chunk dicts to emit.

    Events are the dicts parsed from each SSE `data:` line; the dict's "type" is the event type.
    """

    def __init__(self, *, model: str, completion_id: str, include_usage: bool, created: int | None = None):
        self.model = model
        self.completion_id = completion_id
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self._usage: dict[str, Any] = _anthropic_usage(None)
        self._text: list[str] = []
        self._tool_of_block: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    @property
    def usage(self) -> dict:
        """Anthropic usage so far: message_start's, with message_delta's cumulative counts replacing it;
        `cache_creation` (the writes by lifetime) too when the stream gave it: billing needs it."""
        usage = {field: self._usage[field] for field in _ANTHROPIC_USAGE_FIELDS}
        if isinstance(self._usage.get("cache_creation"), dict):
            usage["cache_creation"] = dict(self._usage["cache_creation"])
        return usage

    @property
    def text(self) -> str:
        """Everything generated so far (text and tool arguments), for a token estimate if the stream breaks."""
        return "".join(self._text)

    def feed(self, event: dict) -> list[dict]:
        handlers = {
            "message_start": self._on_message_start,
            "content_block_start": self._on_content_block_start,
            "content_block_delta": self._on_content_block_delta,
            "message_delta": self._on_message_delta,
            "error": self._on_error,
        }
        handler = handlers.get(event.get("type"))
        # ping, content_block_stop, message_stop and event types added later produce nothing.
        return handler(event) if handler else []

    def finish(self) -> list[dict]:
        if not self.include_usage:
            return []
        return [{**self._envelope(), "choices": [], "usage": anthropic_usage_to_openai(self._usage)}]

    def _envelope(self) -> dict:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        if self.include_usage:
            chunk["usage"] = None  # OpenAI marks every chunk but the last when usage is on
        return chunk

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope(), "choices": [choice]}

    def _replace_usage(self, usage: dict | None) -> None:
        # Anthropic's counts are cumulative: a later value replaces the earlier one, never adds to it.
        for field, value in (usage or {}).items():
            if value is not None:
                self._usage[field] = value

    def _on_message_start(self, event: dict) -> list[dict]:
        self._replace_usage(event.get("message", {}).get("usage"))
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _on_content_block_start(self, event: dict) -> list[dict]:
        block = event.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            self._text.append(block["text"])
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        index = len(self._tool_of_block)
        self._tool_of_block[event["index"]] = index
        self._text.append(block["name"])
        call = {
            "index": index,
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _on_content_block_delta(self, event: dict) -> list[dict]:
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            self._text.append(delta["text"])
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            index = self._tool_of_block.get(event["index"])
            if index is None:
                return []  # arguments of a block we did not announce (a server tool)
            self._text.append(delta["partial_json"])
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]})]
        return []  # thinking, signature and citation deltas have no chat.completion counterpart

    def _on_message_delta(self, event: dict) -> list[dict]:
        self._replace_usage(event.get("usage"))
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        return [self._chunk({}, stop_reason_to_finish_reason(stop_reason) or "stop")]

    def _on_error(self, event: dict) -> list[dict]:
        error = event.get("error") or {}
        raise StreamError(error.get("type") or "api_error", error.get("message") or "")


class OpenAIToAnthropicStream:
    """Feeds OpenAI chat.completion.chunk dicts, returns Anthropic (event_type, data_dict) pairs."""

    def __init__(self, *, model: str, message_id: str, input_tokens_estimate: int = 0):
        self.model = model
        self.message_id = message_id
        self.input_tokens_estimate = input_tokens_estimate
        self._started = False
        self._next_index = 0
        self._open: tuple[str, int] | None = None  # (kind, Anthropic block index) of the open block
        self._block_of_tool: dict[int, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._finish_reason: str | None = None
        self._refused = False
        self._usage: dict | None = None
        self._text: list[str] = []

    @property
    def usage(self) -> dict | None:
        """The OpenAI usage from the final chunk, if it came."""
        return self._usage

    @property
    def text(self) -> str:
        """Everything generated so far (text and tool arguments), for a token estimate if the stream breaks."""
        return "".join(self._text)

    def feed(self, chunk: dict) -> list[tuple[str, dict]]:
        events = self._start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # n is always 1 through the gateway
            events.extend(self._on_delta(choice.get("delta") or {}))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[tuple[str, dict]]:
        events = self._start()
        events.extend(self._close())
        stop_reason = "refusal" if self._refused else finish_reason_to_stop_reason(self._finish_reason)
        events.append(
            _event(
                "message_delta",
                delta={"stop_reason": stop_reason or "end_turn", "stop_sequence": None},
                usage=self._final_usage(),
            )
        )
        events.append(_event("message_stop"))
        return events

    def _final_usage(self) -> dict:
        if self._usage is None:
            return {"output_tokens": 0}
        return openai_usage_to_anthropic(self._usage)

    def _start(self) -> list[tuple[str, dict]]:
        if self._started:
            return []
        self._started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens_estimate, "output_tokens": 0},
        }
        return [_event("message_start", message=message)]

    def _on_delta(self, delta: dict) -> list[tuple[str, dict]]:
        events: list[tuple[str, dict]] = []
        text = delta.get("content") or delta.get("refusal")
        if delta.get("refusal"):
            self._refused = True
        if text:
            events.extend(self._text_delta(text))
        for call in delta.get("tool_calls") or ():
            events.extend(self._tool_call_delta(call))
        return events

    def _text_delta(self, text: str) -> list[tuple[str, dict]]:
        # Text blocks open lazily: an empty one before a tool call would come back to Anthropic
        # in the client's next request, and Anthropic rejects empty text blocks.
        events: list[tuple[str, dict]] = []
        if self._open is None or self._open[0] != "text":
            events.extend(self._open_block("text", {"type": "text", "text": ""}))
        self._text.append(text)
        events.append(_event("content_block_delta", index=self._open[1], delta={"type": "text_delta", "text": text}))
        return events

    def _tool_call_delta(self, call: dict) -> list[tuple[str, dict]]:
        events: list[tuple[str, dict]] = []
        function = call.get("function") or {}
        openai_index = call.get("index", 0)
        if openai_index not in self._block_of_tool:
            block = {"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "", "input": {}}
            events.extend(self._open_block("tool", block))
            self._block_of_tool[openai_index] = self._open[1]
            self._text.append(block["name"])
        if function.get("arguments"):
            self._text.append(function["arguments"])
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            # OpenAI streams tool calls one after another, so this is the open block.
            events.append(_event("content_block_delta", index=self._block_of_tool[openai_index], delta=delta))
        return events

    def _open_block(self, kind: str, content_block: dict) -> list[tuple[str, dict]]:
        events = self._close()
        self._open = (kind, self._next_index)
        self._next_index += 1
        events.append(_event("content_block_start", index=self._open[1], content_block=content_block))
        return events

    def _close(self) -> list[tuple[str, dict]]:
        if self._open is None:
            return []
        index, self._open = self._open[1], None
        return [_event("content_block_stop", index=index)]


def _event(event_type: str, **data: Any) -> tuple[str, dict]:
    return event_type, {"type": event_type, **data}
