"""Anthropic Messages (and its token count) via the official SDK."""

import typing

import anthropic
import httpx2
import orjson
from anthropic.types import AnthropicBetaParam

from .base import ANTHROPIC_BETAS, ProviderError, SSEEventStream, connection_failed, request_options
from .openai import status_kind


def error_from_sdk(exc: BaseException) -> ProviderError:
    if isinstance(exc, anthropic.APITimeoutError) and not connection_failed(exc):
        return ProviderError("anthropic", 0, "timeout", "the upstream did not answer in time", True)
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError("anthropic", 0, "connection", "the upstream could not be reached", True)
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        message = error.get("message") if isinstance(error.get("message"), str) else ""
        kind, retryable = status_kind(exc.status_code, None)
        return ProviderError(
            "anthropic",
            exc.status_code,
            kind,
            message or f"upstream status {exc.status_code}",
            retryable,
            retry_after=exc.response.headers.get("retry-after"),
        )
    return ProviderError("anthropic", 0, "stream_broken", "the upstream stream broke off", False)


def sdk_betas() -> frozenset[str]:
    """The beta names the installed SDK lists (`AnthropicBetaParam`'s literals)."""
    names: set[str] = set()
    for member in typing.get_args(AnthropicBetaParam):
        names.update(arg for arg in typing.get_args(member) if isinstance(arg, str))
    return frozenset(names)


def _options() -> dict:
    """The request's options, with its `anthropic-beta` header when the caller named betas."""
    options = request_options()
    betas = ANTHROPIC_BETAS.get()
    if betas:
        options = {**options, "headers": {**options.get("headers", {}), "anthropic-beta": ",".join(betas)}}
    return options


class AnthropicAdapter:
    provider = "anthropic"
    family = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self.client = client

    async def complete(self, body: dict) -> dict:
        body = {k: v for k, v in body.items() if k != "stream"}
        try:
            response = await self.client.post("/v1/messages", cast_to=httpx2.Response, body=body, options=_options())
        except anthropic.AnthropicError as exc:
            raise error_from_sdk(exc) from exc
        return orjson.loads(response.content)

    async def open_stream(self, body: dict) -> SSEEventStream:
        try:
            response = await self.client.post(
                "/v1/messages",
                cast_to=httpx2.Response,
                body={**body, "stream": True},
                stream=True,
                options=_options(),
            )
        except anthropic.AnthropicError as exc:
            raise error_from_sdk(exc) from exc
        return SSEEventStream(response, error_from_sdk)

    async def count_tokens(self, body: dict) -> dict:
        """`POST /v1/messages/count_tokens`: `{"input_tokens": N}`."""
        try:
            response = await self.client.post(
                "/v1/messages/count_tokens", cast_to=httpx2.Response, body=body, options=_options()
            )
        except anthropic.AnthropicError as exc:
            raise error_from_sdk(exc) from exc
        return orjson.loads(response.content)
