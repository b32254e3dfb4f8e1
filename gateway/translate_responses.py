"""OpenAI Responses API <-> Anthropic Messages, for Anthropic models behind POST /v1/responses.

Pure functions over wire JSON (plain dicts), like gateway/translate.py, whose errors and helpers
it shares: no Django, no I/O, no SDK calls. What cannot be said to Anthropic raises
`TranslationError` (a 400 for the client, naming the field); an `error` event inside an
Anthropic stream raises `StreamError`. The gateway keeps the conversation state itself: the
caller passes the stored chain (earlier input and output items) as `history`.

Request -> Anthropic Messages (`responses_request_to_anthropic`)
  mapped   `input` (a string, or items) after `history`; `instructions`, then system/developer
           message items (hoisted: Anthropic has one system prompt) -> `system`; user items ->
           user turns (input_text -> text, input_image with an http(s) or base64 data URL ->
           image, input_file with a PDF (data URL, raw base64 with a .pdf filename, or http(s)
           file_url) or a text/plain data URL -> document); assistant message items (output_text,
           refusal as text) -> assistant turns; function_call -> tool_use (id = call_id);
           function_call_output (string, or input_text/input_image/input_file parts) ->
           tool_result in the next user turn; consecutive same-role turns merged so roles
           alternate, tool results first in their turn; reasoning items this module produced ->
           thinking / redacted_thinking blocks (only when the request enables thinking);
           item_reference -> the earlier item with that id; function tools -> tools (strict kept);
           namespace tools -> their function tools named "<namespace>__<name>" (function_call
           items carry `namespace` and the plain name, both ways);
           tool_choice auto/none/required/{"type": "function"}/allowed_tools;
           parallel_tool_calls=false -> disable_parallel_tool_use; max_output_tokens -> max_tokens
           (DEFAULT_MAX_TOKENS when absent); temperature (clamped to 1); top_p (only without
           temperature); reasoning.effort -> thinking (REASONING_BUDGETS); text.format json_schema
           -> output_config.format; user / safety_identifier -> metadata.user_id; stream.
  dropped  store, metadata, previous_response_id (the caller resolved them into `history`),
           include (reasoning state is always returned), service_tier, prompt_cache_key,
           prompt_cache_retention, prompt_cache_options, truncation (Anthropic never truncates: a
           conversation too long is its 400, as with "disabled"), max_tool_calls (it limits
           built-in tools, which are refused), stream_options, client_metadata (Codex CLI's
           request tags), text.verbosity, reasoning.summary / generate_summary / mode / context,
           image `detail`, message `phase` and `status`, prompt_cache_breakpoint, function tool
           output_schema.
  refused  built-in tools (web_search, file_search, computer use, code_interpreter, mcp, shell,
           image_generation, custom, tool_search, ...) and tool_choice naming them; function tools
           with defer_loading or async; background, conversation, prompt, context_management,
           moderation, image, access_programs, top_logprobs > 0, include
           message.output_text.logprobs; text.format json_object; instructions as a list; item
           types other than the ones above; file_id images and files; a function_call without
           its function_call_output (or the reverse); a conversation that starts with the
           assistant; reasoning with max_output_tokens <= 1024, with temperature or top_p, or with
           a forced tool_choice (Anthropic refuses those with thinking); unknown parameters.

Reasoning: effort none/minimal -> no thinking; low/medium/high/xhigh/max -> thinking
{"type": "enabled", "budget_tokens": REASONING_BUDGETS[effort]}, with max_tokens defaulting to
budget + DEFAULT_MAX_TOKENS (at most REASONING_MAX_TOKENS) so the answer keeps its usual room. With
max_output_tokens (which bounds reasoning and answer together at both providers) the budget is at
most half of it, and at least Anthropic's minimum of 1024. A request that answers tool calls made
without thinking (reasoning was off then, or the client left the reasoning item out) goes without
thinking, since Anthropic refuses thinking in such a tool loop.

Anthropic Message -> Response (`anthropic_message_to_response`, and the same from a stream)
  Each text block -> a message item with one output_text part; tool_use -> a function_call item
  (call_id = tool_use id, arguments compact JSON); thinking -> a reasoning item whose summary
  holds the thinking text; redacted_thinking -> a reasoning item with an empty summary. Both carry
  the Anthropic block in `encrypted_content` ("anthropic:" + base64 JSON, signature included), so a
  client that sends the item back (store=false, include reasoning.encrypted_content) continues
  the conversation exactly. Server-tool blocks are left out. stop_reason max_tokens /
  model_context_window_exceeded -> status "incomplete", incomplete_details max_output_tokens (the
  last item "incomplete" too); refusal -> incomplete, content_filter; others -> "completed".
  Usage: input_tokens = input + cache reads + cache writes (OpenAI's counts include the cache),
  cached_tokens = cache reads, cache_write_tokens = cache writes, reasoning_tokens = Anthropic's
  thinking tokens when it reports them. Request fields are echoed as OpenAI echoes them.

Stream (`AnthropicToResponsesStream`): response.created, response.in_progress, then per block
output_item.added, content_part.added / reasoning_summary_part.added, the deltas, their .done
events, output_item.done (held until the next block or message_delta, which says whether the last
item was cut off), and response.completed or response.incomplete, held back until finish().
"""

