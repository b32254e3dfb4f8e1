"""Admission control for one request: rate limits, concurrency and the monthly budget (DESIGN §2).

Every gateway process shares the counters through Redis, so the limits are exact across
processes: each decision is one atomic step on the Redis server.

- Requests per minute, per tenant and per key when set: django-ratelimit's core (`get_usage`)
  on Django's cache (RedisCache when REDIS_URL is set), keyed on "tenant:<id>" / "key:<id>",
  never on a client IP. Its windows are fixed, 60 s, with a per-key offset. Every attempt is
  counted, refused ones too (that is how django-ratelimit counts).
- Tokens per minute, per tenant and per key: fixed windows of GATEWAY_LIMIT_WINDOW_SECONDS
  aligned on the epoch, on Redis' own clock. Admission reserves the estimate (prompt tokens
  plus max output tokens when the request set them); settlement adds the difference to the
  real count, never below zero. A request that finishes after its window ended charges its
  overrun (if any) to the current window; an underrun of a finished window is dropped.
- Concurrency, per tenant and per key: a sorted set of request id -> start time. Entries older
  than GATEWAY_CONCURRENCY_HORIZON_SECONDS are dropped at the next admission, so the slots of
  a crashed process come back by themselves (a stream longer than that loses its slot early).
- Monthly budget, per tenant and per key when set: month-to-date spend (UTC months) in 1e-12
  USD units, an integer, so our 12-decimal costs add up exactly; never a float, and never a
  Lua number for the total (Lua numbers are doubles: totals are compared as digit strings and
  added by INCRBY). Each counter is initialised from the database when missing (SET NX: two
  processes cannot both initialise it): the tenant's from all its usage records of the month,
  a key's from that key's. Admission reserves the worst-case cost on every budget that
  applies, or on none; settlement replaces each reservation by the actual cost. Reservations
  in flight are kept in a hash next to each counter, so that `reconcile()` can reset a
  counter from the database without losing them. Counters hold up to 2**63 - 1 units, about
  9.2 million USD a month.

Round trips: django-ratelimit costs one or two Redis commands per rate (run together in one
worker thread, so the event loop never blocks); tokens, concurrency and budget are one Lua
script at admission and one at settlement, both budgets included. A caller with no limits and no budget costs
nothing, not even a Redis call, and is untouched by a Redis outage. A caller with any limit
or a budget is refused with 503 `limits_unavailable` while Redis cannot be reached (fail
closed); the next request after Redis is back succeeds, no restart needed.

Without REDIS_URL (the demo) the same logic runs on a dict in process memory: single process
only. django-ratelimit then counts in the local-memory cache, per process as well.
"""

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.conf import settings
from django.utils import timezone
from django_ratelimit.core import get_usage
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import GatewayError
from .registry import Caller

log = logging.getLogger(__name__)

__all__ = [
    "Admission",
    "UNREACHABLE",
    "LiveUsage",
    "aclose",
    "admit",
    "duration",
    "live_usage",
    "live_usage_sync",
    "key_spend_this_month",
    "reconcile",
    "reconcile_key",
    "reconcile_key_sync",
    "reconcile_sync",
    "release_request",
    "release_request_sync",
    "shared_redis",
    "spend_this_month",
]

# Failures that mean "the limits store cannot be reached", as opposed to a bug.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

UNITS_PER_USD = 10**12
_UNITS = Decimal(UNITS_PER_USD)
_MAX_UNITS = 2**63 - 1
# The month's counter outlives the month; a new month is a new key.
_SPEND_TTL_SECONDS = 40 * 24 * 3600

_SCOPES = ("tenant", "key")
_WHO = {"tenant": "this tenant", "key": "this API key"}
_BUDGET_OF = {"tenant": "this tenant's monthly budget", "key": "this API key's monthly budget"}
RPM_GROUPS = {"tenant": "gw-tenant-rpm", "key": "gw-key-rpm"}


def _window_ms() -> int:
    return max(1, int(float(getattr(settings, "GATEWAY_LIMIT_WINDOW_SECONDS", 60)) * 1000))


def _horizon_ms() -> int:
    return int(float(getattr(settings, "GATEWAY_CONCURRENCY_HORIZON_SECONDS", 900)) * 1000)


def _redis_timeout() -> float:
    return float(getattr(settings, "GATEWAY_LIMITS_REDIS_TIMEOUT", 0.5))


def _redis_url() -> str:
    return getattr(settings, "REDIS_URL", "")


