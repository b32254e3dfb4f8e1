"""The limits store shared by every gateway process: one Lua script per step, one round trip.

The scripts live in scripts/*.lua, read once at import; redis-py sends each by its SHA
(EVALSHA) and loads it on the first NOSCRIPT. "Now" is Redis' TIME inside the script (one clock
for all processes) unless a clock is injected, whose time is then passed as ARGV[1].
"""

import asyncio
import weakref
from collections.abc import Awaitable
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection as Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, MasterDownError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy_platform import redis_clients

from . import config
from .clock import Clock
from .keys import BudgetKeys, ScopeKeys
from .store import Ask, Outcome, Peek, Ticket

# Failures that mean "the limits store cannot be reached", as opposed to a bug: also a cluster
# without a primary for a slot, a Sentinel failover under way (a primary demoted to replica,
# MASTERDOWN) and a slot being migrated (TRYAGAIN).
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    TryAgainError,
)

_SCRIPTS = Path(__file__).resolve().parent / "scripts"
_CLOCK = (_SCRIPTS / "clock.lua").read_text()
SCRIPTS = {
    name: _CLOCK + (_SCRIPTS / f"{name}.lua").read_text()
    for name in ("admit", "settle", "reconcile", "peek", "release")
}


class _LoopClient:
    """A redis.asyncio client is bound to the event loop it first ran on: one per loop."""

    def __init__(self, url: str) -> None:
        timeout = config.redis_timeout()
        self.url = url
        # No retries: a retried script may have run already. A dead pooled connection is
        # replaced by the pool on its next use, which is what makes recovery automatic (under
        # Sentinel the replacement asks the sentinels for the primary again).
        self.client: Redis | RedisCluster = redis_clients.async_client(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self.scripts = {name: self.client.register_script(source) for name, source in SCRIPTS.items()}
        self.dedicated: list = []  # connections kept out of the pool (`dedicated_connection`)


_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient]" = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task] = set()


def background(coroutine: Awaitable) -> asyncio.Task:
    """Run to completion even if the awaiting task is cancelled (a client that hung up)."""
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def _client() -> _LoopClient:
    loop = asyncio.get_running_loop()
    url = config.redis_url()
    entry = _clients.get(loop)
    if entry is None or entry.url != url:
        if entry is not None:
            background(_close(entry))
        entry = _clients[loop] = _LoopClient(url)
    return entry


async def _close(entry: _LoopClient) -> None:
    for connection in entry.dedicated:
        await connection.disconnect()
    entry.dedicated.clear()
    await entry.client.aclose()


def shared_redis() -> Redis | RedisCluster:
    """This event loop's Redis client, also used by the response cache (gateway/cache.py)."""
    return _client().client


async def dedicated_connection() -> tuple[Redis, Connection]:
    """A connection of this loop's client, configured like its pooled ones (URL, timeouts,
    authentication, TLS), connected, and kept out of the pool for a caller that pipelines on it
    by itself (gateway/journal.py's trace writer). It is closed with the client (`aclose`).
    Returns the client too, so that the caller can tell when the client it came from is replaced.
    Not under Redis Cluster (`cluster()`), whose connections are per node: callers use commands."""
    entry = _client()
    connection = entry.client.connection_pool.make_connection()
    entry.dedicated.append(connection)
    try:
        await connection.connect()
    except BaseException:
        entry.dedicated.remove(connection)
        await connection.disconnect()
        raise
    return entry.client, connection


def forget_dedicated(connection: Connection) -> None:
    """A dedicated connection its user closed itself (broken): not to be closed again."""
    for entry in list(_clients.values()):
        if connection in entry.dedicated:
            entry.dedicated.remove(connection)


def cluster() -> bool:
    """Whether Redis is a Cluster (REDIS_CLUSTER): no dedicated connection, ordinary commands only."""
    return redis_clients.is_cluster()


async def aclose() -> None:
    """Close this event loop's Redis client (ASGI lifespan shutdown, tests, one-off scripts)."""
    entry = _clients.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        await _close(entry)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _outcome(reply: list) -> Outcome:
    verdict = _text(reply[0])
    hit = tuple(int(i) for i in reply[1])
    if verdict == "init":
        return Outcome("init", hit)
    return Outcome(
        verdict=verdict,
        hit=hit,
        window=int(reply[2]),
        ms_left=int(reply[3]),
        requests_ms_left=int(reply[4]),
        used=tuple(int(u) for u in reply[5]),
        spend=tuple(int(_text(s) or 0) for s in reply[6]),
        requests=tuple(int(r) for r in reply[7]),
    )


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _keys(scopes, budgets) -> list[str]:
    """KEYS of admit.lua and settle.lua: each scope's three, then each budget's two."""
    keys = [name for scope in scopes for name in (scope.rpm, scope.tpm, scope.concurrency)]
    keys.extend(name for budget in budgets for name in (budget.spend, budget.holds))
    return keys


class RedisStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock

    def now_ms(self) -> int | None:
        return None if self.clock is None else self.clock.now_ms()

    def _now_arg(self) -> int | str:
        return "" if self.clock is None else self.clock.now_ms()

    async def _run(self, name: str, keys: list[str], args: list) -> object:
        return await _client().scripts[name](keys=keys, args=[self._now_arg(), *args])

    async def admit(self, ask: Ask) -> Outcome:
        args: list = [
            ask.request_id,
            config.window_ms(),
            config.horizon_ms(),
            ask.tokens,
            ask.units,
            len(ask.scopes),
            len(ask.budgets),
        ]
        for scope in ask.scopes:
            args.extend((scope.rpm, scope.tpm, scope.concurrency))
        for budget in ask.budgets:
            args.extend((budget.threshold, budget.keys.ttl))
        reply = await self._run("admit", _keys([s.keys for s in ask.scopes], [b.keys for b in ask.budgets]), args)
        return _outcome(reply)

    async def initialise(self, budget: BudgetKeys, units: int) -> None:
        await _client().client.set(budget.spend, units, nx=True, ex=budget.ttl)

    async def settle(self, ticket: Ticket, *, tokens: int, units: int) -> None:
        args: list = [
            ticket.request_id,
            config.window_ms(),
            ticket.window,
            tokens - ticket.tokens,
            units,
            len(ticket.scopes),
            len(ticket.budgets),
        ]
        for held in ticket.scopes:
            args.extend((_flag(held.tpm), _flag(held.concurrency)))
        await self._run("settle", _keys([h.keys for h in ticket.scopes], ticket.budgets), args)

    async def spend(self, spend_key: str) -> int | None:
        value = await _client().client.get(spend_key)
        return None if value is None else int(value)

    async def reconcile(self, budget: BudgetKeys, units: int) -> int:
        reply = await self._run("reconcile", [budget.spend, budget.holds], [units, config.horizon_ms(), budget.ttl])
        return int(reply)

    async def peek(self, scope: ScopeKeys, budget: BudgetKeys) -> Peek:
        tokens, in_flight, spend, requests = await self._run(
            "peek",
            [scope.tpm, scope.concurrency, budget.spend, scope.rpm],
            [config.window_ms(), config.horizon_ms()],
        )
        spend = _text(spend)
        return Peek(
            tokens=int(tokens), in_flight=int(in_flight), spend=int(spend) if spend else None, requests=int(requests)
        )

    async def release(self, concurrency: list[str], budgets: list[BudgetKeys], request_id: str) -> int:
        keys = [*concurrency, *(name for budget in budgets for name in (budget.spend, budget.holds))]
        return int(await self._run("release", keys, [request_id, len(concurrency)]))
