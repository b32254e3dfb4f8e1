"""One request through `proxy_platform.asgi.application` in this process, as uvicorn would make it.

No socket, no server process: the in-process path is the production one (the ASGI handler, the
hot path's own handler, the middleware that stays), and costs about a millisecond a request, which
is what lets the fuzz test throw thousands of bodies in seconds. The mock provider is still a real
HTTP server: bodies that validate go upstream through the real SDKs.
"""

import asyncio
from urllib.parse import quote

from django.conf import settings as django_settings

from gateway import registry

from .conftest import UPSTREAM_KEY


async def asgi_request(
    path: str,
    *,
    method: str = "POST",
    body: bytes = b"",
    query: bytes = b"",
    key: str = "",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; a streamed body is read to its end."""
    raw_headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    if key:
        raw_headers.append((b"authorization", f"Bearer {key}".encode()))
    raw_headers += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "query_string": query,
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.Future()  # the client stays connected

    async def send(message):
        sent.append(message)

    from proxy_platform.asgi import application

    await application(scope, receive, send)
    start = sent[0]
    response_headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


def use_mock_upstreams(settings, mock_llm: str):
    """Every provider of this process (OpenAI, Anthropic, Azure) is the mock provider (a generator
    for a fixture: `yield from use_mock_upstreams(settings, mock_llm)`)."""
    settings.OPENAI_BASE_URL = f"{mock_llm}/v1"
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    settings.ANTHROPIC_BASE_URL = mock_llm
    settings.ANTHROPIC_API_KEY = UPSTREAM_KEY
    settings.AZURE_OPENAI_ENDPOINT = mock_llm
    settings.AZURE_OPENAI_API_KEY = UPSTREAM_KEY
    settings.OPENAI_API_VERSION = django_settings.OPENAI_API_VERSION or "2024-10-21"
    settings.GATEWAY_UPSTREAM_MAX_RETRIES = 0
    settings.GATEWAY_RETRIES = 0
    settings.GATEWAY_AUTH_CACHE_SECONDS = 60
    registry.clear_caches()
    yield mock_llm
    registry.clear_caches()