import base64
import binascii
import uuid
from typing import Any

import orjson

from .translate import (
    _ANTHROPIC_IMAGE_TYPES,
    DEFAULT_MAX_TOKENS,
    StreamError,
    TranslationError,
    _anthropic_usage,
    _client_body,
    _dumps,
    _function_to_anthropic_tool,
    _merge_turns,
    _parse_data_url,
    _reject_unknown,
    _text_block,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "REASONING_BUDGETS",
    "AnthropicToResponsesStream",
    "StreamError",
    "TranslationError",
    "anthropic_message_to_response",
    "anthropic_usage_to_responses",
    "input_items",
    "responses_request_to_anthropic",
]

REASONING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 24576, "max": 28000}
"""reasoning.effort -> Anthropic thinking budget_tokens; "none" and "minimal" turn thinking off."""

REASONING_MAX_TOKENS = 32000
"""Ceiling of the default max_tokens with thinking: the smallest output limit among Claude models
that think (Opus 4 and 4.1), so a default never exceeds what the model allows."""

ANTHROPIC_MIN_THINKING_BUDGET = 1024

NAMESPACE_SEPARATOR = "__"
"""Between a namespace and a member's name in the Anthropic tool name (Anthropic allows [a-zA-Z0-9_-])."""

_THINKING_OFF = frozenset({"none", "minimal"})
_ANTHROPIC_MAX_TEMPERATURE = 1.0
_STATE_PREFIX = "anthropic:"
_HISTORY_PARAM = "previous_response_id"


# --- input items -----------------------------------------------------------------------------

_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_items(body: dict) -> list[dict]:
    """The request's `input` as Responses input items (a string input becomes one
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ...}]} item),
    each given an `id` (e.g. "msg_<hex>") when it has none: what GET /v1/responses/{id}/input_items lists.

    Items are otherwise kept as sent (any type: the OpenAI path stores them too); message items
    get `type` "message" and their string content becomes one text part, as OpenAI lists them."""
    raw = body.get("input") if isinstance(body, dict) else None
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TranslationError("input must be a string or an array of input items.", param="input")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise TranslationError("Each input item must be an object.", param=f"input[{i}]")
        item = dict(item)
        if item.get("type") is None and "role" in item:
            item["type"] = "message"
        if item.get("type") == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            part: dict[str, Any] = {"type": kind, "text": item["content"]}
            if kind == "output_text":
                part["annotations"] = []
            item["content"] = [part]
        if not item.get("id"):
            item = {"id": _new_id(_ID_PREFIXES.get(str(item.get("type")), "item")), **item}
        items.append(item)
    return items


# --- request ---------------------------------------------------------------------------------

_MAPPED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "text",
        "stream",
        "user",
        "safety_identifier",
    }
)
_DROPPED = frozenset(
    {
        "store",
        "metadata",
        "previous_response_id",
        "include",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "truncation",
        "max_tool_calls",
        "stream_options",
        "client_metadata",
    }
)
_REFUSED = frozenset(
    {
        "background",
        "background_options",
        "conversation",
        "prompt",
        "context_management",
        "moderation",
        "image",
        "access_programs",
        "top_logprobs",
    }
)


def _refuse_params(body: dict) -> None:
    _reject_unknown(body, _MAPPED | _DROPPED | _REFUSED)
    for param in sorted(_REFUSED - {"top_logprobs"}):
        if body.get(param):
            raise TranslationError(f"{param} is not supported for this model.", param=param)
    if body.get("top_logprobs"):
        raise TranslationError("This model does not return log probabilities.", param="top_logprobs")
    if "message.output_text.logprobs" in (body.get("include") or ()):
        raise TranslationError("This model does not return log probabilities.", param="include")


@_client_body
def responses_request_to_anthropic(body: dict, *, upstream_model: str, history: list[dict]) -> dict:
    """A Responses API request body -> an Anthropic Messages request body for `upstream_model`.

    `history`: the earlier turns of the conversation as Responses items, oldest first (the stored
    chain's input and output items), [] when there is no previous_response_id."""
    _refuse_params(body)
    budget = _thinking_budget(body)
    system, messages = _conversation(list(history or ()), body.get("input"), keep_thinking=budget is not None)
    if budget is not None and _tool_loop_without_thinking(messages):
        # Anthropic refuses thinking in a tool loop whose call was made without it (reasoning was
        # off then, or the client left the reasoning item out): this turn goes without thinking.
        budget = None
        system, messages = _conversation(list(history or ()), body.get("input"), keep_thinking=False)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise TranslationError("instructions must be a string for this model.", param="instructions")
    if instructions:
        system.insert(0, _text_block(instructions))
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": _max_tokens(body, budget), "messages": messages}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out.update(_sampling(body, thinking=budget is not None))
    if body.get("stream") is not None:
        out["stream"] = bool(body["stream"])
    out.update(_tools(body, thinking=budget is not None))
    user_id = body.get("user") or body.get("safety_identifier")
    if user_id:
        out["metadata"] = {"user_id": user_id}
    output_format = _text_format(body.get("text"))
    if output_format:
        out["output_config"] = {"format": output_format}
    return out


