"""The small interface every provider adapter offers, and the one error type they raise.

Adapters speak their provider's native wire format as plain dicts (orjson-parsed bytes from
the official SDK's raw response), so the gateway never pays for building and dumping the
SDK's pydantic models on the hot path. Translation between formats is not their business.
"""

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson


@dataclass
class ProviderError(Exception):
    """An upstream failure before or during a response.

    `status` is the upstream HTTP status (0 when there was none: connection error or timeout);
    `kind` is what happened, in our words; `retryable` says whether another deployment may
    succeed where this one failed.
    """

    provider: str
    status: int
    kind: str
    message: str
    retryable: bool
    retry_after: str | None = None

    def __str__(self) -> str:
        return f"{self.provider} {self.status} {self.kind}: {self.message}"


def connection_failed(exc: BaseException) -> bool:
    """Whether an SDK "timeout" was in truth a refused, reset or dropped connection.

    The SDKs' aiohttp transport maps every aiohttp connection error, a refused connection
    included, to httpx2's ConnectTimeout, so the SDK raises its APITimeoutError; aiohttp's own
    exception is still at the end of the cause chain and says which it was.
    """
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ServerTimeoutError):
            return False
        if isinstance(cause, aiohttp.ClientConnectionError):
            return True
        cause = cause.__cause__
    return False


class EventStream(Protocol):
    """Parsed events of one upstream stream. `aclose()` must be called in every case."""

    def __aiter__(self) -> AsyncIterator[dict]: ...

    async def aclose(self) -> None: ...


class Adapter(Protocol):
    provider: str
    family: str  # "openai" or "anthropic": the wire format the adapter speaks

    async def complete(self, body: dict) -> dict: ...

    async def open_stream(self, body: dict) -> EventStream: ...


def split_params(create: Callable, body: dict) -> tuple[dict, dict]:
    """Split a wire body into the SDK method's named parameters and the rest (sent as extra_body).

    The SDK's `create()` refuses unknown keyword arguments; newer API fields that an older SDK
    does not know still reach the provider through `extra_body`.
    """
    known = _named_params(create)
    params = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    return params, extra


_PARAM_CACHE: dict = {}


def _named_params(create: Callable) -> frozenset[str]:
    key = getattr(create, "__qualname__", repr(create))
    names = _PARAM_CACHE.get(key)
    if names is None:
        names = frozenset(
            n
            for n, p in inspect.signature(create).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and not n.startswith("extra_") and n != "timeout"
        )
        _PARAM_CACHE[key] = names
    return names


class SSEEventStream:
    """Iterates the `data:` payloads of a raw SDK streaming response as dicts.

    `[DONE]` ends the stream (OpenAI). `event:` lines are not needed: both families repeat the
    event type inside the data (Anthropic's `type`), or have only one kind of event (OpenAI).
    """

    def __init__(self, context_manager, response, on_error: Callable[[BaseException], BaseException]) -> None:
        self._cm = context_manager
        self._response = response
        self._on_error = on_error

    async def __aiter__(self) -> AsyncIterator[dict]:
        try:
            async for line in self._response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                if data:
                    yield orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._on_error(exc) from exc
        except Exception as exc:  # the SDK's and its HTTP library's transport errors
            raise self._on_error(exc) from exc

    async def aclose(self) -> None:
        await self._cm.__aexit__(None, None, None)
