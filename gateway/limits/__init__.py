"""Admission control for one request: rate limits, concurrency and the monthly budgets (docs/design.md#the-hot-path,
docs/limits.md).

Every gateway process shares the counters through Redis, so the limits are exact across
processes: each decision is one Lua script, one atomic step and one round trip on the Redis
server, whatever applies (the tenant's, the key's project's, the key's and the end user's
requests/min, tokens/min, concurrency and budgets, monthly and daily); settlement is one more.
Every key name carries the tenant's Redis Cluster hash tag (keys.py). A caller with no limits
and no budget costs nothing, not even a Redis call, and is untouched by a Redis outage. A caller
with any limit or a budget is refused with 503 `limits_unavailable` while Redis cannot be reached (fail closed).

- Requests per minute, per tenant and per key: fixed one-minute windows aligned on the epoch,
  on Redis' clock. Only admitted requests count (a refusal reserves nothing).
- Tokens per minute, per tenant and per key: fixed windows of GATEWAY_LIMIT_WINDOW_SECONDS.
  Admission reserves the estimate (prompt tokens plus max output tokens when set); settlement
  adds the difference to the real count, never below zero. An overrun settled after its window
  counts in the current one; an underrun of a finished window is dropped.
- Concurrency, per tenant and per key: a sorted set of request id -> start time. Entries older
  than GATEWAY_CONCURRENCY_HORIZON_SECONDS are dropped at the next admission.
- Monthly budgets, per tenant and per key: month-to-date spend (UTC months) in 1e-12 USD units,
  an integer (compared as digit strings in Lua, whose numbers are doubles). Each counter starts
  from the database when missing (SET NX). Admission reserves the worst case on every budget
  that applies, or on none; settlement replaces each reservation by the actual cost; holds are
  kept next to each counter so that `reconcile()` can reset it without losing them.

Layout: keys.py (key names, units), scripts/*.lua, store.py (the protocol), redis_store.py and
memory_store.py (the two stores; the latter is the demo's, without REDIS_URL, one process
only), clock.py (injectable time), admission.py, headers.py, counters.py.
"""

from .admission import Admission, Level, admit
from .backend import memory_store as _memory_store
from .backend import redis_store as _redis_store
from .backend import store as _store
from .backend import use_clock
from .clock import Clock, ManualClock, SystemClock
from .counters import (
    LiveUsage,
    key_spend_this_month,
    live_usage,
    live_usage_sync,
    reconcile,
    reconcile_key,
    reconcile_key_sync,
    reconcile_level,
    reconcile_level_sync,
    reconcile_sync,
    release_request,
    release_request_sync,
    spend_this_month,
)
from .headers import duration
from .keys import UNITS_PER_USD, from_units, to_units
from .redis_store import UNREACHABLE, aclose, shared_redis

__all__ = [
    "Admission",
    "Level",
    "UNITS_PER_USD",
    "UNREACHABLE",
    "Clock",
    "LiveUsage",
    "ManualClock",
    "SystemClock",
    "_memory_store",
    "_redis_store",
    "_store",
    "aclose",
    "admit",
    "duration",
    "from_units",
    "key_spend_this_month",
    "live_usage",
    "live_usage_sync",
    "reconcile",
    "reconcile_key",
    "reconcile_key_sync",
    "reconcile_level",
    "reconcile_level_sync",
    "reconcile_sync",
    "release_request",
    "release_request_sync",
    "shared_redis",
    "spend_this_month",
    "to_units",
    "use_clock",
]
