"""The default catalog's Claude prices gain what Anthropic charges beyond one cache-write price:
one-hour cache writes (2x input) and, for the 1M-context Sonnet models, the long-context tier
(above 200k input tokens the whole request costs 2x input and 1.5x output, cache prices alike).

The rows of 0002_default_catalog are completed in place rather than superseded by new rows:
requests already billed at them have no one-hour writes and no tier (both columns are new), so
their stored costs stay exactly what their tokens cost at the completed row. Only rows that
still look as 0002 created them (same date and prices, no one-hour price yet) are touched; an
installation's own rows are left alone. Reverse removes exactly what forward added.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2025, 1, 1, tzinfo=UTC)

# name, input, one-hour cache write (2x input) -- per 1M tokens, USD.
ONE_HOUR_WRITES = [
    ("claude-opus-4-5", "5.00", "10.00"),
    ("claude-opus-4-1", "15.00", "30.00"),
    ("claude-sonnet-4-5", "3.00", "6.00"),
    ("claude-sonnet-4", "3.00", "6.00"),
    ("claude-haiku-4-5", "1.00", "2.00"),
    ("claude-3-5-haiku", "0.80", "1.60"),
    ("claude-3-opus", "15.00", "30.00"),
]

# name: (above input tokens, input, output, cached input, 5-minute write, 1-hour write)
LONG_CONTEXT = {
    "claude-sonnet-4-5": (200_000, "6.00", "22.50", "0.60", "7.50", "12.00"),
    "claude-sonnet-4": (200_000, "6.00", "22.50", "0.60", "7.50", "12.00"),
}


def _row(ModelPrice, name, input_):
    return ModelPrice.objects.filter(
        model__name=name, model__provider="anthropic", effective_from=EFFECTIVE_FROM, input_per_1m=Decimal(input_)
    ).first()


def catalog_complete(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    PriceTier = apps.get_model("billing", "PriceTier")
    for name, input_, one_hour in ONE_HOUR_WRITES:
        row = _row(ModelPrice, name, input_)
        if row is None or row.cache_write_1h_per_1m is not None:
            continue
        row.cache_write_1h_per_1m = Decimal(one_hour)
        row.save(update_fields=["cache_write_1h_per_1m"])
        if name in LONG_CONTEXT and not PriceTier.objects.filter(price=row).exists():
            above, t_input, t_output, t_cached, t_write, t_write_1h = LONG_CONTEXT[name]
            PriceTier.objects.create(
                price=row,
                above_input_tokens=above,
                input_per_1m=Decimal(t_input),
                output_per_1m=Decimal(t_output),
                cached_input_per_1m=Decimal(t_cached),
                cache_write_per_1m=Decimal(t_write),
                cache_write_1h_per_1m=Decimal(t_write_1h),
            )


def catalog_uncomplete(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    PriceTier = apps.get_model("billing", "PriceTier")
    for name, input_, one_hour in ONE_HOUR_WRITES:
        row = _row(ModelPrice, name, input_)
        if row is None or row.cache_write_1h_per_1m != Decimal(one_hour):
            continue
        if name in LONG_CONTEXT:
            above, t_input, t_output, *_ = LONG_CONTEXT[name]
            PriceTier.objects.filter(
                price=row,
                above_input_tokens=above,
                input_per_1m=Decimal(t_input),
                output_per_1m=Decimal(t_output),
            ).delete()
        row.cache_write_1h_per_1m = None
        row.save(update_fields=["cache_write_1h_per_1m"])


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0009_cache_write_lifetimes_long_context_tiers"),
    ]

    operations = [migrations.RunPython(catalog_complete, catalog_uncomplete)]