def _tool_loop_without_thinking(messages: list[dict]) -> bool:
    """The conversation answers the assistant's tool calls, and that assistant turn has no thinking."""
    if len(messages) < 2 or not isinstance(messages[-1]["content"], list):
        return False
    if not any(block["type"] == "tool_result" for block in messages[-1]["content"]):
        return False
    calling = messages[-2]["content"]
    return not (isinstance(calling, list) and calling[0]["type"] in ("thinking", "redacted_thinking"))


def _thinking_budget(body: dict) -> int | None:
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is None or effort in _THINKING_OFF:
        return None
    if effort not in REASONING_BUDGETS:
        raise TranslationError(f"Unknown reasoning effort {effort!r}.", param="reasoning.effort")
    budget = REASONING_BUDGETS[effort]
    limit = body.get("max_output_tokens")
    if limit is None:
        return budget
    if limit <= ANTHROPIC_MIN_THINKING_BUDGET:
        raise TranslationError(
            f"With reasoning, max_output_tokens must be above {ANTHROPIC_MIN_THINKING_BUDGET} for this model.",
            param="max_output_tokens",
        )
    return max(ANTHROPIC_MIN_THINKING_BUDGET, min(budget, limit // 2))


def _max_tokens(body: dict, budget: int | None) -> int:
    if body.get("max_output_tokens") is not None:
        return body["max_output_tokens"]
    if budget is None:
        return DEFAULT_MAX_TOKENS
    return min(budget + DEFAULT_MAX_TOKENS, REASONING_MAX_TOKENS)


def _sampling(body: dict, *, thinking: bool) -> dict:
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if thinking:
        # Anthropic refuses sampling changes with thinking on, as OpenAI's reasoning models do.
        for param, value in (("temperature", temperature), ("top_p", top_p)):
            if value is not None and value != 1:
                raise TranslationError(f"{param} cannot be combined with reasoning for this model.", param=param)
        return {}
    if temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1: anything hotter than 1 becomes Anthropic's hottest.
        return {"temperature": min(temperature, _ANTHROPIC_MAX_TEMPERATURE)}
    if top_p is not None:
        # Current Claude models refuse temperature and top_p together; temperature wins.
        return {"top_p": top_p}
    return {}


def _text_format(text: Any) -> dict | None:
    output_format = (text or {}).get("format") or {"type": "text"}
    kind = output_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        return {"type": "json_schema", "schema": output_format.get("schema") or {}}
    # json_object means "any JSON": Anthropic can only constrain output to a given schema.
    raise TranslationError(
        f"text.format {kind!r} is not supported for this model: use json_schema.", param="text.format"
    )


# --- tools -----------------------------------------------------------------------------------


def _tools(body: dict, *, thinking: bool) -> dict:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "auto", "none"):
            raise TranslationError("tool_choice requires tools.", param="tool_choice")
        return {}
    out_tools = []
    for i, tool in enumerate(tools):
        if tool.get("type") == "namespace":
            # Anthropic has no namespaces: the members go as tools named "<namespace>__<name>".
            members = tool.get("tools") or ()
            out_tools += [
                _tool(member, param=f"tools[{i}].tools[{j}]", namespace=tool["name"])
                for j, member in enumerate(members)
            ]
        else:
            out_tools.append(_tool(tool, param=f"tools[{i}]"))
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # Anthropic has no allow-list: sending only the allowed tools has the same effect.
        allowed = set()
        for j, tool in enumerate(choice.get("tools") or ()):
            if tool.get("type") != "function":
                raise TranslationError(
                    "Only function tools can be allowed for this model.", param=f"tool_choice.tools[{j}]"
                )
            allowed.add(tool["name"])
        out_tools = [tool for tool in out_tools if tool["name"] in allowed]
        choice = choice.get("mode") or "auto"
    tool_choice = _tool_choice(choice)
    if thinking and tool_choice["type"] in ("any", "tool"):
        raise TranslationError(
            "A forced tool_choice cannot be combined with reasoning for this model.", param="tool_choice"
        )
    if body.get("parallel_tool_calls") is False and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    out: dict[str, Any] = {"tools": out_tools}
    if tool_choice != {"type": "auto"}:
        out["tool_choice"] = tool_choice
    return out


def _namespaced(namespace: str | None, name: str) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _namespaced_names(request: dict) -> dict[str, tuple[str, str]]:
    """Anthropic tool name -> (namespace, function name), for the namespace tools of a request."""
    names = {}
    for tool in request.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            for member in tool.get("tools") or ():
                names[_namespaced(tool["name"], member["name"])] = (tool["name"], member["name"])
    return names


def _tool(tool: dict, *, param: str, namespace: str | None = None) -> dict:
    kind = tool.get("type")
    if kind != "function":
        # Built-in tools run inside OpenAI's platform; Anthropic models have no access to it.
        raise TranslationError(
            f"Tool type {kind!r} is not supported for this model: only function tools are.", param=f"{param}.type"
        )
    for field in ("defer_loading", "async"):
        if tool.get(field):
            raise TranslationError(
                f"Function tools with {field} are not supported for this model.", param=f"{param}.{field}"
            )
    callers = tool.get("allowed_callers")
    if callers is not None and "direct" not in callers:
        raise TranslationError(
            "Only directly called tools are supported for this model.", param=f"{param}.allowed_callers"
        )
    return _function_to_anthropic_tool(_namespaced(namespace, tool["name"]), tool)


def _tool_choice(choice: Any) -> dict:
    if choice in (None, "auto"):
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["name"]}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise TranslationError(f"tool_choice {kind!r} is not supported for this model.", param="tool_choice")


