"""What admission asks of a limits store, and what it answers: one protocol, two stores.

`RedisStore` (gateway/limits/redis_store.py) runs each step as one Lua script, one round trip,
atomic across every gateway process. `MemoryStore` (memory_store.py) makes the same decisions
on dicts for one process (the demo, without REDIS_URL). tests/test_limits.py holds both
to one contract.
"""

from dataclasses import dataclass
from typing import Protocol

from .clock import Clock
from .keys import Keys

# Limits are (tenant's, key's); -1 means "no such limit", None "no such budget".


@dataclass(frozen=True, slots=True)
class Ask:
    """One admission: what to reserve and against which limits."""

    keys: Keys
    request_id: str
    tokens: int
    rpm: tuple[int, int]
    tpm: tuple[int, int]
    concurrency: tuple[int, int]
    # Refuse when spend > threshold = budget - max(reservation, 1), i.e. when
    # spend + reservation > budget or nothing is left. Negative: always refuse.
    thresholds: tuple[int | None, int | None]
    units: int  # the reservation, the same on each budget that applies


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str  # ok | init | requests | budget | tokens | concurrency
    scopes: tuple[int, ...] = ()  # 0 tenant, 1 key: the limits that refused (init: counters missing)
    window: int = 0  # the tokens window's number
    ms_left: int = 0  # until the end of the tokens window
    used: tuple[int, int] = (0, 0)  # tokens of the window: after the reservation if ok, before it if refused
    spend: tuple[int, int] = (0, 0)  # the spends read (units), tenant's and key's
    requests: tuple[int, int] = (0, 0)  # requests of the minute: after this one if ok, before it if refused
    requests_ms_left: int = 0  # until the end of the minute


@dataclass(frozen=True, slots=True)
class Ticket:
    """What an admitted request holds, for settlement."""

    keys: Keys
    request_id: str
    window: int
    tokens: int
    tpm: tuple[bool, bool]
    concurrency: tuple[bool, bool]
    budget: tuple[bool, bool]  # reserved on the tenant's budget, on the key's


@dataclass(frozen=True, slots=True)
class Peek:
    """A tenant's live counters, read without writing."""

    tokens: int
    in_flight: int
    spend: int | None
    requests: int


class Store(Protocol):
    """A limits store. `clock` None (Redis only): the server's own time."""

    clock: Clock | None

    def now_ms(self) -> int | None:
        """The injected clock's time, or None when the store reads its server's."""

    async def admit(self, ask: Ask) -> Outcome: ...

    async def initialise(self, spend_key: str, units: int) -> None:
        """Set a missing spend counter; a counter that exists is left alone (SET NX)."""

    async def settle(self, ticket: Ticket, *, tokens: int, units: int) -> None: ...

    async def spend(self, spend_key: str) -> int | None: ...

    async def reconcile(self, spend_key: str, holds_key: str, units: int) -> int: ...

    async def peek(self, keys: Keys) -> Peek: ...

    async def release(self, keys: Keys, request_id: str) -> int:
        """Free a request id's concurrency slots and budget holds; returns how many were held."""
