"""Reads that may go to a streaming replica, and the router that sends them there (docs/database.md).

With `DATABASE_REPLICA_URL` set, settings add a "replica" database and this router. Nothing goes
to the replica by default: a read does only inside `reading_replica()`, which the reports open
around their own work (the dashboard and analytics pages, `/v1/usage`, the CSV exports). Those
may show figures a little behind the primary; what decides money (admission's month-to-date
spend, key authentication, rollups, invoices, budget alerts) never opens it, so it reads the
primary whatever the replica's lag. Without the setting `reading_replica()` changes nothing.

A context variable rather than a thread-local: `asyncio.to_thread` (gateway/db.py `db_call`)
carries it into the worker thread that runs the query, and one request's replica reads never
leak into another's.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

REPLICA_ALIAS = "replica"

_replica_reads: ContextVar[bool] = ContextVar("replica_reads", default=False)


def replica_configured() -> bool:
    return REPLICA_ALIAS in settings.DATABASES


@contextmanager
def reading_replica() -> Iterator[str]:
    """Reads inside go to the replica when there is one; yields the alias they go to.

    Writes still go to the primary (the router), so a report that also writes (a session, a
    message) is safe inside. Open it around the queries only, not around a view's permission
    checks: a permission revoked on the primary must not live on in a lagging replica. A lazy
    queryset is routed when it runs, so materialise what the page shows inside it.
    """
    token = _replica_reads.set(True)
    try:
        yield REPLICA_ALIAS if replica_configured() else DEFAULT_DB_ALIAS
    finally:
        _replica_reads.reset(token)


def replica_lag_seconds() -> float | None:
    """How far the replica's figures are behind the primary, in seconds; None without a replica.

    0 when the replica has replayed all the WAL it received; else the age of the last
    transaction it replayed (replay paused or slow). A replica cut off from its primary does not
    know what it misses and says 0 too: monitor `pg_stat_replication` on the primary for that.
    A replica that cannot be reached counts as None (the page's own queries then fail).
    """
    if not replica_configured():
        return None
    try:
        with connections[REPLICA_ALIAS].cursor() as cursor:
            cursor.execute(
                "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL"
                " WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                " ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
            )
            (lag,) = cursor.fetchone()
    except Exception:  # noqa: BLE001 (a note on a page, never the page's failure)
        return None
    return None if lag is None else max(0.0, float(lag))


class ReplicaRouter:
    """Reads inside `reading_replica()` to "replica"; everything else, writes always, to "default".

    Explicit answers, never None: Django's fallback would follow an object's `_state.db`, so an
    object read on the replica and saved later would be written there.
    """

    def db_for_read(self, model, **hints) -> str:
        if _replica_reads.get() and replica_configured():
            return REPLICA_ALIAS
        return DEFAULT_DB_ALIAS

    def db_for_write(self, model, **hints) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1, obj2, **hints) -> bool:
        # One database seen twice: the replica is a copy of the primary.
        return True

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints) -> bool:
        return db == DEFAULT_DB_ALIAS
