"""Provider adapters, one module per provider, and the per-account client pool.

SDK imports live only in this package (aliased here: the adapter modules share the SDKs'
names). One async SDK client is kept per (provider, endpoint, credential) for the life of
the process, so its HTTP connection pool is reused (docs/design.md#the-hot-path).

The SDKs' clients run on their own aiohttp transport (the `aiohttp` extra of both SDKs,
`DefaultAioHttpClient`) rather than their default httpx2/httpcore2 one: the same requests and
responses, but aiohttp's C HTTP parser and a pool that does not probe every idle connection's
socket on each request; at 50 requests in flight that was about 30% of the gateway's CPU per
request (docs/benchmark.md).
"""

import hashlib
import logging

import anthropic as anthropic_sdk
import httpx2
import openai as openai_sdk
from django.conf import settings

from .anthropic import AnthropicAdapter
from .azure import AzureAdapter
from .base import Adapter, EventStream, ProviderError
from .openai import OpenAIAdapter

__all__ = ["Adapter", "EventStream", "ProviderError", "adapter_for", "close_clients"]

_adapters: dict[tuple, Adapter] = {}
log = logging.getLogger(__name__)


def _timeout(seconds: float | None = None) -> httpx2.Timeout:
    """GATEWAY_UPSTREAM_TIMEOUT, or a deployment's own `timeout_seconds`."""
    total = settings.GATEWAY_UPSTREAM_TIMEOUT if seconds is None else seconds
    return httpx2.Timeout(total, connect=min(total, settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT))


def _build(provider: str, base_url: str, api_key: str, timeout: float | None = None) -> Adapter:
    sdk = anthropic_sdk if provider == "anthropic" else openai_sdk
    http_client = sdk.DefaultAioHttpClient(timeout=_timeout(timeout))
    common = {
        "api_key": api_key,
        "timeout": _timeout(timeout),
        "max_retries": settings.GATEWAY_UPSTREAM_MAX_RETRIES,
        "http_client": http_client,
    }
    if provider == "openai":
        return OpenAIAdapter(openai_sdk.AsyncOpenAI(base_url=base_url or None, **common))
    if provider == "azure":
        return AzureAdapter(
            openai_sdk.AsyncAzureOpenAI(azure_endpoint=base_url, api_version=settings.OPENAI_API_VERSION, **common)
        )
    if provider == "anthropic":
        return AnthropicAdapter(anthropic_sdk.AsyncAnthropic(base_url=base_url or None, **common))
    raise ValueError(f"unknown provider {provider!r}")


def _platform_credentials(provider: str) -> tuple[str, str]:
    if provider == "openai":
        return settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY
    if provider == "azure":
        return settings.AZURE_OPENAI_ENDPOINT, settings.AZURE_OPENAI_API_KEY
    if provider == "anthropic":
        return settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_API_KEY
    raise ValueError(f"unknown provider {provider!r}")


def adapter_for(
    provider: str, *, base_url: str = "", api_key: str | None = None, timeout: float | None = None
) -> Adapter:
    """The adapter for a deployment, on the platform's account unless a tenant's key is given.
    `timeout`: the deployment's own upstream timeout in seconds (None: GATEWAY_UPSTREAM_TIMEOUT).

    Raises ProviderError when no credential is configured.
    """
    default_url, platform_key = _platform_credentials(provider)
    api_key = api_key or platform_key
    base_url = base_url or default_url
    if not api_key or (provider == "azure" and not base_url):
        raise ProviderError(provider, 0, "not_configured", f"the {provider} provider is not configured", True)
    # The pool is keyed by a digest of the credential, never the credential itself.
    key = (provider, base_url, hashlib.sha256(api_key.encode()).hexdigest(), timeout)
    adapter = _adapters.get(key)
    if adapter is None:
        adapter = _adapters[key] = _build(provider, base_url, api_key, timeout)
    return adapter


async def close_clients() -> None:
    """Close every pooled SDK client and its aiohttp session (the ASGI lifespan's shutdown).

    Each is closed even when another fails: one that stays open is finalized at exit, which
    aiohttp reports as `Unclosed client session`.
    """
    adapters = list(_adapters.values())
    _adapters.clear()
    closed = 0
    for adapter in adapters:
        try:
            await adapter.client.close()
            closed += 1
        except Exception as exc:  # the process is stopping: say so, and close the rest
            log.warning("closing a %s client failed: %r", adapter.provider, exc)
    if closed:
        log.info("closed %d provider client(s)", closed)
