"""Usage records become a table partitioned by UTC month on `created_at` (PostgreSQL only).

A partitioned table's unique constraints must contain the partition key, so the record of a
request is unique on (request_id, created_at) instead of request_id alone: a request's
`created_at` is fixed when it starts (gateway.lifecycle.Call) and travels with its journal
trace and its spooled record, so a replayed write still collides with the first one. The
primary key becomes (id, created_at); Django keeps seeing `id` as the primary key (ids still
come from one sequence, so they stay unique).

The conversion copies every row in the migration's transaction (an ACCESS EXCLUSIVE lock on the
table for its duration: a million records take seconds), into one partition per month that holds
records, plus this month and the next two (beat creates the later ones,
`billing.services.usage_partitions_ensure`) and a DEFAULT partition, so that no insert ever
fails. Indexes, check constraints and foreign keys are recreated as they were, whatever columns
and indexes earlier migrations left; no foreign key may point to usage records (there is none).

On SQLite (the demo) the table stays plain; only the unique constraint changes, as on PostgreSQL.
"""

from datetime import UTC, date, datetime

from django.db import migrations, models

TABLE = "billing_usagerecord"
MONTHS_AHEAD = 2
ONE_PER_REQUEST = "usage_one_per_request"


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _bound(month: date) -> str:
    return f"'{month.isoformat()} 00:00:00+00'"


def _table_shape(cursor, table: str) -> tuple[list[str], list[str]]:
    """The table's non-unique index definitions and foreign-key constraints (name, definition)."""
    cursor.execute(
        "SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
        "WHERE x.indrelid = %s::regclass AND NOT x.indisunique AND c.relname NOT LIKE %s ORDER BY c.relname",
        [table, f"{TABLE}_request_id_%_like"],
    )
    indexes = [row[0] for row in cursor.fetchall()]
    cursor.execute(
        "SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname",
        [table],
    )
    foreign_keys = [f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}" for name, definition in cursor.fetchall()]
    return indexes, foreign_keys


def _copy_into(cursor, new: str) -> None:
    """Copy every row into `new`, drop the old table, give `new` its name, sequence and shape."""
    indexes, foreign_keys = _table_shape(cursor, TABLE)
    cursor.execute(f"SELECT last_value FROM pg_sequences WHERE sequencename = '{TABLE}_id_seq'")  # noqa: S608
    row = cursor.fetchone()
    last_id = row[0] if row and row[0] is not None else 0
    cursor.execute(f"INSERT INTO {new} SELECT * FROM {TABLE}")  # noqa: S608
    cursor.execute(f"DROP TABLE {TABLE}")
    cursor.execute(f"ALTER TABLE {new} RENAME TO {TABLE}")
    cursor.execute(f"ALTER SEQUENCE {new}_id_seq RENAME TO {TABLE}_id_seq")
    cursor.execute(
        f"SELECT setval('{TABLE}_id_seq', GREATEST(%s, (SELECT COALESCE(MAX(id), 0) FROM {TABLE}), 1))",  # noqa: S608
        [last_id],
    )
    for statement in [*indexes, *foreign_keys]:
        cursor.execute(statement)
    cursor.execute(f"ANALYZE {TABLE}")


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        if cursor.fetchone():
            return
        cursor.execute(f"SELECT conrelid::regclass::text FROM pg_constraint WHERE confrelid = '{TABLE}'::regclass")
        if referencing := [row[0] for row in cursor.fetchall()]:
            raise RuntimeError(f"{TABLE} cannot be partitioned: foreign keys point to it from {referencing}")
        # The copy takes as long as the table is big: DATABASE_STATEMENT_TIMEOUT_MS is not for it.
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        new = f"{TABLE}_partitioned"
        cursor.execute(
            f"CREATE TABLE {new} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY) "
            "PARTITION BY RANGE (created_at)"
        )
        cursor.execute(
            f"SELECT DISTINCT (date_trunc('month', created_at AT TIME ZONE 'UTC'))::date FROM {TABLE}"  # noqa: S608
        )
        months = {row[0] for row in cursor.fetchall()}
        month = datetime.now(UTC).date().replace(day=1)
        for _ in range(MONTHS_AHEAD + 1):
            months.add(month)
            month = _next_month(month)
        for month in sorted(months):
            cursor.execute(
                f"CREATE TABLE {TABLE}_p{month:%Y_%m} PARTITION OF {new} "
                f"FOR VALUES FROM ({_bound(month)}) TO ({_bound(_next_month(month))})"
            )
        cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {new} DEFAULT")
        _copy_into(cursor, new)
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id, created_at)")
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {ONE_PER_REQUEST} UNIQUE (request_id, created_at)")


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        if not cursor.fetchone():
            return
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        new = f"{TABLE}_plain"
        cursor.execute(f"CREATE TABLE {new} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY)")
        _copy_into(cursor, new)  # dropping the partitioned table drops its partitions
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)")
        # Fails, as it should, when two records of one request id were written meanwhile.
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_request_id_key UNIQUE (request_id)")
        like = schema_editor._create_index_name(TABLE, ["request_id"], suffix="_like")
        cursor.execute(f"CREATE INDEX {like} ON {TABLE} (request_id varchar_pattern_ops)")


class _NotOnPostgreSQL:
    """An operation whose schema change PostgreSQL gets from `forward`/`backward` instead."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class AlterFieldNotOnPostgreSQL(_NotOnPostgreSQL, migrations.AlterField):
    pass


class AddConstraintNotOnPostgreSQL(_NotOnPostgreSQL, migrations.AddConstraint):
    pass


class Migration(migrations.Migration):
    dependencies = [("billing", "0014_invoice_cost_centres")]

    operations = [
        migrations.RunPython(forward, backward),
        AlterFieldNotOnPostgreSQL(model_name="usagerecord", name="request_id", field=models.CharField(max_length=64)),
        AddConstraintNotOnPostgreSQL(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(fields=("request_id", "created_at"), name=ONE_PER_REQUEST),
        ),
    ]
