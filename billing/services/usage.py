"""Usage: one metered request becomes one `UsageRecord`, its cost computed here once and never again.

The gateway's `gateway.metered.Metered` is what arrives here; billing does not import it (imports
point gateway → billing → tenants) but reads the same attributes through `MeteredUsage`, a
protocol: the hot path hands its own object over as is, no copy, no conversion.
"""

from datetime import datetime
from decimal import Decimal
from typing import Protocol

from billing.models import UsageRecord
from billing.pricing import Price, Tokens, request_cost


class MeteredUsage(Protocol):
    """What billing reads of one finished request (the gateway's `Metered` has it all)."""

    @property
    def request_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def tenant_id(self) -> int: ...
    @property
    def api_key_id(self) -> int | None: ...
    @property
    def model(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def upstream_model(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def status_code(self) -> int: ...
    @property
    def error_type(self) -> str: ...
    @property
    def tokens(self) -> Tokens: ...
    @property
    def price_id(self) -> int | None: ...
    @property
    def price(self) -> Price | None: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def streamed(self) -> bool: ...
    @property
    def estimated(self) -> bool: ...
    @property
    def cache_hit(self) -> bool: ...


def usage_cost(*, metered: MeteredUsage) -> Decimal:
    """The cost `usage_record_create` stores for `metered`: also what a record spooled through a
    database outage (gateway/journal.py) settles its budget with before it is written."""
    if metered.price is None or metered.cache_hit:
        return Decimal(0)
    return request_cost(tokens=metered.tokens, price=metered.price)


def usage_record_create(*, metered: MeteredUsage) -> UsageRecord:
    """Record one request with its cost, computed here once and never again (docs/design.md#money).

    A request without a price (unknown model, refused before routing) costs nothing; so does a
    cache hit, whose saving is the cost it would have had.
    """
    tokens = metered.tokens
    cost = usage_cost(metered=metered)
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
