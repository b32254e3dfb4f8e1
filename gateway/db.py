"""Database work of the gateway's async code: one hop to a worker thread, connection handed back.

The completion endpoints are served outside Django's per-request thread and request signals
(proxy_platform/handlers.py), so nothing would close a connection that a worker thread opened.
`db_call` runs a synchronous function on the event loop's default executor and returns the
thread's connection to the pool before it returns: a connection is held only while a query
runs, a broken one never outlives the call that saw it, and the pool (DATABASE_POOL_MAX per
process) is shared by every request in flight rather than pinned to one.

`db_fetchone_direct` runs one statement on a PostgreSQL connection of the event loop's own,
without the hop: the usage record's write (gateway/metering.py) when nothing else goes with it.
"""

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
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

log = logging.getLogger(__name__)

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


# --- Direct statements on the event loop's own connections ---

# Connections per event loop for `db_fetchone_direct`; more statements at once than this go
# through `db_call` (a worker thread and the pool), as everything did before.
DIRECT_CONNECTIONS = 2


class DirectBusy(Exception):
    """No direct connection is free (or the database is not PostgreSQL): use `db_call`."""


class _Direct:
    """One event loop's idle direct connections and how many it has open."""

    __slots__ = ("idle", "opened")

    def __init__(self) -> None:
        self.idle: list = []
        self.opened = 0


_direct: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Direct]" = weakref.WeakKeyDictionary()
_prep_connection = None


def prep_connection():
    """A Django connection of the default database, to prepare values for a direct statement
    (`Field.get_db_prep_save`); never connected, so never the loop's own context-local one."""
    global _prep_connection
    if _prep_connection is None:
        _prep_connection = connections.create_connection(DEFAULT_DB_ALIAS)
    return _prep_connection


def direct_available() -> bool:
    """PostgreSQL with psycopg 3 and GATEWAY_DB_DIRECT on (the default)."""
    return getattr(settings, "GATEWAY_DB_DIRECT", True) and prep_connection().vendor == "postgresql"


def direct_free() -> bool:
    """Whether this event loop has a direct connection free (idle, or one more may be opened).
    Asked before a statement is prepared for `db_fetchone_direct`: under load both are usually
    busy, and a statement prepared only to be refused is prepared twice (once more for `db_call`)."""
    direct = _direct.get(asyncio.get_running_loop())
    return direct is None or bool(direct.idle) or direct.opened < DIRECT_CONNECTIONS


async def _connect():
    wrapper = prep_connection()
    params = connections.create_connection(DEFAULT_DB_ALIAS).get_connection_params()
    if wrapper.settings_dict["OPTIONS"].get("assume_role"):
        raise DirectBusy("a role to assume: left to Django's connections")
    # Django's own parameters (the database's current name: a test run's too, its adapters and
    # connect timeout), client-side binding as Django's default cursor, autocommit as Django's.
    params["cursor_factory"] = psycopg.AsyncClientCursor
    return await psycopg.AsyncConnection.connect(**params, autocommit=True)


async def db_fetchone_direct(sql: str, params: list) -> tuple | None:
    """`sql` with `params` on a connection of this event loop's own, and its first row: no worker
    thread, no pool checkout (the hop costs more CPU than the statement's own work when requests
    come one at a time). Raises `DirectBusy` when every direct connection is in use or the
    database is not PostgreSQL; a database error as `db_call` would (DATABASE_UNAVAILABLE for
    one that cannot be reached), bounded by GATEWAY_DB_TIMEOUT as well.

    The statement runs in autocommit, alone: nothing that needs a transaction goes through here.
    A connection that failed, timed out or was cancelled mid-statement is closed, never reused.
    """
    loop = asyncio.get_running_loop()
    direct = _direct.get(loop)
    if direct is None:
        direct = _direct[loop] = _Direct()
    if direct.idle:
        connection = direct.idle.pop()
    elif direct.opened < DIRECT_CONNECTIONS:
        direct.opened += 1
        try:
            async with asyncio.timeout(settings.GATEWAY_DB_TIMEOUT):
                connection = await _connect()
        except BaseException:
            direct.opened -= 1
            raise
    else:
        raise DirectBusy("every direct connection is in use")
    # On a task of its own, waited for without passing a cancellation on: psycopg answers a
    # cancelled statement by asking the server to cancel it and waiting for that (up to 5 + 5 s),
    # which a server that hangs would make the request wait. Given up, the statement's task is
    # cancelled and its connection closed when psycopg is done with it, off the request's path.
    statement = asyncio.ensure_future(_fetchone(connection, sql, params))
    try:
        done, _ = await asyncio.wait((statement,), timeout=settings.GATEWAY_DB_TIMEOUT)
        if not done:
            raise TimeoutError(f"no answer from the database within {settings.GATEWAY_DB_TIMEOUT} s")
        row = statement.result()
    except BaseException:
        direct.opened -= 1
        _abandon(statement, connection)
        raise
    if connection.closed or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        direct.opened -= 1
        _close_soon(connection)
    else:
        direct.idle.append(connection)
    return row


async def _fetchone(connection, sql: str, params: list) -> tuple | None:
    cursor = connection.cursor()
    await cursor.execute(sql, params)
    return await cursor.fetchone()


_abandoned: set[asyncio.Future] = set()


def _abandon(statement: asyncio.Future, connection) -> None:
    """A statement given up (failed, late, or its caller cancelled): its connection is closed once
    the statement's task has ended, and never used again."""

    def ended(task: asyncio.Future) -> None:
        _abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller has its own error
        _close_soon(connection)

    if statement.done():
        ended(statement)
        return
    _abandoned.add(statement)
    statement.add_done_callback(ended)
    statement.cancel()


def _close_soon(connection) -> None:
    # The socket is closed at once (libpq's finish); nothing to wait for.
    try:
        connection.pgconn.finish()
    except Exception:  # an already closed connection
        log.debug("closing a direct connection failed", exc_info=True)


def direct_close_all() -> None:
    """Close every idle direct connection of every loop (shutdown, tests): none outlives its use."""
    for direct in list(_direct.values()):
        while direct.idle:
            direct.opened -= 1
            _close_soon(direct.idle.pop())