# --- conversation ----------------------------------------------------------------------------


def _conversation(history: list[dict], raw_input: Any, *, keep_thinking: bool) -> tuple[list[dict], list[dict]]:
    """History then input -> (system text blocks, alternating Anthropic messages)."""
    if isinstance(raw_input, str):
        raw_input = [{"type": "message", "role": "user", "content": raw_input}]
    elif raw_input is None:
        raw_input = []
    elif not isinstance(raw_input, list):
        raise TranslationError("input must be a string or an array of input items.", param="input")
    items = [(item, _HISTORY_PARAM) for item in history]
    items += [(item, f"input[{i}]") for i, item in enumerate(raw_input)]
    seen: dict[str, dict] = {}
    system: list[dict] = []
    turns: list[tuple[str, list[dict]]] = []
    for item, param in items:
        if not isinstance(item, dict):
            raise TranslationError("Each input item must be an object.", param=param)
        if item.get("type") == "item_reference":
            if item.get("id") not in seen:
                raise TranslationError(f"No earlier item with id {item.get('id')!r}.", param=f"{param}.id")
            item = seen[item["id"]]
        elif item.get("id"):
            seen[item["id"]] = item
        role, blocks = _item_to_turn(item, param=param, keep_thinking=keep_thinking)
        if role == "system":
            system.extend(blocks)
        else:
            turns.append((role, blocks))
    messages = _merge_turns(turns)
    if not messages:
        raise TranslationError("At least one user message is required.", param="input")
    if messages[0]["role"] != "user":
        raise TranslationError("The conversation must begin with a user message for this model.", param="input")
    _check_tool_pairs(messages)
    return system, messages


def _item_to_turn(item: dict, *, param: str, keep_thinking: bool) -> tuple[str, list[dict]]:
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind == "message":
        return _message_to_turn(item, param=param)
    if kind == "function_call":
        return "assistant", [_function_call_to_tool_use(item, param=param)]
    if kind == "function_call_output":
        return "user", [_function_output_to_tool_result(item, param=param)]
    if kind == "reasoning":
        block = _reasoning_to_block(item) if keep_thinking else None
        return "assistant", [block] if block else []
    raise TranslationError(f"Input item type {kind!r} is not supported for this model.", param=f"{param}.type")


def _message_to_turn(item: dict, *, param: str) -> tuple[str, list[dict]]:
    role, content = item.get("role"), item.get("content")
    param = f"{param}.content"
    if role in ("system", "developer"):
        return "system", [_text_block(t) for t in _texts(content, param=param) if t]
    if role == "assistant":
        return "assistant", [_text_block(t) for t in _texts(content, param=param, assistant=True) if t]
    if role == "user":
        return "user", _user_blocks(content, param=param)
    raise TranslationError(f"Unknown role {role!r}.", param=param.removesuffix(".content") + ".role")