def duration(ms: int) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers say it (Go style): 6m0s, 1.5s, 12ms."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0") if millis else str(seconds)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def _seconds_until(ms: int) -> int:
    """retry-after in whole seconds, rounded up: waiting that long is always enough."""
    return max(1, -(-ms // 1000))


def to_units(amount: Decimal, *, rounding: str = ROUND_HALF_UP) -> int:
    return int((amount * _UNITS).to_integral_value(rounding=rounding))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-12)


def _month() -> str:
    return timezone.now().strftime("%Y-%m")


# --- Redis key layout ---


@dataclass(frozen=True, slots=True)
class _Keys:
    spend: str  # STRING: month-to-date spend of the tenant, in 1e-12 USD
    holds: str  # HASH: request id -> "<reserved units>:<start ms>" for requests in flight
    tpm: tuple[str, str]  # prefixes of STRING counters "<prefix>:<window number>", tenant and key
    concurrency: tuple[str, str]  # ZSET: request id -> start ms, tenant and key
    key_spend: str  # STRING: month-to-date spend of the key (its own usage records), in 1e-12 USD
    key_holds: str  # HASH: as `holds`, for the key's counter

    @property
    def spends(self) -> tuple[str, str]:
        return self.spend, self.key_spend


def _keys(tenant_id: int, key_id: int, month: str) -> _Keys:
    return _Keys(
        spend=f"gw:spend:{tenant_id}:{month}",
        holds=f"gw:spend:{tenant_id}:{month}:holds",
        tpm=(f"gw:tpm:t:{tenant_id}", f"gw:tpm:k:{key_id}"),
        concurrency=(f"gw:conc:t:{tenant_id}", f"gw:conc:k:{key_id}"),
        key_spend=f"gw:spend:k:{key_id}:{month}",
        key_holds=f"gw:spend:k:{key_id}:{month}:holds",
    )


def _key_counters(key_id: int, month: str) -> _Keys:
    """The layout for a key's budget counter alone (tenant 0 exists nowhere: its names are unused)."""
    return _keys(0, key_id, month)


@dataclass(frozen=True, slots=True)
class _Ask:
    """One admission: what to reserve and against which limits (-1: no such limit)."""

    keys: _Keys
    request_id: str
    tokens: int
    tpm: tuple[int, int]
    concurrency: tuple[int, int]
    # Tenant's and key's budget. None: no such budget. Otherwise refuse when
    # spend > threshold = budget - max(reservation, 1), i.e. when spend + reservation > budget
    # or nothing is left. Negative: always refuse.
    thresholds: tuple[int | None, int | None]
    units: int  # the reservation, the same on each budget that applies


@dataclass(frozen=True, slots=True)
class _Outcome:
    verdict: str  # ok | init | budget | tokens | concurrency
    scopes: tuple[int, ...] = ()  # indexes into _SCOPES of the limits that refused (init: counters missing)
    window: int = 0
    ms_left: int = 0  # until the end of the tokens window
    used: tuple[int, int] = (0, 0)  # tokens of the window: after the reservation if ok, before it if refused
    spend: tuple[int, int] = (0, 0)  # refused for budget: the spends, tenant's and key's, that refused it


@dataclass(frozen=True, slots=True)
class _Ticket:
    """What an admitted request holds, for settlement."""

    keys: _Keys
    request_id: str
    window: int
    tokens: int
    tpm: tuple[bool, bool]
    concurrency: tuple[bool, bool]
    budget: tuple[bool, bool]  # reserved on the tenant's budget, on the key's


# --- Redis implementation ---

_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%d', n) end
"""

# KEYS: spend, holds, tpm tenant prefix, tpm key prefix, concurrency tenant, concurrency key,
#       key spend, key holds
# ARGV: request id, window ms, horizon ms, tokens, tpm tenant, tpm key, conc tenant, conc key,
#       tenant budget threshold ('' when no budget), reserved units, spend ttl s,
#       key budget threshold ('' when no budget)
_ADMIT = (
    _LUA_COMMON
    + """
local rid = ARGV[1]
local window_ms = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local window = math.floor(now / window_ms)
local ms_left = (window + 1) * window_ms - now
local thresholds = {ARGV[9], ARGV[12]}
local spend_keys = {KEYS[1], KEYS[7]}
local hold_keys = {KEYS[2], KEYS[8]}
local spends = {'', ''}
local hit = ''
for i = 1, 2 do
  if thresholds[i] ~= '' then
    spends[i] = redis.call('GET', spend_keys[i])
    if not spends[i] then hit = hit .. i end
  end
end
if hit ~= '' then return {'init', hit} end
for i = 1, 2 do
  local threshold = thresholds[i]
  if threshold ~= '' then
    -- spend and threshold may pass 2^53: compare them as canonical digit strings.
    local over
    if string.sub(threshold, 1, 1) == '-' then over = true
    elseif #spends[i] ~= #threshold then over = #spends[i] > #threshold
    else over = spends[i] > threshold end
    if over then hit = hit .. i end
  end
end
if hit ~= '' then return {'budget', hit, 0, 0, 0, 0, spends[1], spends[2]} end
local used = {0, 0}
for i = 1, 2 do
  local limit = tonumber(ARGV[4 + i])
  if limit >= 0 then
    used[i] = tonumber(redis.call('GET', KEYS[2 + i] .. ':' .. fmt(window)) or '0')
    if used[i] + tokens > limit then hit = hit .. i end
  end
end
if hit ~= '' then return {'tokens', hit, window, ms_left, used[1], used[2], '', ''} end
for i = 1, 2 do
  local limit = tonumber(ARGV[6 + i])
  if limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4 + i], '-inf', now - horizon)
    if redis.call('ZCARD', KEYS[4 + i]) >= limit then hit = hit .. i end
  end
