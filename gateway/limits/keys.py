"""The Redis key layout (docs/limits.md), and money in the counters' integer units.

Every counter of a tenant and of a key is named here and nowhere else. The in-process store
uses the same names as dictionary keys, so that both stores are told the same thing.
"""

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

UNITS_PER_USD = 10**12
_UNITS = Decimal(UNITS_PER_USD)
MAX_UNITS = 2**63 - 1


def to_units(amount: Decimal, *, rounding: str = ROUND_HALF_UP) -> int:
    """USD -> 1e-12 USD units: an integer, so our 12-decimal costs add up exactly."""
    return int((amount * _UNITS).to_integral_value(rounding=rounding))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-12)


@dataclass(frozen=True, slots=True)
class Keys:
    spend: str  # STRING: month-to-date spend of the tenant, in 1e-12 USD
    holds: str  # HASH: request id -> "<reserved units>:<start ms>" for requests in flight
    tpm: tuple[str, str]  # prefixes of STRING counters "<prefix>:<window number>", tenant and key
    concurrency: tuple[str, str]  # ZSET: request id -> start ms, tenant and key
    key_spend: str  # STRING: month-to-date spend of the key (its own usage records), in 1e-12 USD
    key_holds: str  # HASH: as `holds`, for the key's counter
    rpm: tuple[str, str]  # prefixes of STRING counters "<prefix>:<minute number>", tenant and key

    @property
    def spends(self) -> tuple[str, str]:
        return self.spend, self.key_spend

    @property
    def holdings(self) -> tuple[str, str]:
        return self.holds, self.key_holds

    def all(self) -> list[str]:
        """KEYS of admit.lua and settle.lua, in their order."""
        return [self.spend, self.holds, *self.tpm, *self.concurrency, self.key_spend, self.key_holds, *self.rpm]


def keys_for(tenant_id: int, key_id: int, month: str) -> Keys:
    return Keys(
        spend=f"gw:spend:{tenant_id}:{month}",
        holds=f"gw:spend:{tenant_id}:{month}:holds",
        tpm=(f"gw:tpm:t:{tenant_id}", f"gw:tpm:k:{key_id}"),
        concurrency=(f"gw:conc:t:{tenant_id}", f"gw:conc:k:{key_id}"),
        key_spend=f"gw:spend:k:{key_id}:{month}",
        key_holds=f"gw:spend:k:{key_id}:{month}:holds",
        rpm=(f"gw:rpm:t:{tenant_id}", f"gw:rpm:k:{key_id}"),
    )


def key_counters(key_id: int, month: str) -> Keys:
    """The layout for a key's budget counter alone (tenant 0 exists nowhere: its names are unused)."""
    return keys_for(0, key_id, month)
