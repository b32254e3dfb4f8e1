"""The Redis key layout (docs/limits.md), and money in the counters' integer units.

Every counter of a tenant, key, project and end user is named here and nowhere else. The
in-process store uses the same names as dictionary keys, so that both stores are told the same
thing.

Every name starts with `gw:{t<tenant id>}:`. The braces are a Redis Cluster hash tag: all the
counters one admission touches (the tenant's, its key's, its project's, its end user's) hash
to one slot, which a Lua script needs on a cluster. Keep the tag in any new name.
"""

import hashlib
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

UNITS_PER_USD = 10**12
_UNITS = Decimal(UNITS_PER_USD)
MAX_UNITS = 2**63 - 1

# The month's counter outlives the month, a day's outlives the day: a new period is a new key.
MONTH_TTL_SECONDS = 40 * 24 * 3600
DAY_TTL_SECONDS = 2 * 24 * 3600


def to_units(amount: Decimal, *, rounding: str = ROUND_HALF_UP) -> int:
    """USD -> 1e-12 USD units: an integer, so our 12-decimal costs add up exactly."""
    return int((amount * _UNITS).to_integral_value(rounding=rounding))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-12)


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    """The rate counters of one level (tenant, key, project or end user)."""

    rpm: str  # prefix of STRING counters "<prefix>:<minute number>"
    tpm: str  # prefix of STRING counters "<prefix>:<window number>"
    concurrency: str  # ZSET: request id -> start ms


@dataclass(frozen=True, slots=True)
class BudgetKeys:
    """One budget counter of one period (a UTC month or day)."""

    spend: str  # STRING: the period's spend, in 1e-12 USD
    holds: str  # HASH: request id -> "<reserved units>:<start ms>" for requests in flight
    ttl: int = MONTH_TTL_SECONDS


def tag(tenant_id: int) -> str:
    """The prefix of every limits key of a tenant, with its Redis Cluster hash tag."""
    return f"gw:{{t{tenant_id}}}"


def end_user_part(end_user: str) -> str:
    """An end user's id as a key name part: a digest, so any id (already validated) is fixed
    length and free of separators and braces."""
    return hashlib.sha256(end_user.encode()).hexdigest()[:32]


def _part(level: str, ident: int | str | None) -> str:
    match level:
        case "tenant":
            return "t"
        case "key":
            return f"k:{ident}"
        case "project":
            return f"p:{ident}"
        case "end_user":
            return f"u:{end_user_part(str(ident))}"
    raise ValueError(level)


def scope_keys(tenant_id: int, level: str, ident: int | str | None = None) -> ScopeKeys:
    """`ident`: the key's or project's id, the end user's (recorded) id; none for the tenant."""
    part, prefix = _part(level, ident), tag(tenant_id)
    return ScopeKeys(rpm=f"{prefix}:rpm:{part}", tpm=f"{prefix}:tpm:{part}", concurrency=f"{prefix}:conc:{part}")


def budget_keys(tenant_id: int, level: str, ident: int | str | None, period: str) -> BudgetKeys:
    """`period`: YYYY-MM (a monthly budget) or YYYY-MM-DD (a daily one)."""
    spend = f"{tag(tenant_id)}:spend:{_part(level, ident)}:{period}"
    return BudgetKeys(
        spend=spend, holds=f"{spend}:holds", ttl=DAY_TTL_SECONDS if len(period) > 7 else MONTH_TTL_SECONDS
    )