end
if hit ~= '' then return {'concurrency', hit, window, ms_left, used[1], used[2], '', ''} end
for i = 1, 2 do
  if tonumber(ARGV[4 + i]) >= 0 then
    local key = KEYS[2 + i] .. ':' .. fmt(window)
    used[i] = redis.call('INCRBY', key, tokens)
    redis.call('PEXPIRE', key, ms_left + 1000)
  end
  if tonumber(ARGV[6 + i]) >= 0 then
    redis.call('ZADD', KEYS[4 + i], now, rid)
    redis.call('PEXPIRE', KEYS[4 + i], horizon)
  end
  if thresholds[i] ~= '' then
    redis.call('INCRBY', spend_keys[i], ARGV[10])
    redis.call('HSET', hold_keys[i], rid, ARGV[10] .. ':' .. fmt(now))
    redis.call('EXPIRE', hold_keys[i], tonumber(ARGV[11]))
  end
end
return {'ok', '', window, ms_left, used[1], used[2], '', ''}
"""
)

# KEYS: as _ADMIT
# ARGV: request id, window ms, reserved window, token delta, tpm tenant?, tpm key?, conc tenant?,
#       conc key?, actual units for the tenant's budget ('' when none), the same for the key's
_SETTLE = (
    _LUA_COMMON
    + """
local rid = ARGV[1]
local window_ms = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local delta = tonumber(ARGV[4])
local current = math.floor(now / window_ms)
local units = {ARGV[9], ARGV[10]}
local spend_keys = {KEYS[1], KEYS[7]}
local hold_keys = {KEYS[2], KEYS[8]}
for i = 1, 2 do
  if ARGV[6 + i] == '1' then redis.call('ZREM', KEYS[4 + i], rid) end
  if ARGV[4 + i] == '1' and delta ~= 0 then
    local target = nil
    if current == window then target = window elseif delta > 0 then target = current end
    if target then
      local key = KEYS[2 + i] .. ':' .. fmt(target)
      if redis.call('INCRBY', key, delta) < 0 then redis.call('SET', key, '0') end
      redis.call('PEXPIRE', key, (target + 1) * window_ms - now + 1000)
    end
  end
  -- A missing counter will be initialised from the database, which is where the cost goes.
  if units[i] ~= '' and redis.call('EXISTS', spend_keys[i]) == 1 then
    local held = redis.call('HGET', hold_keys[i], rid)
    if held then
      redis.call('HDEL', hold_keys[i], rid)
      redis.call('DECRBY', spend_keys[i], string.match(held, '^%d+'))
    end
    if redis.call('INCRBY', spend_keys[i], units[i]) < 0 then redis.call('SET', spend_keys[i], '0', 'KEEPTTL') end
  end
end
return 1
"""
)

# KEYS: spend, holds. ARGV: database total units, horizon ms, ttl s
_RECONCILE = (
    _LUA_COMMON
    + """
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
local holds = redis.call('HGETALL', KEYS[2])
for i = 1, #holds, 2 do
  local units, started = string.match(holds[i + 1], '^(%d+):(%d+)$')
  if tonumber(started) < now - tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[2], holds[i])
  else
    redis.call('INCRBY', KEYS[1], units)
  end
end
return redis.call('GET', KEYS[1])
"""
)


# Give back what a request holds when its process is gone (gateway/journal.py's reconciler).
# KEYS: concurrency tenant, concurrency key, spend, holds, key spend, key holds. ARGV: request id
# Idempotent: a second call finds no slot and no hold. Returns what was freed.
_RELEASE = """
local freed = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, 5, 2 do
  local held = redis.call('HGET', KEYS[i + 1], ARGV[1])
  if held then
    redis.call('HDEL', KEYS[i + 1], ARGV[1])
    freed = freed + 1
    -- A missing counter will be initialised from the database, which holds no reservations.
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if redis.call('DECRBY', KEYS[i], string.match(held, '^%d+')) < 0 then
        redis.call('SET', KEYS[i], '0', 'KEEPTTL')
      end
    end
  end
end
return freed
"""


def _all_keys(keys: _Keys) -> list[str]:
    return [keys.spend, keys.holds, *keys.tpm, *keys.concurrency, keys.key_spend, keys.key_holds]


class _LoopClient:
    """A redis.asyncio client is bound to the event loop it first ran on: one per loop."""

    def __init__(self, url: str) -> None:
        timeout = _redis_timeout()
        self.url = url
        # No retries: a retried script may have run already. A dead pooled connection is
        # replaced by the pool on its next use, which is what makes recovery automatic.
        self.client = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self.admit = self.client.register_script(_ADMIT)
        self.settle = self.client.register_script(_SETTLE)
        self.reconcile = self.client.register_script(_RECONCILE)
        self.release = self.client.register_script(_RELEASE)


_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient]" = weakref.WeakKeyDictionary()


def _client() -> _LoopClient:
    loop = asyncio.get_running_loop()
    url = _redis_url()
    entry = _clients.get(loop)
    if entry is None or entry.url != url:
        if entry is not None:
            _background(entry.client.aclose())
        entry = _clients[loop] = _LoopClient(url)
    return entry


def shared_redis() -> Redis:
    """This event loop's Redis client, also used by the response cache (gateway/cache.py)."""
    return _client().client


async def aclose() -> None:
    """Close this event loop's Redis client (ASGI lifespan shutdown, tests, one-off scripts)."""
    entry = _clients.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        await entry.client.aclose()


_tasks: set[asyncio.Task] = set()


