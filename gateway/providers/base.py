"""The small interface every provider adapter offers, and the one error type they raise.

Adapters speak their provider's native wire format as plain dicts, through the official SDK's
generic request method (`client.post(path, body=..., cast_to=httpx2.Response)`, the SDKs' own
way to call an endpoint with a body of one's choosing): the client's credentials, base URL,
Azure deployment routing, retries, timeouts and error classes all apply, but the wire body the
gateway already has is sent as it is, and the raw response is parsed with orjson. The typed
`create()` methods would walk the body against their TypedDicts (about 0.15 ms for one short
message, more for longer prompts) to produce the same JSON, and parse responses into pydantic
models that the gateway would dump again. Translation between formats is not their business.
"""

import re
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx2
import orjson

# The gateway's request id, sent upstream as `x-gateway-request-id` so that a provider's (or the
# mock's) log of calls can be matched to usage records and write-ahead traces (gateway/journal.py).
# A context variable rather than a parameter: it is set where the call is routed (proxy.py) and
# read here, without widening every adapter's signature.
GATEWAY_REQUEST_ID: ContextVar[str] = ContextVar("gateway_request_id", default="")
REQUEST_ID_HEADER = "x-gateway-request-id"
# The betas of the current request's `anthropic-beta` header (gateway/betas.py), set like the
# request id where the call is routed; only the Anthropic adapter sends them.
ANTHROPIC_BETAS: ContextVar[tuple[str, ...]] = ContextVar("anthropic_betas", default=())


def request_options() -> dict:
    """The SDK request options of the current upstream call: its gateway request id header."""
    request_id = GATEWAY_REQUEST_ID.get()
    return {"headers": {REQUEST_ID_HEADER: request_id}} if request_id else {}


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

    async def embed(self, body: dict) -> dict: ...


_LINE_END = re.compile(r"\r\n|\r|\n")


class _Lines:
    """Streamed text split into lines at `\r\n`, `\r` or `\n` (the SSE line ends, and no others:
    a JSON payload may hold U+2028, which `str.splitlines` would split at), the unterminated
    rest kept for the next read. A `\r\n` cut between two reads yields one extra empty line,
    which SSE ignores."""

    def __init__(self) -> None:
        self._rest = ""

    def decode(self, text: str) -> list[str]:
        lines = _LINE_END.split(self._rest + text)
        self._rest = lines.pop()
        return lines

    def flush(self) -> list[str]:
        rest, self._rest = self._rest, ""
        return [rest] if rest else []


class SSEEventStream:
    """Iterates the `data:` payloads of a streamed upstream response (an unread httpx2.Response) as dicts.

    `[DONE]` ends the stream (OpenAI). `event:` lines are not needed: both families repeat the
    event type inside the data (Anthropic's `type`), or have only one kind of event (OpenAI).
    """

    def __init__(self, response: httpx2.Response, on_error: Callable[[BaseException], BaseException]) -> None:
        self._response = response
        self._on_error = on_error

    async def __aiter__(self) -> AsyncIterator[dict]:
        try:
            async for line in self._response.aiter_lines():
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

    async def batches(self) -> AsyncIterator[list[dict]]:
        """The same events, a list per read from the provider: what arrived together can be
        relayed together (one write to the client instead of one per event). Nothing waits for
        more than what came: an event is handed on as soon as the read that brought it."""
        decoder = _Lines()
        try:
            async for text in self._response.aiter_text():
                events, done, error = self._parsed(decoder.decode(text))
                if events:
                    yield events
                if error is not None:
                    raise self._on_error(error) from error
                if done:
                    return
            events, _, error = self._parsed(decoder.flush())
            if events:
                yield events
            if error is not None:
                raise self._on_error(error) from error
        except ProviderError:
            raise
        except Exception as exc:  # the SDK's and its HTTP library's transport errors
            raise self._on_error(exc) from exc

    @staticmethod
    def _parsed(lines: list[str]) -> tuple[list[dict], bool, orjson.JSONDecodeError | None]:
        """(the events of `lines` up to `[DONE]` or a payload that is not JSON, whether `[DONE]`
        came, that payload's error)."""
        events = []
        for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return events, True, None
            if data:
                try:
                    events.append(orjson.loads(data))
                except orjson.JSONDecodeError as exc:
                    return events, True, exc
        return events, False, None

    async def aclose(self) -> None:
        await self._response.aclose()
