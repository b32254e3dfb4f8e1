"""`Metered`: what the gateway knows about one finished request, the unit it records and bills.

It lives in the gateway, which builds it (gateway/lifecycle.py), spools it through a database
outage (gateway/journal.py), logs and counts it (gateway/observability.py) and hands it to
billing. Billing does not import it: its services read the same attributes through their own
`billing.services.usage.MeteredUsage` protocol, so the hot path passes this object as is (no
copy, no conversion) while imports still point one way (docs/design.md#apps-and-layers).
"""

from dataclasses import dataclass
from datetime import datetime

from billing.pricing import Price, Tokens


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
    requested_model: str = ""  # the name the client asked for, when a fallback model answered
    # Not stored: for the gateway's request log line and metrics (gateway/observability.py).
    tenant_slug: str = ""
    deployment_id: int | None = None
    # Attribution inside the tenant (issue 14): the key's project, the end user as recorded, the tags.
    project_id: int | None = None
    end_user: str = ""
    tags: dict | None = None