def _background(coroutine: Awaitable) -> asyncio.Task:
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _outcome(reply: list) -> _Outcome:
    verdict = _text(reply[0])
    scopes = tuple(int(c) - 1 for c in _text(reply[1]))
    if verdict == "init":
        return _Outcome("init", scopes)
    return _Outcome(
        verdict=verdict,
        scopes=scopes,
        window=int(reply[2]),
        ms_left=int(reply[3]),
        used=(int(reply[4]), int(reply[5])),
        spend=(int(_text(reply[6]) or 0), int(_text(reply[7]) or 0)),
    )


class _RedisStore:
    async def admit(self, ask: _Ask) -> _Outcome:
        reply = await _client().admit(
            keys=_all_keys(ask.keys),
            args=[
                ask.request_id,
                _window_ms(),
                _horizon_ms(),
                ask.tokens,
                *ask.tpm,
                *ask.concurrency,
                "" if ask.thresholds[0] is None else ask.thresholds[0],
                ask.units,
                _SPEND_TTL_SECONDS,
                "" if ask.thresholds[1] is None else ask.thresholds[1],
            ],
        )
        return _outcome(reply)

    async def initialise(self, spend_key: str, units: int) -> None:
        await _client().client.set(spend_key, units, nx=True, ex=_SPEND_TTL_SECONDS)

    async def settle(self, ticket: _Ticket, *, tokens: int, units: int) -> None:
        await _client().settle(
            keys=_all_keys(ticket.keys),
            args=[
                ticket.request_id,
                _window_ms(),
                ticket.window,
                tokens - ticket.tokens,
                *("1" if flag else "0" for flag in ticket.tpm),
                *("1" if flag else "0" for flag in ticket.concurrency),
                *(units if flag else "" for flag in ticket.budget),
            ],
        )

    async def spend(self, spend_key: str) -> int | None:
        value = await _client().client.get(spend_key)
        return None if value is None else int(value)

    async def reconcile(self, spend_key: str, holds_key: str, units: int) -> int:
        reply = await _client().reconcile(keys=[spend_key, holds_key], args=[units, _horizon_ms(), _SPEND_TTL_SECONDS])
        return int(reply)

    async def release(self, keys: _Keys, request_id: str) -> int:
        reply = await _client().release(
            keys=[*keys.concurrency, keys.spend, keys.holds, keys.key_spend, keys.key_holds], args=[request_id]
        )
        return int(reply)

    async def peek(self, keys: _Keys, *, window: int, since_ms: int) -> tuple[int, int, int | None]:
        async with _client().client.pipeline(transaction=False) as pipe:
            pipe.get(f"{keys.tpm[0]}:{window}")
            pipe.zcount(keys.concurrency[0], since_ms, "+inf")
            pipe.get(keys.spend)
            tokens, in_flight, spend = await pipe.execute()
        return int(tokens or 0), int(in_flight or 0), None if spend is None else int(spend)


# --- In-process implementation (no REDIS_URL): the same decisions, one process only ---


