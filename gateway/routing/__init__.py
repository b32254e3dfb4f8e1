"""Routing and resilience: which deployment of a model answers (docs/routing.md).

Layout: strategies.py (the order: priority, weighted, least_busy, latency, cost), store.py (the
shared state: breaker, provider account quota, in flight, latency; Redis scripts in scripts/*.lua
and a memory twin), router.py (one request's plan and attempts), config.py (settings).
`gateway/proxy.py`'s `_first_that_answers` is the one caller.
"""

from .router import BREAKER_KINDS, Attempt, Plan, engaged, plan, tracked
from .store import Health, Snapshot, memory_routing, redis_routing, store

__all__ = [
    "BREAKER_KINDS",
    "Attempt",
    "Health",
    "Snapshot",
    "Plan",
    "engaged",
    "memory_routing",
    "plan",
    "redis_routing",
    "store",
    "tracked",
]
