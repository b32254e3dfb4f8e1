"""OpenAI (and, through `azure.py`, Azure OpenAI) chat completions and the Responses API via the official SDK."""

from urllib.parse import quote

import httpx2
import openai
import orjson

from .base import ProviderError, SSEEventStream, connection_failed, request_options

PATH = "/chat/completions"  # under the client's base URL; AsyncAzureOpenAI adds /deployments/<model>
# Not a deployment path: AsyncAzureOpenAI sends it to {endpoint}/openai/responses?api-version=..., the
# body's `model` naming the deployment.
RESPONSES = "/responses"


def status_kind(status: int, code: str | None) -> tuple[str, bool]:
    """(kind, retryable) for an upstream HTTP status, shared by both SDK families."""
    if status == 400 and code == "content_filter":
        return "content_filter", False
    if status in (400, 422):
        return "bad_request", False
    if status in (401, 403):
        return "upstream_auth", True
    if status == 404:
        return "upstream_not_found", True
    if status == 413:
        return "too_large", False
    if status == 429:
        return "rate_limit", True
    if status == 529:
        return "overloaded", True
    if status in (408, 409) or status >= 500:
        return "server", True
    return "bad_request", False


def error_from_sdk(provider: str, exc: BaseException) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError) and not connection_failed(exc):
        return ProviderError(provider, 0, "timeout", "the upstream did not answer in time", True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(provider, 0, "connection", "the upstream could not be reached", True)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        code = body.get("code") if isinstance(body.get("code"), str) else None
        kind, retryable = status_kind(exc.status_code, code)
        message = body.get("message") if isinstance(body.get("message"), str) else ""
        return ProviderError(
            provider,
            exc.status_code,
            kind,
            message or f"upstream status {exc.status_code}",
            retryable,
            retry_after=exc.response.headers.get("retry-after"),
        )
    return ProviderError(provider, 0, "stream_broken", "the upstream stream broke off", False)


class OpenAIAdapter:
    provider = "openai"
    family = "openai"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def complete(self, body: dict) -> dict:
        try:
            response = await self.client.post(PATH, cast_to=httpx2.Response, body=body, options=request_options())
        except openai.OpenAIError as exc:
            raise error_from_sdk(self.provider, exc) from exc
        return orjson.loads(response.content)

    async def open_stream(self, body: dict) -> SSEEventStream:
        # The gateway always meters from the provider's own count (docs/design.md#wire-facts-billing-depends-on).
        body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        try:
            response = await self.client.post(
                PATH, cast_to=httpx2.Response, body=body, stream=True, options=request_options()
            )
        except openai.OpenAIError as exc:
            raise error_from_sdk(self.provider, exc) from exc
        return SSEEventStream(response, lambda exc: error_from_sdk(self.provider, exc))

    # --- the Responses API (gateway/responses.py) -------------------------------------------------

    async def responses_create(self, body: dict) -> dict:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        return await self._call("post", RESPONSES, body=body)

    async def responses_stream(self, body: dict) -> SSEEventStream:
        try:
            response = await self.client.post(
                RESPONSES,
                cast_to=httpx2.Response,
                body={**body, "stream": True},
                stream=True,
                options=request_options(),
            )
        except openai.OpenAIError as exc:
            raise error_from_sdk(self.provider, exc) from exc
        return SSEEventStream(response, lambda exc: error_from_sdk(self.provider, exc))

    async def responses_get(self, response_id: str) -> dict:
        return await self._call("get", f"{RESPONSES}/{quote(response_id, safe='')}")

    async def responses_delete(self, response_id: str) -> dict:
        return await self._call("delete", f"{RESPONSES}/{quote(response_id, safe='')}")

    async def responses_input_items(self, response_id: str, params: dict[str, str]) -> dict:
        path = f"{RESPONSES}/{quote(response_id, safe='')}/input_items"
        return await self._call("get", path, params=params)

    async def _call(self, method: str, path: str, *, body: dict | None = None, params: dict | None = None) -> dict:
        options = request_options()
        if params:
            options["params"] = params
        try:
            if method == "post":
                response = await self.client.post(path, cast_to=httpx2.Response, body=body, options=options)
            elif method == "delete":
                response = await self.client.delete(path, cast_to=httpx2.Response, options=options)
            else:
                response = await self.client.get(path, cast_to=httpx2.Response, options=options)
        except openai.OpenAIError as exc:
            raise error_from_sdk(self.provider, exc) from exc
        return orjson.loads(response.content)