class _MemoryStore:
    """The Redis scripts' logic on dicts. Each method runs without awaiting, under a lock that
    also keeps it whole against other threads (sync_to_async workers, an eager Celery task)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tpm: dict[str, tuple[int, int]] = {}  # prefix -> (window, used)
        self._concurrency: dict[str, dict[str, int]] = {}  # key -> {request id: start ms}
        self._spend: dict[str, int] = {}
        self._holds: dict[str, dict[str, tuple[int, int]]] = {}  # spend key -> {request id: (units, start ms)}

    def clear(self) -> None:
        with self._lock:
            self._tpm.clear()
            self._concurrency.clear()
            self._spend.clear()
            self._holds.clear()

    def _used(self, prefix: str, window: int) -> int:
        entry = self._tpm.get(prefix)
        return entry[1] if entry and entry[0] == window else 0

    async def admit(self, ask: _Ask) -> _Outcome:
        now = int(time.time() * 1000)
        window_ms = _window_ms()
        window = now // window_ms
        ms_left = (window + 1) * window_ms - now
        with self._lock:
            keys = ask.keys
            budgets = [i for i in (0, 1) if ask.thresholds[i] is not None]
            missing = tuple(i for i in budgets if keys.spends[i] not in self._spend)
            if missing:
                return _Outcome("init", missing)
            spends = tuple(self._spend.get(keys.spends[i], 0) if i in budgets else 0 for i in (0, 1))
            hit = tuple(i for i in budgets if spends[i] > ask.thresholds[i])
            if hit:
                return _Outcome("budget", hit, spend=spends)
            used = [self._used(prefix, window) for prefix in keys.tpm]
            hit = tuple(i for i in (0, 1) if ask.tpm[i] >= 0 and used[i] + ask.tokens > ask.tpm[i])
            if hit:
                return _Outcome("tokens", hit, window, ms_left, (used[0], used[1]))
            horizon = now - _horizon_ms()
            for key in keys.concurrency:
                slots = self._concurrency.get(key, {})
                for request_id in [r for r, started in slots.items() if started < horizon]:
                    del slots[request_id]
            in_flight = [len(self._concurrency.get(key, ())) for key in keys.concurrency]
            hit = tuple(i for i in (0, 1) if 0 <= ask.concurrency[i] <= in_flight[i])
            if hit:
                return _Outcome("concurrency", hit, window, ms_left, (used[0], used[1]))
            for i in (0, 1):
                if ask.tpm[i] >= 0:
                    used[i] += ask.tokens
                    self._tpm[keys.tpm[i]] = (window, used[i])
                if ask.concurrency[i] >= 0:
                    self._concurrency.setdefault(keys.concurrency[i], {})[ask.request_id] = now
            for i in budgets:
                self._spend[keys.spends[i]] += ask.units
                self._holds.setdefault(keys.spends[i], {})[ask.request_id] = (ask.units, now)
            return _Outcome("ok", (), window, ms_left, (used[0], used[1]))

    async def initialise(self, spend_key: str, units: int) -> None:
        with self._lock:
            self._spend.setdefault(spend_key, units)

    async def settle(self, ticket: _Ticket, *, tokens: int, units: int) -> None:
        now = int(time.time() * 1000)
        current = now // _window_ms()
        delta = tokens - ticket.tokens
        keys = ticket.keys
        with self._lock:
            for i in (0, 1):
                if ticket.concurrency[i]:
                    self._concurrency.get(keys.concurrency[i], {}).pop(ticket.request_id, None)
                if ticket.tpm[i] and delta:
                    target = ticket.window if current == ticket.window else (current if delta > 0 else None)
                    if target is not None:
                        self._tpm[keys.tpm[i]] = (target, max(0, self._used(keys.tpm[i], target) + delta))
            for i in (0, 1):
                spend_key = keys.spends[i]
                # A missing counter will be initialised from the database, which is where the cost goes.
                if ticket.budget[i] and spend_key in self._spend:
                    held = self._holds.get(spend_key, {}).pop(ticket.request_id, (0, 0))[0]
                    self._spend[spend_key] = max(0, self._spend[spend_key] - held + units)

    async def spend(self, spend_key: str) -> int | None:
        with self._lock:
            return self._spend.get(spend_key)

    async def peek(self, keys: _Keys, *, window: int, since_ms: int) -> tuple[int, int, int | None]:
        with self._lock:
            slots = self._concurrency.get(keys.concurrency[0], {})
            in_flight = sum(1 for started in slots.values() if started >= since_ms)
            return self._used(keys.tpm[0], window), in_flight, self._spend.get(keys.spend)

    async def release(self, keys: _Keys, request_id: str) -> int:
        with self._lock:
            freed = sum(self._concurrency.get(key, {}).pop(request_id, None) is not None for key in keys.concurrency)
            for spend_key in keys.spends:
                held = self._holds.get(spend_key, {}).pop(request_id, None)
                if held is not None:
                    freed += 1
                    if spend_key in self._spend:
                        self._spend[spend_key] = max(0, self._spend[spend_key] - held[0])
            return freed

    async def reconcile(self, spend_key: str, holds_key: str, units: int) -> int:
        horizon = int(time.time() * 1000) - _horizon_ms()
        with self._lock:
            holds = self._holds.setdefault(spend_key, {})  # kept by spend key: `holds_key` is Redis' name
            for request_id in [r for r, (_, started) in holds.items() if started < horizon]:
                del holds[request_id]
            self._spend[spend_key] = units + sum(held for held, _ in holds.values())
            return self._spend[spend_key]


_redis_store = _RedisStore()
_memory_store = _MemoryStore()


def _store() -> _RedisStore | _MemoryStore:
    return _redis_store if _redis_url() else _memory_store


# --- Budget initialisation, once per counter and process at a time ---

_initialising: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future]]" = (
    weakref.WeakKeyDictionary()
)


async def _initialise(store, spend_key: str, month_to_date: Callable[[], Awaitable[Decimal]]) -> None:
    """Load the month's spend from the database into a missing counter. Concurrent admissions
    of this process share one query; another process may race us, and SET NX keeps the first."""
    pending = _initialising.setdefault(asyncio.get_running_loop(), {})
    future = pending.get(spend_key)
    if future is None:

        async def load() -> None:
            try:
                await store.initialise(spend_key, to_units(await month_to_date()))
            finally:
                pending.pop(spend_key, None)

        future = pending[spend_key] = asyncio.ensure_future(load())
    await asyncio.shield(future)


# --- The API ---


@dataclass
class Admission:
    """An admitted request. Call `settle()` once it is metered, or `release()` when it produced
    nothing billable; either frees its concurrency slot. Both are idempotent and never raise:
    a settlement that cannot reach Redis is logged and left to expire (slots after the
    concurrency horizon, tokens with their window, budget holds at the next reconcile)."""

    headers: dict[str, str] = field(default_factory=dict)
    _ticket: _Ticket | None = field(default=None, repr=False)
    _store: "_RedisStore | _MemoryStore | None" = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    @property
    def budgeted(self) -> bool:
        """Whether the request counts against its tenant's monthly budget (and so may cross one of
        the subscription's alert thresholds). A key's own budget has no alerts."""
        return self._ticket is not None and self._ticket.budget[0]

    async def settle(self, *, tokens: int, cost: Decimal) -> None:
        await self._finish(tokens=max(0, tokens), units=max(0, to_units(cost)))

    async def release(self) -> None:
        await self._finish(tokens=0, units=0)

    async def _finish(self, *, tokens: int, units: int) -> None:
        if self._done:
            return
        self._done = True
        if self._ticket is None or self._store is None:
            return
        # Shielded: a cancelled caller (client gone) must not leave the slot taken.
        await asyncio.shield(_background(_settle_quietly(self._store, self._ticket, tokens=tokens, units=units)))


async def _settle_quietly(store, ticket: _Ticket, *, tokens: int, units: int) -> None:
    try:
        await store.settle(ticket, tokens=tokens, units=units)
    except Exception:  # the response is already decided; settlement must not break it
        log.warning("request %s: settling limits failed", ticket.request_id, exc_info=True)


def _count_requests(rates: list[tuple[int, str, int]]) -> list[dict | None]:
    """django-ratelimit's fixed-window count, one increment per rate. Runs in a worker thread."""
    return [
        get_usage(
            None,
            group=RPM_GROUPS[_SCOPES[scope]],
            key=lambda _group, _request, value=value: value,
            rate=f"{limit}/m",
            increment=True,
        )
        for scope, value, limit in rates
    ]


