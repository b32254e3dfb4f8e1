"""OpenAI Responses API <-> Anthropic Messages, for Anthropic models behind POST /v1/responses.

Pure functions over wire JSON (plain dicts), like gateway/translate.py: no Django, no I/O.
(Interface first; bodies are being filled in.)
"""

from typing import Any

from .translate import StreamError, TranslationError

__all__ = [
    "AnthropicToResponsesStream",
    "StreamError",
    "TranslationError",
    "anthropic_message_to_response",
    "input_items",
    "responses_request_to_anthropic",
]


def input_items(body: dict) -> list[dict]:
    """The request's `input` as Responses input items (a string input becomes one
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ...}]} item),
    each given an `id` (e.g. "msg_<hex>") when it has none: what GET /v1/responses/{id}/input_items lists."""
    raise NotImplementedError


def responses_request_to_anthropic(body: dict, *, upstream_model: str, history: list[dict]) -> dict:
    """A Responses API request body -> an Anthropic Messages request body for `upstream_model`.

    `history`: the earlier turns of the conversation as Responses items, oldest first (the stored
    chain's input and output items), [] when there is no previous_response_id."""
    raise NotImplementedError


def anthropic_message_to_response(
    message: dict, *, model: str, response_id: str, request: dict, created_at: int
) -> dict:
    """An Anthropic Message -> a Responses API `response` object (openai.types.responses.Response)."""
    raise NotImplementedError


class AnthropicToResponsesStream:
    """Anthropic stream events in, Responses API SSE frames out, `response.completed` held back until finish()."""

    def __init__(self, *, model: str, response_id: str, request: dict, created_at: int) -> None:
        self.model = model
        self.response_id = response_id
        self.request = request
        self.created_at = created_at

    def feed(self, event: dict) -> list[bytes]:
        raise NotImplementedError

    def finish(self) -> list[bytes]:
        raise NotImplementedError

    def error_frame(self, error_type: str, message: str) -> list[bytes]:
        raise NotImplementedError

    @property
    def text(self) -> str:
        raise NotImplementedError

    def reported_tokens(self) -> Any:
        raise NotImplementedError

    @property
    def response(self) -> dict | None:
        raise NotImplementedError