def _texts(content: Any, *, param: str, assistant: bool = False) -> list[str]:
    """Text of system, developer and assistant content: a string or text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise TranslationError("content must be a string or an array of content parts.", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            texts.append(part["text"])
        elif kind == "refusal" and assistant:
            texts.append(part["refusal"])  # a past refusal is plain text to the model
        else:
            raise TranslationError(f"Only text content is supported here, got {kind!r}.", param=f"{param}[{j}]")
    return texts


def _user_blocks(content: Any, *, param: str) -> list[dict]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError("content must be a string or an array of content parts.", param=param)
    blocks = [_part_to_block(part, param=f"{param}[{j}]") for j, part in enumerate(content)]
    return [block for block in blocks if block is not None]


def _part_to_block(part: dict, *, param: str) -> dict | None:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return _text_block(part["text"]) if part["text"] else None  # Anthropic rejects empty text
    if kind == "input_image":
        return _image_block(part, param=param)
    if kind == "input_file":
        return _file_block(part, param=param)
    raise TranslationError(f"Content part type {kind!r} is not supported for this model.", param=f"{param}.type")


def _image_block(part: dict, *, param: str) -> dict:
    url = part.get("image_url")
    if not url:
        # A file_id points into the client's OpenAI account, which Anthropic cannot read.
        raise TranslationError("Images need an image_url (http(s) or base64 data URL) for this model.", param=param)
    param = f"{param}.image_url"
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, param=param)
        if media_type not in _ANTHROPIC_IMAGE_TYPES:
            raise TranslationError(f"Image type {media_type!r} is not supported for this model.", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("Image URLs must be http(s) or base64 data URLs.", param=param)


def _file_block(part: dict, *, param: str) -> dict:
    filename = part.get("filename") or ""
    if part.get("file_data"):
        data = part["file_data"]
        if data.startswith("data:"):
            media_type, data = _parse_data_url(data, param=f"{param}.file_data")
        elif filename.lower().endswith(".pdf"):
            media_type = "application/pdf"
        else:
            raise TranslationError("file_data must be a base64 data URL or a PDF.", param=f"{param}.file_data")
        if media_type == "application/pdf":
            source = {"type": "base64", "media_type": media_type, "data": data}
        elif media_type == "text/plain":
            source = {"type": "text", "media_type": media_type, "data": _decode_text(data, param=f"{param}.file_data")}
        else:
            raise TranslationError(f"File type {media_type!r} is not supported for this model.", param=param)
    elif part.get("file_url"):
        if not part["file_url"].startswith(("https://", "http://")):
            raise TranslationError("file_url must be an http(s) URL.", param=f"{param}.file_url")
        source = {"type": "url", "url": part["file_url"]}
    else:
        raise TranslationError("Files need file_data or file_url for this model (not file_id).", param=param)
    block: dict[str, Any] = {"type": "document", "source": source}
    if filename:
        block["title"] = filename
    return block


def _decode_text(data: str, *, param: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise TranslationError("file_data is not base64-encoded UTF-8 text.", param=param) from None


def _function_call_to_tool_use(item: dict, *, param: str) -> dict:
    raw = item.get("arguments") or "{}"
    try:
        arguments = orjson.loads(raw)
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        if param != _HISTORY_PARAM:
            raise TranslationError("Function call arguments must be a JSON object.", param=f"{param}.arguments")
        # A stored call cut off by max_output_tokens: its output already says it went wrong.
        arguments = {}
    name = _namespaced(item.get("namespace"), item["name"])
    return {"type": "tool_use", "id": item["call_id"], "name": name, "input": arguments}


def _function_output_to_tool_result(item: dict, *, param: str) -> dict:
    output = item["output"]
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": item["call_id"]}
    if isinstance(output, str):
        content: Any = output
    elif isinstance(output, list):
        content = _user_blocks(output, param=f"{param}.output")
    else:
        raise TranslationError("output must be a string or an array of content parts.", param=f"{param}.output")
    if content:
        block["content"] = content  # optional in Anthropic, which refuses empty text
    return block


def _check_tool_pairs(messages: list[dict]) -> None:
    """Every tool_use is answered in the next user turn and every tool_result answers one: Anthropic's
    rule, and OpenAI's ("No tool output found for function call")."""
    pending: set[str] = set()
    for message in messages:
        blocks = message["content"] if isinstance(message["content"], list) else []
        if message["role"] == "assistant":
            if pending:
                break
            pending = {block["id"] for block in blocks if block["type"] == "tool_use"}
            continue
        answered = {block["tool_use_id"] for block in blocks if block["type"] == "tool_result"}
        if answered - pending:
            call_id = sorted(answered - pending)[0]
            raise TranslationError(f"No function_call found for the output with call_id {call_id!r}.", param="input")
        pending -= answered
        if pending:
            break
    if pending:
        raise TranslationError(f"No function_call_output found for call_id {sorted(pending)[0]!r}.", param="input")


# --- reasoning state -------------------------------------------------------------------------


def _encode_state(block: dict) -> str:
    return _STATE_PREFIX + base64.b64encode(orjson.dumps(block)).decode()


def _reasoning_to_block(item: dict) -> dict | None:
    """A reasoning item this module produced -> its Anthropic block; anything else (an OpenAI
    model's reasoning, an edited item) -> None, left out."""
    state = item.get("encrypted_content") or ""
    if not state.startswith(_STATE_PREFIX):
        return None
    try:
        block = orjson.loads(base64.b64decode(state.removeprefix(_STATE_PREFIX), validate=True))
    except (binascii.Error, orjson.JSONDecodeError):
        return None
    if not isinstance(block, dict):
        return None
    if block.get("type") == "thinking" and isinstance(block.get("thinking"), str) and block.get("signature"):
        return {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}
    if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
        return {"type": "redacted_thinking", "data": block["data"]}
    return None


# --- response --------------------------------------------------------------------------------


def anthropic_usage_to_responses(usage: dict | None) -> dict:
    """Anthropic usage -> Responses usage: input_tokens counts cache reads and writes, as OpenAI's does."""
    counts = _anthropic_usage(usage)
    read, written = counts["cache_read_input_tokens"], counts["cache_creation_input_tokens"]
    prompt = counts["input_tokens"] + read + written
    thinking = ((usage or {}).get("output_tokens_details") or {}).get("thinking_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
        "output_tokens": counts["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": thinking},
        "total_tokens": prompt + counts["output_tokens"],
    }


