"""The mock provider's `POST /v1/messages/count_tokens`, in Anthropic's wire format.

`{"input_tokens": N}` where N is what `POST /v1/messages` bills for the same body as its whole
input (`prompt_tokens(messages, system)` in the model's billing encoding; without cache
directives all of it is `input_tokens`), so a count equals the next completion's usage.
Strict like the real endpoint: the Messages headers (`anthropic-version`, a key), `model` and
a non-empty `messages` of user/assistant turns are required, and the parameters of a generation
(`max_tokens`, `stream`, sampling) are refused as extra inputs. `[[mock:status=N]]` in the last
user message answers that error instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.mock.server import (
    Api,
    ApiError,
    _authenticate,
    _last_user_text,
    _send_json,
    billing_encoding,
    directive_error,
    error_body,
    parse_directives,
    prompt_tokens,
)

if TYPE_CHECKING:
    from gateway.mock.server import MockApp, Request, Send

# What the real endpoint answers "Extra inputs are not permitted" to.
GENERATION_ONLY = ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k", "metadata")


def count_input_tokens(body: object) -> int:
    """The count of a request body, or ApiError(400) for one the real endpoint refuses."""
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request: expected a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: Field required")
    for name in GENERATION_ONLY:
        if name in body:
            raise ApiError(400, f"{name}: Extra inputs are not permitted")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: at least one message is required")
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise ApiError(400, f'messages: Unexpected role "{role}".')
    error = directive_error(Api.ANTHROPIC, parse_directives(_last_user_text(messages)))
    if error is not None:
        raise error
    return prompt_tokens(messages, body.get("system"), encoding=billing_encoding(model))


async def count_tokens_endpoint(app: MockApp, request: Request, send: Send) -> None:
    request_id = app._id("req_")
    headers = [(b"request-id", request_id.encode())]
    try:
        _authenticate(Api.ANTHROPIC, request)
        count = count_input_tokens(request.body)
    except ApiError as error:
        body = error_body(Api.ANTHROPIC, error, request_id=request_id)
        await _send_json(send, error.status, body, headers + error.headers)
        return
    await _send_json(send, 200, {"input_tokens": count}, headers)
