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

from django.conf import settings
from django.db import connections
from django.db.utils import InterfaceError, OperationalError

try:  # PostgreSQL's driver and pool; the demo on SQLite may run without them
    import psycopg
    import psycopg_pool

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        psycopg_pool.PoolTimeout,
    )
except ImportError:  # pragma: no cover
    _DRIVER_ERRORS = ()

# Failures that mean "the database cannot be reached or does not answer in time", as opposed to
# a bug or a refused write: a usage record then goes to the journal (gateway/journal.py) and a
# request that needs the database gets a 503 in its wire format. Django wraps the driver's
# errors, the pool's timeout included, in its own; the driver's are listed for code that is not
# wrapped. TimeoutError is `db_call`'s own bound.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    TimeoutError,
    *_DRIVER_ERRORS,
)

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

    Bounded by GATEWAY_DB_TIMEOUT: a database that hangs (a network that drops packets, a
    server that stopped answering) costs the caller that long at most, then TimeoutError. The
    worker thread is not interrupted (a thread cannot be); its work may still complete later,
    which is why every write through here is idempotent or journalled (usage records: their
    request id is unique).
    """
    # asyncio.timeout rather than wait_for: no extra task per call on the hot path.
    async with asyncio.timeout(settings.GATEWAY_DB_TIMEOUT):
        return await asyncio.to_thread(_released, fn, *args, **kwargs)
