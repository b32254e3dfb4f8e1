"""django-ratelimit on the tenant's REST endpoints (templates, logs, usage): per-view guards.

Completions are admitted by gateway/limits (one Redis round trip for every limit and budget);
these endpoints cost no tokens and no money, so a plain per-tenant request rate is all they
need, and django-ratelimit's fixed windows on the Django cache (Redis) fit them. The rate is
GATEWAY_TENANT_API_RATE per tenant and per group of endpoints (empty: off), counted after the
key is checked, so that an unknown key is a 401 and never uses up a tenant's rate.

They fail open: while the cache cannot be reached the endpoints keep answering (they read and
write only the tenant's own data), which is logged.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_ratelimit.core import get_usage

from .auth import authenticate
from .errors import GatewayError, openai_error_response
from .limits import duration

log = logging.getLogger(__name__)


def _count(group: str, tenant_id: int, rate: str) -> dict | None:
    return get_usage(None, group=group, key=lambda _group, _request: f"tenant:{tenant_id}", rate=rate, increment=True)


async def tenant_api_check(request: HttpRequest, *, group: str) -> None:
    """Count this request against its tenant's API rate; GatewayError 429 (or 401) when refused."""
    rate = getattr(settings, "GATEWAY_TENANT_API_RATE", "")
    caller = await authenticate(request)
    if not rate:
        return
    try:
        usage = await asyncio.to_thread(_count, group, caller.tenant.id, rate)
    except Exception as exc:  # noqa: BLE001 (fail open: the cache is down, the data is the tenant's own)
        log.warning("tenant API rate of %s not counted: %s", group, exc)
        return
    if usage is None or not usage["should_limit"]:
        return
    # django-ratelimit's window stays current through the second in which time_left is 0.
    wait = max(1, usage["time_left"] + 1)
    raise GatewayError(
        429,
        f"Rate limit reached for this endpoint: this tenant allows {usage['limit']} requests per "
        f"{duration(_period_ms(rate))}. Retry in {wait} s.",
        "rate_limit_requests",
        headers={"retry-after": str(wait)},
    )


def _period_ms(rate: str) -> int:
    count_and_unit = rate.split("/", 1)[1]
    unit = count_and_unit[-1]
    number = int(count_and_unit[:-1] or 1)
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit] * 1000


def tenant_rate_limited(group: str) -> Callable:
    """Decorate a view function (request first) or a class-based view's method (self, request): refuse
    over GATEWAY_TENANT_API_RATE with a 429 in the OpenAI shape, like every error of these APIs."""

    def decorator(view: Callable[..., Awaitable[HttpResponse]]) -> Callable[..., Awaitable[HttpResponse]]:
        @wraps(view)
        async def guarded(*args, **kwargs) -> HttpResponse:
            request = next(arg for arg in args if isinstance(arg, HttpRequest))
            try:
                await tenant_api_check(request, group=group)
            except GatewayError as error:
                return openai_error_response(error)
            return await view(*args, **kwargs)

        return guarded

    return decorator
