"""Writes on billing data."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .models import UsageRecord
from .pricing import Price, Tokens, request_cost


@dataclass(frozen=True, slots=True)
class Metered:
    """What the gateway knows about one finished request, ready to be recorded."""

    request_id: str
    created_at: datetime
    tenant_id: int
    api_key_id: int | None
    model: str
    provider: str
    upstream_model: str
    endpoint: str
    status_code: int
    error_type: str
    tokens: Tokens
    price_id: int | None
    price: Price | None
    latency_ms: int
    streamed: bool
    estimated: bool
    cache_hit: bool = False


def usage_record_create(*, metered: Metered) -> UsageRecord:
    """Record one request with its cost, computed here once and never again (DESIGN §3).

    A request without a price (unknown model, refused before routing) costs nothing; so does a
    cache hit, whose saving is the cost it would have had.
    """
    tokens = metered.tokens
    cost = Decimal(0)
    if metered.price is not None and not metered.cache_hit:
        cost = request_cost(tokens=tokens, price=metered.price)
    return UsageRecord.objects.create(
        request_id=metered.request_id,
        created_at=metered.created_at,
        tenant_id=metered.tenant_id,
        api_key_id=metered.api_key_id,
        model=metered.model[:100],
        provider=metered.provider,
        upstream_model=metered.upstream_model,
        endpoint=metered.endpoint,
        status_code=metered.status_code,
        error_type=metered.error_type,
        input_tokens=tokens.input,
        cached_input_tokens=tokens.cached_input,
        cache_write_tokens=tokens.cache_write,
        output_tokens=tokens.output,
        cost=cost,
        price_id=metered.price_id,
        latency_ms=metered.latency_ms,
        streamed=metered.streamed,
        estimated=metered.estimated,
        cache_hit=metered.cache_hit,
    )
