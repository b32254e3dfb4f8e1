"""The default model catalog: list prices per 1M tokens (USD) as published by the providers.

The data is frozen here on purpose: a migration must give the same database whenever it runs,
so it does not import anything that may change later (settings, the config module). Later
price changes are new ModelPrice rows (`import_tenants` with a `models` section, or the
admin), never edits of these.

Every deployment has region "" (any): the platform's own provider accounts are not pinned to
a region. Data-residency deployments (e.g. an Azure resource in "eu") are added per
installation through the configuration file.

Forward is idempotent (a model whose name exists is left alone); reverse deletes only rows
that still look exactly as this migration created them.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2025, 1, 1, tzinfo=UTC)

# name, provider, upstream (provider model id or Azure deployment name), context window,
# input, cached input, cache write, output -- per 1M tokens, USD, as decimal strings.
# OpenAI bills no cache writes (None: the input price applies, and OpenAI reports none).
# Anthropic: cache read 0.1x input, 5-minute cache write 1.25x input.
CATALOG = [
    ("gpt-5", "openai", "gpt-5", 400_000, "1.25", "0.125", None, "10.00"),
    ("gpt-5-mini", "openai", "gpt-5-mini", 400_000, "0.25", "0.025", None, "2.00"),
    ("gpt-5-nano", "openai", "gpt-5-nano", 400_000, "0.05", "0.005", None, "0.40"),
    ("gpt-4.1", "openai", "gpt-4.1", 1_047_576, "2.00", "0.50", None, "8.00"),
    ("gpt-4.1-mini", "openai", "gpt-4.1-mini", 1_047_576, "0.40", "0.10", None, "1.60"),
    ("gpt-4.1-nano", "openai", "gpt-4.1-nano", 1_047_576, "0.10", "0.025", None, "0.40"),
    ("gpt-4o", "openai", "gpt-4o", 128_000, "2.50", "1.25", None, "10.00"),
    ("gpt-4o-mini", "openai", "gpt-4o-mini", 128_000, "0.15", "0.075", None, "0.60"),
    ("o3", "openai", "o3", 200_000, "2.00", "0.50", None, "8.00"),
    ("o3-mini", "openai", "o3-mini", 200_000, "1.10", "0.55", None, "4.40"),
    ("o4-mini", "openai", "o4-mini", 200_000, "1.10", "0.275", None, "4.40"),
    ("gpt-4-turbo", "openai", "gpt-4-turbo", 128_000, "10.00", None, None, "30.00"),
    ("gpt-4", "openai", "gpt-4", 8_192, "30.00", None, None, "60.00"),
    ("gpt-3.5-turbo", "openai", "gpt-3.5-turbo", 16_385, "0.50", None, None, "1.50"),
    ("claude-opus-4-5", "anthropic", "claude-opus-4-5-20251101", 200_000, "5.00", "0.50", "6.25", "25.00"),
    ("claude-opus-4-1", "anthropic", "claude-opus-4-1-20250805", 200_000, "15.00", "1.50", "18.75", "75.00"),
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5-20250929", 200_000, "3.00", "0.30", "3.75", "15.00"),
    ("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514", 200_000, "3.00", "0.30", "3.75", "15.00"),
    ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5-20251001", 200_000, "1.00", "0.10", "1.25", "5.00"),
    ("claude-3-5-haiku", "anthropic", "claude-3-5-haiku-20241022", 200_000, "0.80", "0.08", "1.00", "4.00"),
    ("claude-3-opus", "anthropic", "claude-3-opus-20240229", 200_000, "15.00", "1.50", "18.75", "75.00"),
    # Azure OpenAI: the upstream is the name of the deployment in the Azure resource.
    ("azure-gpt-4o", "azure", "gpt-4o", 128_000, "2.50", "1.25", None, "10.00"),
    ("azure-gpt-4o-mini", "azure", "gpt-4o-mini", 128_000, "0.15", "0.075", None, "0.60"),
]


def _dec(value):
    return None if value is None else Decimal(value)


def catalog_create(apps, schema_editor):
    CatalogModel = apps.get_model("tenants", "CatalogModel")
    Deployment = apps.get_model("tenants", "Deployment")
    ModelPrice = apps.get_model("billing", "ModelPrice")
    existing = set(CatalogModel.objects.values_list("name", flat=True))
    for name, provider, upstream, context, input_, cached, cache_write, output in CATALOG:
        if name in existing:
            continue  # an installation's own entry wins; never overwrite it
        model = CatalogModel.objects.create(name=name, provider=provider, context_window=context)
        Deployment.objects.create(model=model, provider=provider, upstream=upstream, region="")
        ModelPrice.objects.create(
            model=model,
            effective_from=EFFECTIVE_FROM,
            input_per_1m=Decimal(input_),
            output_per_1m=Decimal(output),
            cached_input_per_1m=_dec(cached),
            cache_write_per_1m=_dec(cache_write),
        )


def catalog_delete(apps, schema_editor):
    CatalogModel = apps.get_model("tenants", "CatalogModel")
    Deployment = apps.get_model("tenants", "Deployment")
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for name, provider, upstream, _context, input_, cached, cache_write, output in CATALOG:
        model = CatalogModel.objects.filter(name=name, provider=provider).first()
        if model is None:
            continue
        # Only our own rows. A price used by a UsageRecord is PROTECTed: reversing a
        # migration on a database with billed usage fails loudly, which is what we want.
        ModelPrice.objects.filter(
            model=model,
            effective_from=EFFECTIVE_FROM,
            input_per_1m=Decimal(input_),
            output_per_1m=Decimal(output),
            cached_input_per_1m=_dec(cached),
            cache_write_per_1m=_dec(cache_write),
        ).delete()
        Deployment.objects.filter(model=model, provider=provider, upstream=upstream, region="").delete()
        # The model itself only if nothing else hangs on it (prices or deployments added later).
        if not model.deployments.exists() and not ModelPrice.objects.filter(model=model).exists():
            model.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0001_initial"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(catalog_create, catalog_delete),
    ]
