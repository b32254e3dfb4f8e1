"""The default catalog's embedding models: OpenAI's text-embedding-3 pair, and the same on Azure.

Like 0002_default_catalog, the data is frozen here: list prices per 1M input tokens (USD) as
OpenAI publishes them. Embeddings have no output tokens, so the output price is 0 (a request
reports `prompt_tokens` only). Forward is idempotent (a model whose name exists is left alone,
an installation's own entry wins); reverse deletes only rows that still look as created here.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2025, 1, 1, tzinfo=UTC)

# name, provider, upstream (provider model id or Azure deployment name), context window, input per 1M
CATALOG = [
    ("text-embedding-3-small", "openai", "text-embedding-3-small", 8_191, "0.02"),
    ("text-embedding-3-large", "openai", "text-embedding-3-large", 8_191, "0.13"),
    # Azure OpenAI: the upstream is the name of the deployment in the Azure resource.
    ("azure-text-embedding-3-small", "azure", "text-embedding-3-small", 8_191, "0.02"),
    ("azure-text-embedding-3-large", "azure", "text-embedding-3-large", 8_191, "0.13"),
]


def catalog_create(apps, schema_editor):
    CatalogModel = apps.get_model("tenants", "CatalogModel")
    Deployment = apps.get_model("tenants", "Deployment")
    ModelPrice = apps.get_model("billing", "ModelPrice")
    existing = set(CatalogModel.objects.values_list("name", flat=True))
    for name, provider, upstream, context, input_ in CATALOG:
        if name in existing:
            continue
        model = CatalogModel.objects.create(name=name, provider=provider, kind="embedding", context_window=context)
        Deployment.objects.create(model=model, provider=provider, upstream=upstream, region="")
        ModelPrice.objects.create(
            model=model, effective_from=EFFECTIVE_FROM, input_per_1m=Decimal(input_), output_per_1m=Decimal(0)
        )


def catalog_delete(apps, schema_editor):
    CatalogModel = apps.get_model("tenants", "CatalogModel")
    Deployment = apps.get_model("tenants", "Deployment")
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for name, provider, upstream, _context, input_ in CATALOG:
        model = CatalogModel.objects.filter(name=name, provider=provider, kind="embedding").first()
        if model is None:
            continue
        # A price used by a UsageRecord is PROTECTed: reversing with billed usage fails loudly.
        ModelPrice.objects.filter(
            model=model,
            effective_from=EFFECTIVE_FROM,
            input_per_1m=Decimal(input_),
            output_per_1m=Decimal(0),
            cached_input_per_1m=None,
            cache_write_per_1m=None,
        ).delete()
        Deployment.objects.filter(model=model, provider=provider, upstream=upstream, region="").delete()
        if not model.deployments.exists() and not ModelPrice.objects.filter(model=model).exists():
            model.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_usage_endpoint_embeddings"),
        ("tenants", "0006_catalogmodel_kind"),
    ]

    operations = [
        migrations.RunPython(catalog_create, catalog_delete),
    ]
