"""Extended statistics (ndistinct) on the columns the dashboard groups today's raw records by.

Without them PostgreSQL multiplies each column's distinct values and expects ~27,000 groups
per (model, endpoint, status_code, error_type, cache_hit, price_id) where there are a few
hundred, and ~100,000 with the UTC day (an expression: no statistics at all): it sorts a late
day's 138,000 records (spilling to disk) instead of hashing them. With them, the dashboard's
per-model-and-day aggregate over them takes ~115 ms instead of ~345 ms (docs/benchmark.md,
"Daily summaries"). The day is the expression `TruncDate("created_at", tzinfo=UTC)` compiles
to (console/analytics.py `_aggregate`): the planner matches it only if it is the same.
The statistics of a partitioned table are those of its parent, which autovacuum never
analyzes: `usage_partitions_ensure` (daily) runs ANALYZE on it. PostgreSQL only.
"""

from django.db import migrations

TABLE = "billing_usagerecord"
NAME = "billing_usagerecord_group_ndistinct"
COLUMNS = "model, endpoint, status_code, error_type, cache_hit, price_id, ((created_at AT TIME ZONE 'UTC')::date)"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"CREATE STATISTICS IF NOT EXISTS {NAME} (ndistinct) ON {COLUMNS} FROM {TABLE}")
        cursor.execute(f"ANALYZE {TABLE}")


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"DROP STATISTICS IF EXISTS {NAME}")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0016_usage_summaries"),
    ]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