_INCOMPLETE_REASONS = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}


def _status(stop_reason: str | None) -> tuple[str, dict | None]:
    reason = _INCOMPLETE_REASONS.get(stop_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _summary_text(text: str) -> dict:
    return {"type": "summary_text", "text": text}


def _message_item(item_id: str, content: list[dict], status: str) -> dict:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _function_call_item(
    item_id: str, block: dict, arguments: str, status: str, names: dict[str, tuple[str, str]]
) -> dict:
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": block["id"],
        "name": block["name"],
        "arguments": arguments,
    }
    if block["name"] in names:
        item["namespace"], item["name"] = names[block["name"]]
    return item


def _reasoning_item(item_id: str, block: dict) -> dict:
    summary = [_summary_text(block["thinking"])] if block["type"] == "thinking" and block["thinking"] else []
    return {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": _encode_state(block)}


def _block_to_item(
    block: dict, *, response_id: str, index: int, status: str, names: dict[str, tuple[str, str]]
) -> dict | None:
    kind = block.get("type")
    if kind == "text":
        return _message_item(_item_id("msg", response_id, index), [_output_text(block.get("text") or "")], status)
    if kind == "tool_use":
        arguments = _dumps(block.get("input") or {})
        return _function_call_item(_item_id("fc", response_id, index), block, arguments, status, names)
    if kind == "thinking":
        thinking = {
            "type": "thinking",
            "thinking": block.get("thinking") or "",
            "signature": block.get("signature") or "",
        }
        return _reasoning_item(_item_id("rs", response_id, index), thinking)
    if kind == "redacted_thinking":
        return _reasoning_item(_item_id("rs", response_id, index), {"type": "redacted_thinking", "data": block["data"]})
    return None  # server-tool blocks: the gateway never offers server tools


def _echo_tool(tool: dict) -> dict:
    if tool.get("type") == "namespace":
        members = [_echo_tool(member) for member in tool.get("tools") or ()]
        return {"type": "namespace", "name": tool.get("name"), "description": tool.get("description"), "tools": members}
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _response_object(
    *,
    request: dict,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    output: list[dict],
    usage: dict | None,
    incomplete_details: dict | None = None,
    error: dict | None = None,
) -> dict:
    """The Response envelope, echoing the request's fields with OpenAI's defaults."""
    reasoning = request.get("reasoning") or {}
    text = dict(request.get("text") or {})
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")

    def given(field: str, default: Any) -> Any:
        return default if request.get(field) is None else request[field]

    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": given("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": "default",
        "store": given("store", True),
        "temperature": given("temperature", 1.0),
        "text": text,
        "tool_choice": given("tool_choice", "auto"),
        "tools": [_echo_tool(tool) for tool in request.get("tools") or ()],
        "top_logprobs": given("top_logprobs", 0),
        "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"),
        "usage": usage,
        "user": request.get("user"),
        "metadata": given("metadata", {}),
    }


def anthropic_message_to_response(
    message: dict, *, model: str, response_id: str, request: dict, created_at: int
) -> dict:
    """An Anthropic Message -> a Responses API `response` object (openai.types.responses.Response)."""
    status, incomplete_details = _status(message.get("stop_reason"))
    output = []
    names = _namespaced_names(request)
    for index, block in enumerate(message.get("content") or ()):
        item = _block_to_item(block, response_id=response_id, index=index, status="completed", names=names)
        if item is not None:
            output.append(item)
    if status == "incomplete" and output and "status" in output[-1]:
        output[-1]["status"] = "incomplete"  # the item the limit cut off
    return _response_object(
        request=request,
        response_id=response_id,
        model=model,
        created_at=created_at,
        status=status,
        output=output,
        usage=anthropic_usage_to_responses(message.get("usage")),
        incomplete_details=incomplete_details,
    )


# --- stream ----------------------------------------------------------------------------------


def _sse(data: dict) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_ERROR_CODES = {"rate_limit_error": "rate_limit_exceeded"}


class _Block:
    """One Anthropic content block being streamed as one output item."""

    __slots__ = ("anthropic", "item_id", "output_index", "parts")

    def __init__(self, anthropic: dict, item_id: str, output_index: int) -> None:
        self.anthropic = anthropic  # the content_block of content_block_start
        self.item_id = item_id
        self.output_index = output_index
        self.parts: list[str] = []  # text, arguments JSON or thinking, as streamed

    @property
    def kind(self) -> str:
        return self.anthropic["type"]

    def item(self, status: str, names: dict[str, tuple[str, str]]) -> dict:
        """The finished item, as anthropic_message_to_response makes it."""
        streamed = "".join(self.parts)
        if self.kind == "text":
            return _message_item(self.item_id, [_output_text(streamed)], status)
        if self.kind == "tool_use":
            return _function_call_item(self.item_id, self.anthropic, _arguments(streamed), status, names)
        if self.kind == "thinking":
            signature = self.anthropic.get("signature") or ""
            return _reasoning_item(self.item_id, {"type": "thinking", "thinking": streamed, "signature": signature})
        return _reasoning_item(self.item_id, {"type": "redacted_thinking", "data": self.anthropic.get("data") or ""})


