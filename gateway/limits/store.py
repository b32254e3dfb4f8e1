"""What admission asks of a limits store, and what it answers: one protocol, two stores.

`RedisStore` (gateway/limits/redis_store.py) runs each step as one Lua script, one round trip,
atomic across every gateway process. `MemoryStore` (memory_store.py) makes the same decisions
on dicts for one process (the demo, without REDIS_URL). tests/test_limits.py holds both
to one contract.

An admission is a list of scopes (the levels with a rate limit: tenant, key, project, end user,
in that order) and a list of budgets (a level's monthly or daily counter). Only what applies is
sent: a level without limits costs nothing.
"""

from dataclasses import dataclass
from typing import Protocol

from .clock import Clock
from .keys import BudgetKeys, ScopeKeys

# Limits: -1 means "no such limit".


@dataclass(frozen=True, slots=True)
class ScopeAsk:
    keys: ScopeKeys
    rpm: int
    tpm: int
    concurrency: int


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    keys: BudgetKeys
    # Refuse when spend > threshold = budget - max(reservation, 1), i.e. when
    # spend + reservation > budget or nothing is left. Negative: always refuse.
    threshold: int


@dataclass(frozen=True, slots=True)
class Ask:
    """One admission: what to reserve and against which limits."""

    request_id: str
    tokens: int
    scopes: tuple[ScopeAsk, ...]
    budgets: tuple[BudgetAsk, ...]
    units: int  # the reservation, the same on each budget


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str  # ok | init | requests | budget | tokens | concurrency
    # The scopes (requests, tokens, concurrency) or budgets (budget, init: counters missing) that refused.
    hit: tuple[int, ...] = ()
    window: int = 0  # the tokens window's number
    ms_left: int = 0  # until the end of the tokens window
    used: tuple[int, ...] = ()  # tokens of the window per scope: after the reservation if ok, before it if refused
    spend: tuple[int, ...] = ()  # the spends read (units), per budget
    requests: tuple[int, ...] = ()  # requests of the minute per scope: after this one if ok, before it if refused
    requests_ms_left: int = 0  # until the end of the minute


@dataclass(frozen=True, slots=True)
class Held:
    """A scope's holdings of one admitted request."""

    keys: ScopeKeys
    tpm: bool
    concurrency: bool


@dataclass(frozen=True, slots=True)
class Ticket:
    """What an admitted request holds, for settlement."""

    request_id: str
    window: int
    tokens: int
    scopes: tuple[Held, ...]
    budgets: tuple[BudgetKeys, ...]  # reserved on each


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

    async def initialise(self, budget: BudgetKeys, units: int) -> None:
        """Set a missing spend counter; a counter that exists is left alone (SET NX)."""

    async def settle(self, ticket: Ticket, *, tokens: int, units: int) -> None: ...

    async def spend(self, spend_key: str) -> int | None: ...

    async def reconcile(self, budget: BudgetKeys, units: int) -> int: ...

    async def peek(self, scope: ScopeKeys, budget: BudgetKeys) -> Peek: ...

    async def release(self, concurrency: list[str], budgets: list[BudgetKeys], request_id: str) -> int:
        """Free a request id's concurrency slots and budget holds; returns how many were held."""