def _reset_ms(time_left: int) -> int:
    """Milliseconds until a django-ratelimit window ends. Its `time_left` is `window - int(now)`,
    and the window stays current through the second in which that is 0, so it ends at the next
    whole second after `time_left` seconds. Read after the count: a second that turned meanwhile
    can only make this later, never too early for a retry-after."""
    return max(0, (max(0, time_left) + 1) * 1000 - int(time.time() * 1000) % 1000)


def _request_headers(rates: list[tuple[int, str, int]], usages: list[dict | None]) -> tuple[dict[str, str], list]:
    """Headers of the binding request limit, and the limits that refuse this request."""
    counted = [(rate, usage) for rate, usage in zip(rates, usages, strict=True) if usage is not None]
    for _, usage in counted:
        if usage["limit"] == 0 and usage["time_left"] == -1:
            # django-ratelimit's way of saying that the cache could not count.
            raise RedisConnectionError("django-ratelimit could not read or write its counter")
    if not counted:
        return {}, []
    (_, _, limit), usage = min(counted, key=lambda item: (item[0][2] - item[1]["count"], item[0][2]))
    headers = {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(max(0, limit - usage["count"])),
        "x-ratelimit-reset-requests": duration(_reset_ms(usage["time_left"])),
    }
    return headers, [(rate, usage) for rate, usage in counted if usage["should_limit"]]


def _tokens_headers(limits: tuple[int, int], outcome: _Outcome) -> dict[str, str]:
    applying = [i for i in (0, 1) if limits[i] >= 0]
    if not applying:
        return {}
    binding = min(applying, key=lambda i: (limits[i] - outcome.used[i], limits[i]))
    return {
        "x-ratelimit-limit-tokens": str(limits[binding]),
        "x-ratelimit-remaining-tokens": str(max(0, limits[binding] - outcome.used[binding])),
        "x-ratelimit-reset-tokens": duration(outcome.ms_left),
    }


def _limit(value: int | None) -> int:
    return -1 if value is None else value


async def admit(
    *,
    caller: Caller,
    request_id: str,
    prompt_tokens: int,
    max_output_tokens: int | None,
    worst_case_cost: Decimal | None,
    budget: Decimal | None,
    month_to_date: Callable[[], Awaitable[Decimal]],
    key_budget: Decimal | None = None,
    key_month_to_date: Callable[[], Awaitable[Decimal]] | None = None,
) -> Admission:
    """Admit a request or raise GatewayError: 429 (requests, tokens, concurrency), 402 (the
    tenant's or the key's budget), 503 (limits store unreachable while this caller has limits or
    a budget). `month_to_date` and `key_month_to_date` load the month's spend from the database
    when a counter is missing; `key_month_to_date` is needed when there is a `key_budget`."""
    if key_budget is not None and key_month_to_date is None:
        raise TypeError("a key budget needs key_month_to_date")
    tenant, key = caller.tenant, caller.key
    rates = [
        (scope, value, limit)
        for scope, value, limit in (
            (0, f"tenant:{tenant.id}", tenant.requests_per_minute),
            (1, f"key:{key.id}", key.requests_per_minute),
        )
        if limit is not None
    ]
    tpm = (_limit(tenant.tokens_per_minute), _limit(key.tokens_per_minute))
    concurrency = (_limit(tenant.max_concurrent), _limit(key.max_concurrent))
    scripted = budget is not None or key_budget is not None or max(tpm) >= 0 or max(concurrency) >= 0
    if not rates and not scripted:
        return Admission()
    try:
        headers: dict[str, str] = {}
        if rates:
            usages = await asyncio.to_thread(_count_requests, rates)
            headers, refused = _request_headers(rates, usages)
            if refused:
                wait = _seconds_until(max(_reset_ms(usage["time_left"]) for _, usage in refused))
                limits = ", ".join(f"{_WHO[_SCOPES[scope]]} allows {limit}" for (scope, _, limit), _ in refused)
                raise GatewayError(
                    429,
                    f"Rate limit reached for requests per minute: {limits}. Retry in {wait} s.",
                    "rate_limit_requests",
                    headers={"retry-after": str(wait), **headers},
                )
        if not scripted:
            return Admission(headers=headers)
        return await _admit_scripted(
            caller=caller,
            request_id=request_id,
            headers=headers,
            tokens=max(0, prompt_tokens) + max(0, max_output_tokens or 0),
            tpm=tpm,
            concurrency=concurrency,
            worst_case_cost=worst_case_cost,
            budgets=(budget, key_budget),
            loaders=(month_to_date, key_month_to_date),
        )
    except UNREACHABLE as exc:
        log.warning("request %s: limits store unreachable: %s", request_id, exc)
        raise GatewayError(
            503,
            "Rate limits and budgets are unavailable right now, so the request was not admitted. Retry shortly.",
            "limits_unavailable",
            headers={"retry-after": "1"},
        ) from exc


