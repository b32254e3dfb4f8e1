"""The mock provider's OpenAI Responses API (`POST /v1/responses` and friends), in OpenAI's wire format.

Endpoints (OpenAI under /v1 with `Authorization: Bearer`; Azure under /openai with `api-key` and
`api-version`: `AsyncAzureOpenAI` does not put `/responses` under a deployment path, the body's
`model` names the deployment)
    POST   /v1/responses                         JSON, or `stream: true`: the typed event sequence
    GET    /v1/responses/{id}                    a stored response
    DELETE /v1/responses/{id}                    {"id", "object": "response", "deleted": true}
    GET    /v1/responses/{id}/input_items        `limit` (1-100, 20), `order` (asc/desc, desc), `after`
    (and the same under /openai/responses for Azure)

State is in memory, per mock process, like a provider account: a response is kept unless `store` is
false. A `previous_response_id` this process does not hold is a 404 (as at OpenAI), so that a
continuation routed to the wrong deployment fails loudly; its conversation (earlier inputs and
outputs) is part of the prompt, and billed.

Replies and usage are the chat mock's (`compose_reply`, `usage_of`, the same BPE counting and
`[[mock:...]]` directives, read from the last user message of the input): input items are counted
as chat messages (a message's text parts; a function call's name and arguments; a function call
output's text), `instructions` as the system prompt, so
    input_tokens  = count_message_tokens(history + input as messages) + count_tokens(instructions)
    output_tokens = the reply's tokens + reasoning tokens; input_tokens_details.cached_tokens = [[mock:cached=N]],
    input_tokens_details.cache_write_tokens = [[mock:cache_write=N]] (both inside input_tokens)
One more directive, for this API only: `[[mock:reasoning=N]]` adds a reasoning item and N reasoning
tokens (inside output_tokens, as OpenAI counts them). `[[mock:tool]]` with function tools calls the
first one (or `tool_choice`'s), unless the input ends with a function call's output (the model then
answers in text). A reply cut by `max_output_tokens` is `status: "incomplete"`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import server

Json = dict[str, Any]

_ID = r"([A-Za-z0-9_\-]+)"
_ROUTE = re.compile(r"/(?:v1|openai)/responses(?:/" + _ID + r"(/input_items)?)?")
_REASONING = re.compile(r"\[\[mock:reasoning=([0-9]+)\]\]")


def route(path: str) -> re.Match | None:
    """The match of a Responses API path, or None."""
    return _ROUTE.fullmatch(path)


@dataclass(slots=True)
class Kept:
    response: Json
    input_items: list[Json]
    conversation: list[Json] = field(default_factory=list)  # earlier turns + this input + this output


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)  # input_text, output_text
        )
    return ""


def as_messages(items: list[Json]) -> list[Json]:
    """Responses items as chat-like messages, for counting (see the module docstring)."""
    messages = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role", "user"), "content": _text(item.get("content"))})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": f"{item.get('name', '')} {item.get('arguments', '')}"})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "content": output if isinstance(output, str) else _text(output)})
        elif kind == "reasoning":
            continue  # reasoning items carry no text to bill again
        else:
            messages.append({"role": "user", "content": orjson.dumps(item).decode()})
    return messages


def input_items(body: Json) -> list[Json]:
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise server.ApiError(400, "Invalid 'input': expected a string or an array of input items.", param="input")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise server.ApiError(400, "Invalid 'input': every item must be an object.", param="input")
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        items.append(item)
    return items


def _tool(body: Json, items: list[Json]) -> tuple[str, Json] | None:
    if items and items[-1].get("type") == "function_call_output":
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    wanted = choice.get("name") if isinstance(choice, dict) else None
    tools = [t for t in server._list(body.get("tools")) if isinstance(t, dict) and t.get("type") == "function"]
    return server._pick_tool([(t.get("name"), t.get("parameters")) for t in tools], wanted)


def _last_user_text(items: list[Json]) -> str:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return _text(item.get("content"))
    return ""


def _usage(usage: server.Usage, reasoning: int) -> Json:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read, "cache_write_tokens": usage.cache_write},
        "output_tokens": usage.output_tokens + reasoning,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.prompt_tokens + usage.output_tokens + reasoning,
    }


class ResponsesApi:
    """The Responses endpoints of one mock process, and the responses it keeps."""

    def __init__(self, app: server.MockApp) -> None:
        self.app = app
        self.kept: dict[str, Kept] = {}

    async def handle(self, match: re.Match, api: server.Api, request: server.Request, receive, send) -> None:
        request_id = self.app._id("req_")
        headers = [(b"x-request-id", request_id.encode())]
        response_id, listing = match.group(1), match.group(2)
        directives = server.Directives()
        try:
            if self.app.settings.fault_rate and self.app._faults.random() < self.app.settings.fault_rate:
                raise server.injected_error(api, self.app.settings.fault_status)
            server._authenticate(api, request)
            if response_id is None:
                if request.method != "POST":
                    raise server.ApiError(405, f"Method {request.method} not allowed.")
                body, exchange, items, history, reasoning = self._exchange(request)
                directives = exchange.directives
                if error := server.directive_error(api, directives):
                    raise error
            else:
                await server._send_json(send, 200, self._stored(request, response_id, listing), headers)
                return
        except server.ApiError as error:
            await self.app._pause_before_answer(directives)
            body_ = server.error_body(api, error, request_id=request_id)
            await server._send_json(send, error.status, body_, headers + error.headers)
            return
        reply = server.compose_reply(exchange, tool_id=self.app._id("call_"))
        usage = server.usage_of(exchange, reply)
        response = self._response(body, exchange, reply, usage, reasoning)
        if body.get("store") is not False:
            output = response["output"]
            self.kept[response["id"]] = Kept(response, items, conversation=history + items + output)
        await self.app._pause_before_answer(directives)
        if exchange.stream:
            delay_ms = directives.chunk_delay_ms
            delay_ms = self.app.settings.chunk_delay_ms if delay_ms is None else delay_ms
            await server._send_stream(
                send, receive, stream_body(response, reply), headers, directives, delay_s=delay_ms / 1000
            )
        else:
            await server._send_json(send, 200, response, headers, cut=directives.break_after is not None)

    def _exchange(self, request: server.Request):
        body = request.body
        if not isinstance(body, dict):
            raise server.ApiError(400, "We could not parse the JSON body of your request: expected a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise server.ApiError(400, "Missing required parameter: 'model'.", param="model")
        items = input_items(body)
        for index, item in enumerate(items):
            item.setdefault("id", self.app._id("fco_" if item["type"] == "function_call_output" else "msg_"))
            items[index] = item
        history: list[Json] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            kept = self.kept.get(previous) if isinstance(previous, str) else None
            if kept is None:
                raise server.ApiError(
                    404, f"Previous response with id '{previous}' not found.", param="previous_response_id"
                )
            history = list(kept.conversation)
        text = _last_user_text(items)
        reasoning = sum(int(n) for n in _REASONING.findall(text))
        encoding = server.billing_encoding(model)
        prompt = server.prompt_tokens(as_messages(history + items), body.get("instructions"), encoding=encoding)
        exchange = server.Exchange(
            model=model,
            prompt_tokens=prompt,
            prompt_text=text,
            max_tokens=server._optional_count(body, "max_output_tokens"),
            stops=(),
            stream=body.get("stream") is True,
            include_usage=False,
            tool=_tool(body, items),
            directives=server.parse_directives(_REASONING.sub("", text)),
        )
        return body, exchange, items, history, reasoning

    def _response(self, body: Json, exchange, reply, usage: server.Usage, reasoning: int) -> Json:
        output: list[Json] = []
        if reasoning:
            item: Json = {"id": self.app._id("rs_"), "type": "reasoning", "summary": []}
            if "reasoning.encrypted_content" in (body.get("include") or []):
                item["encrypted_content"] = "gAAAAmock" + self.app._run
            output.append(item)
        if reply.tool is not None:
            output.append(
                {
                    "id": self.app._id("fc_"),
                    "type": "function_call",
                    "status": "completed",
                    "arguments": reply.tool.arguments,
                    "call_id": reply.tool.id,
                    "name": reply.tool.name,
                }
            )
        else:
            part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
            output.append(
                {
                    "id": self.app._id("msg_"),
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [part],
                }
            )
        incomplete = {"length": "max_output_tokens", "filtered": "content_filter"}.get(reply.finish)
        return {
            "id": self.app._id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if incomplete else "completed",
            "background": False,
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": exchange.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation") or "disabled",
            "usage": _usage(usage, reasoning),
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def _stored(self, request: server.Request, response_id: str, listing: str | None) -> Json:
        kept = self.kept.get(response_id)
        if kept is None:
            raise server.ApiError(404, f"Response with id '{response_id}' not found.", param="response_id")
        if listing:
            if request.method != "GET":
                raise server.ApiError(405, f"Method {request.method} not allowed.")
            return _page(kept.input_items, request.query)
        if request.method == "GET":
            return kept.response
        if request.method == "DELETE":
            del self.kept[response_id]
            return {"id": response_id, "object": "response", "deleted": True}
        raise server.ApiError(405, f"Method {request.method} not allowed.")


def _page(items: list[Json], query: dict[str, str]) -> Json:
    limit_text = query.get("limit", "20")
    if not (limit_text.isdigit() and 1 <= int(limit_text) <= 100):
        raise server.ApiError(400, "Invalid 'limit': expected an integer from 1 to 100.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise server.ApiError(400, "Invalid 'order': expected 'asc' or 'desc'.", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    data = ordered[: int(limit_text)]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > len(data),
    }


# --- the stream -----------------------------------------------------------------------------------------


def _event(kind: str, payload: Json) -> tuple[str, Json]:
    return kind, {"type": kind, **payload}


def stream_body(response: Json, reply) -> server.StreamBody:
    """The event sequence of `client.responses.stream()`, sequence numbers in order of sending;
    `content` holds one delta event per piece (what break_after and stream_error count)."""
    in_progress = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    head: list[tuple[str, Json]] = [
        _event("response.created", {"response": in_progress}),
        _event("response.in_progress", {"response": in_progress}),
    ]
    content: list[tuple[str, Json]] = []
    tail: list[tuple[str, Json]] = []
    last = len(response["output"]) - 1
    for index, item in enumerate(response["output"]):
        kind = item["type"]
        target = head if index < last else None  # items before the last are complete before its deltas
        if kind == "reasoning":
            events = [
                _event("response.output_item.added", {"output_index": index, "item": item}),
                _event("response.output_item.done", {"output_index": index, "item": item}),
            ]
            (target if target is not None else tail).extend(events)
        elif kind == "function_call":
            head.append(
                _event(
                    "response.output_item.added",
                    {"output_index": index, "item": {**item, "status": "in_progress", "arguments": ""}},
                )
            )
            for piece in reply.pieces:
                content.append(
                    _event(
                        "response.function_call_arguments.delta",
                        {"item_id": item["id"], "output_index": index, "delta": piece},
                    )
                )
            tail.extend(
                [
                    _event(
                        "response.function_call_arguments.done",
                        {**{"item_id": item["id"], "output_index": index}, **_call_fields(item)},
                    ),
                    _event("response.output_item.done", {"output_index": index, "item": item}),
                ]
            )
        else:
            part = item["content"][0]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            head.extend(
                [
                    _event(
                        "response.output_item.added",
                        {"output_index": index, "item": {**item, "status": "in_progress", "content": []}},
                    ),
                    _event("response.content_part.added", {**where, "part": {**part, "text": ""}}),
                ]
            )
            for piece in reply.pieces or [""]:
                content.append(_event("response.output_text.delta", {**where, "delta": piece, "logprobs": []}))
            tail.extend(
                [
                    _event("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
                    _event("response.content_part.done", {**where, "part": part}),
                    _event("response.output_item.done", {"output_index": index, "item": item}),
                ]
            )
    final = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    tail.append(_event(final, {"response": response}))
    events = head + content + tail
    frames = [_frame(kind, {**payload, "sequence_number": number}) for number, (kind, payload) in enumerate(events)]
    error = _frame(
        "error",
        {
            "type": "error",
            "code": "server_error",
            "message": server._STATUS_MESSAGES[500],
            "param": None,
            "sequence_number": len(head) + (len(content) + 1) // 2,
        },
    )
    return server.StreamBody(
        head=frames[: len(head)],
        content=frames[len(head) : len(head) + len(content)],
        tail=frames[len(head) + len(content) :],
        error=error,
    )


def _call_fields(item: Json) -> Json:
    return {"name": item["name"], "arguments": item["arguments"]}


def _frame(kind: str, payload: Json) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
