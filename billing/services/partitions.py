"""Usage record partitions (PostgreSQL): one per UTC month, created ahead, dropped by retention.

Migration 0015 made `billing_usagerecord` a table partitioned by range of `created_at`, with a
DEFAULT partition that takes any record whose month has no partition yet, so that no insert
ever fails. Beat creates this month's partition and the next ones ahead
(`BILLING_USAGE_PARTITIONS_AHEAD`, task `billing.tasks.ensure_usage_partitions`); a month whose
records sit in the default partition (beat did not run, or a record from long ago) gets its own
partition with those rows moved into it. Retention drops a month's partition whole
(`billing.services.retention`). On SQLite, and on a PostgreSQL table that is not partitioned,
everything here does nothing.
"""

import logging
from datetime import UTC, date, datetime

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from billing.models import UsageRecord
from billing.periods import next_month, period_bounds

log = logging.getLogger(__name__)

TABLE = UsageRecord._meta.db_table
DEFAULT_PARTITION = f"{TABLE}_default"
# DDL on the table waits at most this long for its lock: the gateway's inserts queue behind a
# waiting ACCESS EXCLUSIVE request, so a long report holding the table must not stall them.
LOCK_TIMEOUT = "2s"


def usage_partition_name(month: date) -> str:
    """The partition of a UTC month: billing_usagerecord_p2026_12."""
    return f"{TABLE}_p{month:%Y_%m}"


def usage_partitioned(*, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether usage records are a partitioned table (PostgreSQL after migration 0015)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", [TABLE])
        return cursor.fetchone() is not None


def usage_partition_months(*, using: str = DEFAULT_DB_ALIAS) -> list[date]:
    """The months that have a partition of their own, oldest first (the default one aside)."""
    if not usage_partitioned(using=using):
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s) AND c.relname <> %s",
            [TABLE, DEFAULT_PARTITION],
        )
        names = [row[0] for row in cursor.fetchall()]
    prefix = f"{TABLE}_p"
    return sorted(
        date(int(name[len(prefix) :][:4]), int(name[len(prefix) :][5:7]), 1)
        for name in names
        if name.startswith(prefix)
    )


def usage_partition_ensure(*, month: date, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Give a UTC month its own partition; True when it was created here.

    Records of the month already in the default partition (PostgreSQL refuses to create a
    partition while the default one holds rows of its range) are moved into the new partition
    in the same transaction, under an ACCESS EXCLUSIVE lock of the table: rare (beat creates
    partitions months ahead), and as short as the rows to move.
    """
    month = month.replace(day=1)
    if not usage_partitioned(using=using):
        return False
    name = usage_partition_name(month)
    start, end = (f"'{bound.isoformat()}'" for bound in period_bounds(month))
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            return False  # the daily case: no lock taken
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            return False  # created meanwhile by another run
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} "  # noqa: S608
            f"WHERE created_at >= {start} AND created_at < {end})"
        )
        if not cursor.fetchone()[0]:
            cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM ({start}) TO ({end})")
            return True
        cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "  # noqa: S608
            f"WHERE created_at >= {start} AND created_at < {end} RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        )
        log.warning("usage partition %s created late: %d records moved from the default one", name, cursor.rowcount)
        # Attaching creates the partition's indexes, primary key, unique and foreign keys.
        cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ({start}) TO ({end})")
    return True


def usage_partitions_ensure(*, now: datetime | None = None, ahead: int | None = None) -> list[str]:
    """This UTC month's partition and the next `ahead` ones (BILLING_USAGE_PARTITIONS_AHEAD):
    the names of those created now. Idempotent; beat runs it daily."""
    if not usage_partitioned():
        return []
    ahead = settings.BILLING_USAGE_PARTITIONS_AHEAD if ahead is None else ahead
    month = (now or timezone.now()).astimezone(UTC).date().replace(day=1)
    created = []
    for _ in range(ahead + 1):
        if usage_partition_ensure(month=month):
            created.append(usage_partition_name(month))
        month = next_month(month)
    if created:
        log.info("usage partitions created: %s", ", ".join(created))
    usage_statistics_refresh()
    return created


def usage_statistics_refresh(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """ANALYZE the partitioned parent: autovacuum analyzes each partition, never the parent, and
    the planner estimates groups over the table (the dashboard's per-model aggregate of today's
    raw records, migration 0017's extended statistics) from the parent's statistics alone. A
    sample of 30,000 rows: a few seconds on millions of records. Daily, with the partitions."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"ANALYZE {TABLE}")


def usage_default_partition_months(*, before: date, using: str = DEFAULT_DB_ALIAS) -> list[date]:
    """The months before `before` whose records (some or all) sit in the default partition."""
    if not usage_partitioned(using=using):
        return []
    start, _ = period_bounds(before.replace(day=1))
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT (date_trunc('month', created_at AT TIME ZONE 'UTC'))::date "  # noqa: S608
            f"FROM {DEFAULT_PARTITION} WHERE created_at < %s",
            [start],
        )
        return sorted(row[0] for row in cursor.fetchall())


def usage_partition_lock(*, month: date, using: str = DEFAULT_DB_ALIAS) -> None:
    """Hold a month's partition in SHARE mode for the caller's transaction: its records can be
    read, none written (the gateway's inserts of other months go to other partitions)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"LOCK TABLE {usage_partition_name(month)} IN SHARE MODE")


def usage_partition_drop(*, month: date, using: str = DEFAULT_DB_ALIAS) -> None:
    """Drop a month's partition, its records with it. The caller holds the transaction in which
    it checked that the month may go (retention), and its locks."""
    connection = connections[using]
    # Foreign-key checks deferred to the commit of records written in this transaction would make
    # PostgreSQL refuse the DROP ("pending trigger events"): run them now (Django's own way).
    connection.check_constraints()
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"DROP TABLE {usage_partition_name(month)}")