async def _admit_scripted(
    *,
    caller: Caller,
    request_id: str,
    headers: dict[str, str],
    tokens: int,
    tpm: tuple[int, int],
    concurrency: tuple[int, int],
    worst_case_cost: Decimal | None,
    budgets: tuple[Decimal | None, Decimal | None],
    loaders: tuple[Callable[[], Awaitable[Decimal]] | None, Callable[[], Awaitable[Decimal]] | None],
) -> Admission:
    too_big = [i for i in (0, 1) if 0 <= tpm[i] < tokens]
    if too_big:
        # No window will ever hold it: a retry-after would be a lie, so there is none.
        raise GatewayError(
            429,
            f"Request too large for the tokens-per-minute limit: it may use up to {tokens} tokens and "
            + ", ".join(f"{_WHO[_SCOPES[i]]} allows {tpm[i]} per minute" for i in too_big)
            + ". Send a shorter prompt or a lower max_tokens.",
            "rate_limit_tokens",
            headers=headers,
        )
    units = 0
    if budgets != (None, None):
        units = 0 if worst_case_cost is None else max(0, to_units(worst_case_cost, rounding=ROUND_CEILING))
    thresholds = tuple(
        None if budget is None else min(to_units(budget, rounding=ROUND_CEILING), _MAX_UNITS) - max(units, 1)
        for budget in budgets
    )
    ask = _Ask(
        keys=_keys(caller.tenant.id, caller.key.id, _month()),
        request_id=request_id,
        tokens=tokens,
        tpm=tpm,
        concurrency=concurrency,
        thresholds=thresholds,
        units=units,
    )
    store = _store()
    outcome = await store.admit(ask)
    if outcome.verdict == "init":
        await asyncio.gather(*(_initialise(store, ask.keys.spends[i], loaders[i]) for i in outcome.scopes))
        outcome = await store.admit(ask)
        if outcome.verdict == "init":  # the counter vanished again: Redis is not keeping data
            raise RedisConnectionError("the budget counter cannot be initialised")
    headers = {**headers, **_tokens_headers(tpm, outcome)}
    if outcome.verdict == "budget":
        raise _budget_exhausted(outcome, budgets=budgets, worst_case_cost=worst_case_cost if units else None)
    if outcome.verdict == "tokens":
        wait = _seconds_until(outcome.ms_left)
        raise GatewayError(
            429,
            "Rate limit reached for tokens per minute: "
            + ", ".join(
                f"{_WHO[_SCOPES[i]]} allows {tpm[i]}, {outcome.used[i]} are used in this window" for i in outcome.scopes
            )
            + f", and this request may use up to {tokens}. Retry in {wait} s.",
            "rate_limit_tokens",
            headers={"retry-after": str(wait), **headers},
        )
    if outcome.verdict == "concurrency":
        raise GatewayError(
            429,
            "Too many concurrent requests: "
            + ", ".join(f"{_WHO[_SCOPES[i]]} allows {concurrency[i]} in flight" for i in outcome.scopes)
            + ". Retry when one has finished.",
            "concurrency_limit",
            headers={"retry-after": "1", **headers},
        )
    ticket = _Ticket(
        keys=ask.keys,
        request_id=request_id,
        window=outcome.window,
        tokens=tokens,
        tpm=(tpm[0] >= 0, tpm[1] >= 0),
        concurrency=(concurrency[0] >= 0, concurrency[1] >= 0),
        budget=(budgets[0] is not None, budgets[1] is not None),
    )
    return Admission(headers=headers, _ticket=ticket, _store=store)


def _budget_exhausted(
    outcome: _Outcome, *, budgets: tuple[Decimal | None, Decimal | None], worst_case_cost: Decimal | None
) -> GatewayError:
    """The 402 of a budget refusal. It names only the budgets that refused, and says nothing of
    the tenant's other keys: a key's caller learns its own budget and, when the tenant's refused,
    the tenant's (as before keys had budgets)."""
    refusing = [(i, budgets[i]) for i in outcome.scopes if budgets[i] is not None]
    which = " and ".join(f"{_BUDGET_OF[_SCOPES[i]]} of {budget} USD" for i, budget in refusing)
    verb = "are" if len(refusing) > 1 else "is"
    left = min(max(Decimal(0), budget - from_units(outcome.spend[i])) for i, budget in refusing)
    detail = (
        f" This request may cost up to {worst_case_cost.normalize():f} USD; {left.normalize():f} USD remain."
        if worst_case_cost is not None and left > 0
        else ""
    )
    return GatewayError(
        402,
        f"{which[0].upper()}{which[1:]} {verb} exhausted.{detail} Raise the budget or wait for next month.",
        "budget_exhausted",
    )


async def _spend_of(spend_key: str, month_to_date: Callable[[], Awaitable[Decimal]] | None) -> Decimal | None:
    store = _store()
    units = await store.spend(spend_key)
    if units is None and month_to_date is not None:
        await _initialise(store, spend_key, month_to_date)
        units = await store.spend(spend_key)
    return None if units is None else from_units(units)


