"""Catalog models have a kind (chat or embedding): the default catalog, the configuration file, the admin."""

import importlib
from decimal import Decimal

import pytest
from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import ModelPrice
from billing.selectors import price_in_force
from config.apply import config_apply
from config.export import config_export
from config.schema import ConfigInvalid
from tenants.models import CatalogModel, Deployment

EMBEDDING_DEFAULTS = {
    "text-embedding-3-small": ("openai", "text-embedding-3-small", "0.02"),
    "text-embedding-3-large": ("openai", "text-embedding-3-large", "0.13"),
    "azure-text-embedding-3-small": ("azure", "text-embedding-3-small", "0.02"),
    "azure-text-embedding-3-large": ("azure", "text-embedding-3-large", "0.13"),
}


def errors_of(document) -> set[str]:
    with pytest.raises(ConfigInvalid) as caught:
        config_apply(document=document)
    return {str(error) for error in caught.value.errors}


def test_the_default_catalog_has_the_embedding_models_with_an_input_price(db):
    for name, (provider, upstream, input_price) in EMBEDDING_DEFAULTS.items():
        model = CatalogModel.objects.get(name=name)
        assert (model.kind, model.provider) == ("embedding", provider), name
        assert [(d.provider, d.upstream, d.region) for d in model.deployments.all()] == [(provider, upstream, "")]
        price = price_in_force(model_id=model.id, at=timezone.now())
        assert (price.input_per_1m, price.output_per_1m) == (Decimal(input_price), Decimal(0))
        assert (price.cached_input_per_1m, price.cache_write_per_1m) == (None, None)
    # Every other model of the default catalog stays a chat model.
    assert CatalogModel.objects.get(name="gpt-4o-mini").kind == "chat"
    assert set(CatalogModel.objects.filter(kind="embedding").values_list("name", flat=True)) == set(EMBEDDING_DEFAULTS)


def test_the_embedding_catalog_migration_is_idempotent_and_reverses_only_its_own_rows(db):
    migration = importlib.import_module("billing.migrations.0008_default_embedding_models")
    before = (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count())
    migration.catalog_create(django_apps, None)
    assert (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count()) == before

    small = CatalogModel.objects.get(name="text-embedding-3-small")
    ModelPrice.objects.create(
        model=small, effective_from=timezone.now(), input_per_1m=Decimal("0.03"), output_per_1m=Decimal(0)
    )
    migration.catalog_delete(django_apps, None)
    assert list(CatalogModel.objects.filter(name="text-embedding-3-small")) == [small]  # a later price hangs on it
    assert not CatalogModel.objects.filter(name="text-embedding-3-large").exists()
    assert CatalogModel.objects.filter(name="gpt-4o-mini").exists()


def test_an_embedding_model_imports_without_an_output_price_and_exports_back(db):
    document = {
        "models": {
            "embed-in-house": {
                "provider": "openai",
                "kind": "embedding",
                "upstream": "text-embedding-3-small",
                "input_per_1m": "0.025",
            }
        }
    }
    changes = config_apply(document=document)
    assert "create model embed-in-house (openai:text-embedding-3-small @any, embedding)" in changes
    model = CatalogModel.objects.get(name="embed-in-house")
    assert model.kind == "embedding"
    price = model.prices.get()
    assert (price.input_per_1m, price.output_per_1m) == (Decimal("0.025"), Decimal(0))

    exported = config_export()
    assert exported["models"]["embed-in-house"] == {
        "provider": "openai",
        "kind": "embedding",
        "upstream": "text-embedding-3-small",
        "region": "",
        "input_per_1m": "0.025",
        "output_per_1m": "0.00",
        "cached_input_per_1m": None,
        "cache_write_per_1m": None,
        "cache_write_1h_per_1m": None,
        "tiers": [],
        "routing": "priority",
        "fallbacks": [],
        "affinity": None,
    }
    assert exported["models"]["text-embedding-3-large"]["kind"] == "embedding"
    assert exported["models"]["gpt-4o"]["kind"] == "chat"
    assert config_apply(document=exported) == []  # the round trip changes nothing
    assert config_export() == exported


def test_the_kind_of_a_model_can_be_changed_by_the_file(db):
    changes = config_apply(document={"models": {"gpt-4o": {"kind": "embedding"}}})
    assert changes == ["update model gpt-4o.kind: chat → embedding"]
    assert CatalogModel.objects.get(name="gpt-4o").kind == "embedding"


def test_a_new_chat_model_still_needs_an_output_price(db):
    document = {"models": {"mine": {"provider": "openai", "upstream": "x", "input_per_1m": "1"}}}
    assert errors_of(document) == {'models.mine: a new model needs "output_per_1m"'}


def test_an_unknown_kind_and_an_anthropic_embedding_model_are_refused(db):
    document = {
        "models": {
            "odd": {"provider": "openai", "kind": "rerank", "upstream": "x", "input_per_1m": "1"},
            "claude-embed": {"provider": "anthropic", "kind": "embedding", "upstream": "x", "input_per_1m": "1"},
        }
    }
    assert errors_of(document) == {
        'models.odd.kind: unknown kind "rerank" (expected one of: chat, embedding)',
        "models.claude-embed.kind: an anthropic model cannot be an embedding model",
    }
    assert not CatalogModel.objects.filter(name__in=["odd", "claude-embed"]).exists()


def test_the_admin_refuses_an_anthropic_embedding_model(db):
    model = CatalogModel(name="claude-embed", provider="anthropic", kind="embedding")
    with pytest.raises(ValidationError) as caught:
        model.full_clean()
    assert "kind" in caught.value.message_dict


def test_the_catalog_admin_lists_and_filters_by_kind(admin_client, db):
    response = admin_client.get("/admin/tenants/catalogmodel/?kind__exact=embedding")
    assert response.status_code == 200
    names = {m.name for m in response.context["cl"].result_list}
    assert names == set(EMBEDDING_DEFAULTS)
    assert b"Embedding" in response.content