def _arguments(streamed: str) -> str:
    """Streamed tool input -> compact JSON, as in a non-streamed response; a cut-off prefix stays as it came."""
    if not streamed:
        return "{}"
    try:
        return _dumps(orjson.loads(streamed))
    except orjson.JSONDecodeError:
        return streamed


class AnthropicToResponsesStream:
    """Anthropic stream events in, Responses API SSE frames out (each with a sequence_number), in
    the order the openai SDK's `client.responses.stream()` accumulates. The last frame
    (response.completed or response.incomplete) is held back until finish(), so the gateway
    records usage before the client sees the end. Same protocol as the processors of
    gateway/streams.py, so `proxy._relay` can drive it."""

    def __init__(self, *, model: str, response_id: str, request: dict, created_at: int) -> None:
        self.model = model
        self.response_id = response_id
        self.request = request
        self.created_at = created_at
        self._sequence = 0
        self._started = False  # response.created went out
        self._reported = False  # message_start came: Anthropic's usage is known
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._ended = False  # message_delta or message_stop arrived: the answer is whole
        self._blocks: dict[int, _Block] = {}  # Anthropic index -> block streamed as an item
        self._output: dict[int, dict] = {}  # output index -> finished item
        self._closing: _Block | None = None  # stopped, its .done frames wait for the stop reason
        self._next_output = 0
        self._text: list[str] = []
        self._response: dict | None = None
        self._names = _namespaced_names(request)

    # -- protocol --

    def feed(self, event: dict) -> list[bytes]:
        handlers = {
            "message_start": self._on_message_start,
            "content_block_start": self._on_block_start,
            "content_block_delta": self._on_block_delta,
            "content_block_stop": self._on_block_stop,
            "message_delta": self._on_message_delta,
            "message_stop": self._on_message_stop,
            "error": self._on_error,
        }
        handler = handlers.get(event.get("type"))
        # ping and event types added later produce nothing.
        return handler(event) if handler else []

    def finish(self) -> list[bytes]:
        frames = self._start()
        frames += self._close_all(self._final_status()[0])
        response = self.response or self._build_response()
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        frames.append(self._frame(kind, response=response))
        return frames

    def incomplete(self) -> str | None:
        """Why the stream, which ended without an error, is not a whole answer (None: it is)."""
        return None if self._ended else "The upstream stream ended before the response was complete."

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        frames = self._start()
        code = _ERROR_CODES.get(error_type, "server_error")
        failed = self._response_so_far("failed", error={"code": code, "message": message})
        frames.append(self._frame("response.failed", response=failed))
        # The nested `error` makes the openai SDK raise (APIError), as it does on OpenAI's own error events.
        error = {"type": error_type, "code": error_type, "message": message, "param": None}
        frames.append(self._frame("error", code=error_type, message=message, param=None, error=error))
        return frames

    @property
    def text(self) -> str:
        """Everything generated so far (text, tool arguments, thinking), for a token estimate if the stream breaks."""
        return "".join(self._text)

    def reported_tokens(self):
        """Tokens as Anthropic reported them (billing.pricing.Tokens), None before message_start."""
        if not self._reported:
            return None
        # Imported here: gateway.metering needs Django, this module stays importable without it.
        from .metering import tokens_from_anthropic

        return tokens_from_anthropic(self._usage)

    @property
    def response(self) -> dict | None:
        """The final Response object once Anthropic has ended the message (for storage), else None."""
        if self._response is None and self._ended:
            self._response = self._build_response()
        return self._response

    @property
    def usage(self) -> dict:
        """Anthropic usage so far: message_start's, with message_delta's cumulative counts replacing it."""
        return dict(self._usage)

    # -- frames --

    def _frame(self, kind: str, **data: Any) -> bytes:
        frame = _sse({"type": kind, "sequence_number": self._sequence, **data})
        self._sequence += 1
        return frame

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        response = self._response_so_far("in_progress")
        return [
            self._frame("response.created", response=response),
            self._frame("response.in_progress", response=response),
        ]

    def _response_so_far(self, status: str, *, error: dict | None = None) -> dict:
        output = [self._output[index] for index in sorted(self._output)]
        return _response_object(
            request=self.request,
            response_id=self.response_id,
            model=self.model,
            created_at=self.created_at,
            status=status,
            output=output,
            usage=None,
            error=error,
        )

    def _final_status(self) -> tuple[str, dict | None]:
        return _status(self._stop_reason)

    def _build_response(self) -> dict:
        status, incomplete_details = self._final_status()
        response = self._response_so_far(status)
        response["incomplete_details"] = incomplete_details
        response["usage"] = anthropic_usage_to_responses(self._usage)
        return response

    # -- events --

    def _replace_usage(self, usage: dict | None) -> None:
        # Anthropic's counts are cumulative: a later value replaces the earlier one; a null erases nothing.
        for field, value in (usage or {}).items():
            if value is not None:
                self._usage[field] = value

    def _on_message_start(self, event: dict) -> list[bytes]:
        self._replace_usage((event.get("message") or {}).get("usage"))
        self._reported = True
        return self._start()

    def _on_block_start(self, event: dict) -> list[bytes]:
        frames = self._start() + self._close("completed")
        block = dict(event.get("content_block") or {})
        kind = block.get("type")
        prefix = {"text": "msg", "tool_use": "fc", "thinking": "rs", "redacted_thinking": "rs"}.get(str(kind))
        if prefix is None:
            return frames  # server-tool blocks: the gateway never offers server tools
        index = event["index"]
        state = _Block(block, _item_id(prefix, self.response_id, index), self._next_output)
        self._next_output += 1
        self._blocks[index] = state
        added = dict(state.item("in_progress", self._names))
        if kind == "text":
            added["content"] = []
        elif kind == "tool_use":
            added["arguments"] = ""
            self._text.append(block.get("name") or "")
        elif kind == "thinking":
            added["summary"] = []
            added.pop("encrypted_content")  # known once the signature has come
        frames.append(self._frame("response.output_item.added", output_index=state.output_index, item=added))
        where = {"item_id": state.item_id, "output_index": state.output_index}
        if kind == "text":
            frames.append(self._frame("response.content_part.added", **where, content_index=0, part=_output_text("")))
            if block.get("text"):
                frames += self._delta(state, block["text"])
        elif kind == "thinking":
            frames.append(
                self._frame("response.reasoning_summary_part.added", **where, summary_index=0, part=_summary_text(""))
            )
            if block.get("thinking"):
                frames += self._delta(state, block["thinking"])
        elif kind == "tool_use" and block.get("input"):
            frames += self._delta(state, _dumps(block["input"]))
        return frames

    def _delta(self, state: _Block, piece: str) -> list[bytes]:
        state.parts.append(piece)
        self._text.append(piece)
        where = {"item_id": state.item_id, "output_index": state.output_index}
        if state.kind == "text":
            return [self._frame("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])]
        if state.kind == "tool_use":
            return [self._frame("response.function_call_arguments.delta", **where, delta=piece)]
        return [self._frame("response.reasoning_summary_text.delta", **where, summary_index=0, delta=piece)]

    def _on_block_delta(self, event: dict) -> list[bytes]:
        state = self._blocks.get(event.get("index"))
        if state is None:
            return []
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and state.kind == "text" and delta.get("text"):
            return self._delta(state, delta["text"])
        if kind == "input_json_delta" and state.kind == "tool_use" and delta.get("partial_json"):
            return self._delta(state, delta["partial_json"])
        if kind == "thinking_delta" and state.kind == "thinking" and delta.get("thinking"):
            return self._delta(state, delta["thinking"])
        if kind == "signature_delta" and state.kind == "thinking":
            state.anthropic["signature"] = (state.anthropic.get("signature") or "") + (delta.get("signature") or "")
        return []  # citations have no Responses counterpart here

    def _on_block_stop(self, event: dict) -> list[bytes]:
        frames = self._close("completed")
        self._closing = self._blocks.pop(event.get("index"), None)
        return frames

    def _close_all(self, status: str) -> list[bytes]:
        """Close the stopped block and any block left open (a stream that skipped content_block_stop),
        so the client never holds an unfinished item; `status` goes to the last one."""
        pending = [self._closing] if self._closing else []
        pending += [self._blocks.pop(index) for index in sorted(self._blocks)]
        frames = []
        for k, state in enumerate(pending):
            self._closing = state
            frames += self._close(status if k == len(pending) - 1 else "completed")
        return frames

    def _close(self, status: str) -> list[bytes]:
        """The .done frames of the stopped block, with its final status."""
        state, self._closing = self._closing, None
        if state is None:
            return []
        item = state.item(status if state.kind in ("text", "tool_use") else "completed", self._names)
        where = {"item_id": state.item_id, "output_index": state.output_index}
        frames = []
        if state.kind == "text":
            part = item["content"][0]
            frames.append(
                self._frame("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[])
            )
            frames.append(self._frame("response.content_part.done", **where, content_index=0, part=part))
        elif state.kind == "tool_use":
            frames.append(
                self._frame(
                    "response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"]
                )
            )
        elif state.kind == "thinking":
            text = "".join(state.parts)
            frames.append(self._frame("response.reasoning_summary_text.done", **where, summary_index=0, text=text))
            frames.append(
                self._frame("response.reasoning_summary_part.done", **where, summary_index=0, part=_summary_text(text))
            )
        self._output[state.output_index] = item
        frames.append(self._frame("response.output_item.done", output_index=state.output_index, item=item))
        return frames

    def _on_message_delta(self, event: dict) -> list[bytes]:
        self._replace_usage(event.get("usage"))
        self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
        self._ended = True
        return self._close_all(self._final_status()[0])

    def _on_message_stop(self, event: dict) -> list[bytes]:
        self._ended = True
        return self._close_all(self._final_status()[0])

    def _on_error(self, event: dict) -> list[bytes]:
        error = event.get("error") or {}
        raise StreamError(str(error.get("type") or "api_error"), str(error.get("message") or "upstream error"))