async def spend_this_month(
    tenant_id: int, *, month_to_date: Callable[[], Awaitable[Decimal]] | None = None
) -> Decimal | None:
    """Month-to-date spend of a tenant, reservations of requests in flight included.

    The counter exists once a request of a tenant with a budget has been admitted this month;
    without it, None, unless `month_to_date` is given to initialise it from the database.
    Raises redis' ConnectionError/TimeoutError when Redis is unreachable.
    """
    return await _spend_of(_keys(tenant_id, 0, _month()).spend, month_to_date)


async def key_spend_this_month(
    key_id: int, *, month_to_date: Callable[[], Awaitable[Decimal]] | None = None
) -> Decimal | None:
    """`spend_this_month()` of one API key's own budget counter (its usage records only)."""
    return await _spend_of(_key_counters(key_id, _month()).key_spend, month_to_date)


async def reconcile(tenant_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """Reset a tenant's month-to-date counter to the database's total plus the reservations of
    requests in flight; returns the new value. Reservations older than the concurrency horizon
    are dropped: their process died, or their settlement will add the full actual cost.

    Tolerated race: a request whose usage record is committed (so in `db_total`) but not yet
    settled is counted twice, its cost and its reservation, until the next reconcile. The gap
    is one await in the proxy, and the error refuses early rather than overspending. A request
    recorded after `db_total` was summed but settled before this call is missed until the next
    reconcile, in the other direction; run the sum just before calling.
    """
    keys = _keys(tenant_id, 0, month or _month())
    return from_units(await _store().reconcile(keys.spend, keys.holds, max(0, to_units(db_total))))


async def reconcile_key(key_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """`reconcile()` of one API key's budget counter, `db_total` being the cost of its own usage
    records this month. The same races are tolerated, for the same reasons."""
    keys = _key_counters(key_id, month or _month())
    return from_units(await _store().reconcile(keys.key_spend, keys.key_holds, max(0, to_units(db_total))))


def _run_sync(coroutine: Awaitable[Decimal]) -> Decimal:
    async def run() -> Decimal:
        try:
            return await coroutine
        finally:
            await aclose()

    return asyncio.run(run())


def reconcile_sync(tenant_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """`reconcile()` for synchronous code (a Celery task): runs on its own event loop."""
    return _run_sync(reconcile(tenant_id, db_total, month=month))


def reconcile_key_sync(key_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """`reconcile_key()` for synchronous code (a Celery task): runs on its own event loop."""
    return _run_sync(reconcile_key(key_id, db_total, month=month))


async def release_request(*, tenant_id: int, key_id: int, request_id: str, month: str) -> int:
    """Give back what a request whose process is gone still holds: its concurrency slots (tenant
    and key) and its budget reservations (tenant and key, of `month`, "YYYY-MM", the month it was
    admitted in). Tokens-per-minute reservations are left to expire with their window.

    For the reconciler (gateway/journal.py): the request will never settle. Idempotent, and
    harmless for a request that did settle (nothing of it is left). Returns how many entries were
    freed. Raises redis' ConnectionError/TimeoutError when Redis is unreachable.
    """
    return await _store().release(_keys(tenant_id, key_id, month), request_id)


def release_request_sync(*, tenant_id: int, key_id: int, request_id: str, month: str) -> int:
    """`release_request()` for synchronous code: in process without Redis, else its own loop."""
    if not _redis_url():
        return asyncio.run(release_request(tenant_id=tenant_id, key_id=key_id, request_id=request_id, month=month))
    return _run_sync(release_request(tenant_id=tenant_id, key_id=key_id, request_id=request_id, month=month))


# --- A read-only look at a tenant's counters, for the staff admin ---


@dataclass(frozen=True, slots=True)
class LiveUsage:
    """What the limits store holds for a tenant now. Counted only for the limits the tenant has:
    tokens when it has a tokens/min limit, requests in flight when it has a concurrency limit,
    the spend counter once a request with a budget was admitted this month (None before)."""

    tokens_this_window: int
    window_seconds: int
    in_flight: int
    month_spend: Decimal | None


async def live_usage(tenant_id: int) -> LiveUsage:
    """Read, never write: the current tokens window, requests in flight, the month's spend counter
    (reservations included). Requests per minute are django-ratelimit's and are not read here.
    Raises redis' ConnectionError/TimeoutError when Redis is unreachable."""
    now = int(time.time() * 1000)
    keys = _keys(tenant_id, 0, _month())
    tokens, in_flight, units = await _store().peek(keys, window=now // _window_ms(), since_ms=now - _horizon_ms())
    return LiveUsage(
        tokens_this_window=tokens,
        window_seconds=_window_ms() // 1000,
        in_flight=in_flight,
        month_spend=None if units is None else from_units(units),
    )


def live_usage_sync(tenant_id: int) -> LiveUsage:
    """`live_usage()` for synchronous code (the admin): in process without Redis, else its own loop."""
    if not _redis_url():
        return asyncio.run(live_usage(tenant_id))

    async def run() -> LiveUsage:
        try:
            return await live_usage(tenant_id)
        finally:
            await aclose()

    return asyncio.run(run())
