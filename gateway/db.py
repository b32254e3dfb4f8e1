"""Database work of the gateway's async code: one hop to a worker thread, connection handed back.

The completion endpoints are served outside Django's per-request thread and request signals
(proxy_platform/handlers.py), so nothing would close a connection that a worker thread opened.
`db_call` runs a synchronous function on the event loop's default executor and returns the
thread's connection to the pool before it returns: a connection is held only while a query
runs, a broken one never outlives the call that saw it, and the pool (DATABASE_POOL_MAX per
process) is shared by every request in flight rather than pinned to one.
"""

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def _released(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return fn(*args, **kwargs)
    finally:
        # With a pool, close() is putconn(); without one (SQLite, the demo) it really closes.
        connections.close_all()


async def db_call(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn(*args, **kwargs)` in a worker thread, as one unit: its own connection, released after.

    `asyncio.to_thread` rather than asgiref's `sync_to_async`: the caller's context variables
    still reach `fn`, but nothing is copied back afterwards (a walk over every context variable
    saved per call), and calls share the loop's default executor instead of queueing on the one
    thread that thread-sensitive calls get outside a request context.
    """
    return await asyncio.to_thread(_released, fn, *args, **kwargs)
