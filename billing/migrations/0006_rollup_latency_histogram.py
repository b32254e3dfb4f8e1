"""Latency buckets on the daily rollups (billing/latency.py), so that the admin's p50/p95 come
from rollups alone.

Existing rollup rows get their bucket counts from their raw records, one UPDATE … FROM per
rolled-up day; their sums are left exactly as they are (invoices were made from them). A pruned
day has no raw records left: its buckets stay 0, and percentiles leave its requests out.
The bounds are frozen here: a later change of billing/latency.py is a migration of its own.
"""

from datetime import UTC, datetime, time, timedelta

from django.db import migrations, models

BOUNDS_MS = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 30000, 60000)
KEY = ["tenant_id", "model", "endpoint", "status_code", "error_type", "cache_hit"]


def _buckets():
    lower = 0
    for upper in BOUNDS_MS:
        yield f"lat_lt_{upper}", lower, upper
        lower = upper
    yield f"lat_ge_{lower}", lower, None


def backfill(apps, schema_editor):
    UsageRollup = apps.get_model("billing", "UsageRollup")
    UsageRollupDay = apps.get_model("billing", "UsageRollupDay")
    UsageRecord = apps.get_model("billing", "UsageRecord")
    connection = schema_editor.connection
    quote = connection.ops.quote_name
    rollup, raw = quote(UsageRollup._meta.db_table), quote(UsageRecord._meta.db_table)
    sums, sets = [], []
    for name, lower, upper in _buckets():
        conditions = [f"{quote('latency_ms')} >= {lower}"] if lower else []
        if upper is not None:
            conditions.append(f"{quote('latency_ms')} < {upper}")
        sums.append(f"SUM(CASE WHEN {' AND '.join(conditions)} THEN 1 ELSE 0 END) AS {quote(name)}")
        sets.append(f"{quote(name)} = s.{quote(name)}")
    key = ", ".join(quote(c) for c in [*KEY, "price_id"])
    join = " AND ".join(f"r.{quote(c)} = s.{quote(c)}" for c in KEY)
    sql = (
        f"UPDATE {rollup} AS r SET {', '.join(sets)} FROM ("  # noqa: S608 (our own names)
        f"SELECT {key}, {', '.join(sums)} FROM {raw} "
        f"WHERE {quote('created_at')} >= %s AND {quote('created_at')} < %s GROUP BY {key}"
        f") AS s WHERE r.{quote('day')} = %s AND {join} "
        f"AND COALESCE(r.{quote('price_id')}, 0) = COALESCE(s.{quote('price_id')}, 0)"
    )
    created_at = UsageRecord._meta.get_field("created_at")
    day_field = UsageRollup._meta.get_field("day")
    days = UsageRollupDay.objects.filter(pruned=False).order_by("day").values_list("day", flat=True)
    with connection.cursor() as cursor:
        for day in days:
            start = datetime.combine(day, time.min, tzinfo=UTC)
            cursor.execute(
                sql,
                [
                    created_at.get_db_prep_value(start, connection),
                    created_at.get_db_prep_value(start + timedelta(days=1), connection),
                    day_field.get_db_prep_value(day, connection),
                ],
            )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_budget_alerts"),
    ]

    operations = [
        *(
            migrations.AddField(model_name="usagerollup", name=name, field=models.PositiveBigIntegerField(default=0))
            for name, _, _ in _buckets()
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
