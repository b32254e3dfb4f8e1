"""Stream processors: upstream events in, client SSE bytes out, usage and text kept on the way.

One processor per (client format, upstream format) pair. Same-format processors pass events
through with the model name rewritten; cross-format ones wrap the translators of
`translate.py`. Every processor holds back the stream's last frame until `finish()`, so the
view can commit the usage record before the client sees the end of the response.
"""

import orjson

from billing.pricing import Tokens

from .metering import tokens_from_anthropic, tokens_from_openai, tokens_from_responses
from .translate import AnthropicToOpenAIStream, OpenAIToAnthropicStream, StreamError

__all__ = ["ResponsesPassthrough", "StreamError", "processor_for", "sse_anthropic", "sse_event", "sse_openai"]

DONE = b"data: [DONE]\n\n"
ENDED_EARLY = "The upstream stream ended before the response was complete."


def sse_openai(chunk: dict) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def sse_event(event_type: str, data: dict) -> bytes:
    """A typed server-sent event (Anthropic's Messages and OpenAI's Responses streams)."""
    return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


sse_anthropic = sse_event


class OpenAIPassthrough:
    """OpenAI chunks to an OpenAI client. Upstream was always asked for usage; the client may not have been."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: dict | None = None
        self._text: list[str] = []

    def feed(self, chunk: dict) -> list[bytes]:
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise StreamError(str(error.get("type") or "api_error"), str(error.get("message") or "upstream error"))
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if not chunk.get("choices"):
            # The usage-only chunk: it reaches the client only when the client asked for it.
            if not (usage and self.include_usage):
                return []
        else:
            for choice in chunk["choices"]:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    self._text.append(content)
        if not self.include_usage:
            chunk.pop("usage", None)
        chunk["model"] = self.model
        return [sse_openai(chunk)]

    def finish(self) -> list[bytes]:
        return [DONE]

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        return [sse_openai({"error": {"message": message, "type": error_type, "param": None, "code": error_type}})]

    @property
    def text(self) -> str:
        return "".join(self._text)

    def reported_tokens(self) -> Tokens | None:
        return None if self.usage is None else tokens_from_openai(self.usage)


class AnthropicPassthrough:
    """Anthropic events to an Anthropic client. `message_delta` usage is cumulative: it replaces."""

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.usage: dict | None = None
        self._text: list[str] = []
        self._held: list[bytes] = []

    def feed(self, event: dict) -> list[bytes]:
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") or {}
            raise StreamError(str(error.get("type") or "api_error"), str(error.get("message") or "upstream error"))
        if kind == "message_start":
            message = event.get("message") or {}
            message["model"] = self.model
            self.usage = dict(message.get("usage") or {})
        elif kind == "message_delta":
            # Cumulative counts replace the earlier ones; a null does not erase a known count.
            delta_usage = {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            self.usage = {**(self.usage or {}), **delta_usage}
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._text.append(delta.get("text", ""))
        frame = sse_anthropic(str(kind), event)
        if kind == "message_stop":
            self._held.append(frame)
            return []
        return [frame]

    def finish(self) -> list[bytes]:
        return self._held or [sse_anthropic("message_stop", {"type": "message_stop"})]

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        return [sse_anthropic("error", {"type": "error", "error": {"type": error_type, "message": message}})]

    @property
    def text(self) -> str:
        return "".join(self._text)

    def reported_tokens(self) -> Tokens | None:
        return None if self.usage is None else tokens_from_anthropic(self.usage)


class AnthropicToOpenAI:
    """Anthropic upstream, OpenAI client."""

    def __init__(self, *, model: str, include_usage: bool, completion_id: str) -> None:
        self._translator = AnthropicToOpenAIStream(
            model=model, completion_id=completion_id, include_usage=include_usage
        )
        self._seen_start = False

    def feed(self, event: dict) -> list[bytes]:
        if event.get("type") == "message_start":
            self._seen_start = True
        return [sse_openai(chunk) for chunk in self._translator.feed(event)]

    def finish(self) -> list[bytes]:
        return [sse_openai(chunk) for chunk in self._translator.finish()] + [DONE]

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        return [sse_openai({"error": {"message": message, "type": error_type, "param": None, "code": error_type}})]

    @property
    def text(self) -> str:
        return self._translator.text

    def reported_tokens(self) -> Tokens | None:
        return tokens_from_anthropic(self._translator.usage) if self._seen_start else None


class OpenAIToAnthropic:
    """OpenAI upstream, Anthropic client."""

    def __init__(self, *, model: str, message_id: str, input_tokens_estimate: int) -> None:
        self._translator = OpenAIToAnthropicStream(
            model=model, message_id=message_id, input_tokens_estimate=input_tokens_estimate
        )

    def feed(self, chunk: dict) -> list[bytes]:
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise StreamError(str(error.get("type") or "api_error"), str(error.get("message") or "upstream error"))
        return [sse_anthropic(kind, data) for kind, data in self._translator.feed(chunk)]

    def finish(self) -> list[bytes]:
        return [sse_anthropic(kind, data) for kind, data in self._translator.finish()]

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        return [sse_anthropic("error", {"type": "error", "error": {"type": error_type, "message": message}})]

    @property
    def text(self) -> str:
        return self._translator.text

    def reported_tokens(self) -> Tokens | None:
        usage = self._translator.usage
        return None if usage is None else tokens_from_openai(usage)


class ResponsesPassthrough:
    """Responses API events (OpenAI or Azure upstream) to a Responses client.

    Events pass through with the model name rewritten in the response objects they carry. The
    stream's last event (`response.completed`, `response.incomplete` or `response.failed`) carries
    the usage and the whole response: it is held back until `finish()`. An upstream `error` event
    raises `StreamError`; the error frame the gateway sends has the Responses `error` event's
    fields and an `error` object, on which the openai SDK raises.
    """

    TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.usage: dict | None = None
        self.response: dict | None = None  # the final response object, once the stream ended
        self._text: list[str] = []
        self._held: list[bytes] = []
        self._sequence = -1

    def feed(self, event: dict) -> list[bytes]:
        kind = str(event.get("type"))
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else event
            raise StreamError(str(error.get("code") or error.get("type") or "api_error"), str(error.get("message")))
        if isinstance(event.get("sequence_number"), int):
            self._sequence = event["sequence_number"]
        response = event.get("response")
        if isinstance(response, dict):
            response["model"] = self.model
        if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            delta = event.get("delta")
            if isinstance(delta, str):
                self._text.append(delta)
        frame = sse_event(kind, event)
        if kind in self.TERMINAL:
            self.response = response if isinstance(response, dict) else None
            usage = response.get("usage") if isinstance(response, dict) else None
            if isinstance(usage, dict):
                self.usage = usage
            self._held.append(frame)
            return []
        return [frame]

    def finish(self) -> list[bytes]:
        if not self._held:  # the upstream stream ended without its last event: not a complete answer
            return self.error_frame("api_error", ENDED_EARLY)
        return self._held

    def incomplete(self) -> str | None:
        """Why the stream, which ended without an error, is not a whole answer (None: it is)."""
        return None if self._held else ENDED_EARLY

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        self._sequence += 1
        error = {"type": error_type, "code": error_type, "message": message, "param": None}
        data = {"type": "error", "code": error_type, "message": message, "param": None}
        return [sse_event("error", {**data, "sequence_number": self._sequence, "error": error})]

    @property
    def text(self) -> str:
        return "".join(self._text)

    def reported_tokens(self) -> Tokens | None:
        return None if self.usage is None else tokens_from_responses(self.usage)


def processor_for(
    *, client: str, upstream: str, model: str, include_usage: bool, request_id: str, prompt_estimate: int
):
    if client == upstream == "openai":
        return OpenAIPassthrough(model=model, include_usage=include_usage)
    if client == upstream == "anthropic":
        return AnthropicPassthrough(model=model)
    if client == "openai":
        return AnthropicToOpenAI(model=model, include_usage=include_usage, completion_id=f"chatcmpl-{request_id}")
    return OpenAIToAnthropic(model=model, message_id=f"msg_{request_id}", input_tokens_estimate=prompt_estimate)
