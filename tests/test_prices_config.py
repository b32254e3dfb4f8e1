"""The configuration file's price keys for cache-write lifetimes and long-context tiers
(`cache_write_1h_per_1m`, `tiers`): validated, applied as a new price row with its tiers,
exported back the same; and the default catalog's Claude prices (billing/migrations/0008)."""

import copy
import importlib
from decimal import Decimal

import pytest
from django.apps import apps as django_apps

from billing.models import ModelPrice, PriceTier
from config.apply import config_apply
from config.export import config_export
from config.schema import ConfigInvalid
from tenants.models import CatalogModel

D = Decimal
TIER = {
    "above_input_tokens": 200000,
    "input_per_1m": "6.00",
    "output_per_1m": "22.50",
    "cached_input_per_1m": "0.60",
    "cache_write_per_1m": "7.50",
    "cache_write_1h_per_1m": "12.00",
}
MODEL = {
    "provider": "anthropic",
    "kind": "chat",
    "upstream": "claude-sonnet-4-5-20250929",
    "region": "",
    "input_per_1m": "3.00",
    "output_per_1m": "15.00",
    "cached_input_per_1m": "0.30",
    "cache_write_per_1m": "3.75",
    "cache_write_1h_per_1m": "6.00",
    "tiers": [TIER],
    "routing": "priority",
    "fallbacks": [],
    "affinity": None,
}


def document(**entry) -> dict:
    return {"models": {"sonnet-house": {**copy.deepcopy(MODEL), **entry}}}


def errors_of(doc) -> set[str]:
    with pytest.raises(ConfigInvalid) as caught:
        config_apply(document=doc)
    return {str(error) for error in caught.value.errors}


def rows() -> list[ModelPrice]:
    return list(ModelPrice.objects.filter(model__name="sonnet-house").order_by("effective_from", "id"))


def tiers_of(price: ModelPrice) -> list[tuple]:
    return list(price.tiers.values_list("above_input_tokens", "input_per_1m", "output_per_1m", "cache_write_1h_per_1m"))


def test_a_model_with_a_one_hour_price_and_a_tier_is_imported_exported_and_reimported_unchanged(db):
    changes = config_apply(document=document())
    assert any("1-hour cache write 6.00" in line and "above 200000 input tokens" in line for line in changes)
    (price,) = rows()
    assert price.cache_write_1h_per_1m == D("6.00")
    assert tiers_of(price) == [(200_000, D("6.00"), D("22.50"), D("12.00"))]
    exported = config_export()["models"]["sonnet-house"]
    assert exported == MODEL
    assert config_apply(document={"models": {"sonnet-house": exported}}) == []
    assert len(rows()) == 1


def test_a_changed_tier_is_a_new_price_row_and_a_left_out_tier_list_keeps_the_tiers(db):
    config_apply(document=document())
    config_apply(document=document(tiers=[{**TIER, "output_per_1m": "30.00"}]))
    first, second = rows()
    assert tiers_of(first) == [(200_000, D("6.00"), D("22.50"), D("12.00"))]  # history kept
    assert tiers_of(second) == [(200_000, D("6.00"), D("30.00"), D("12.00"))]
    entry = document(input_per_1m="3.50")["models"]["sonnet-house"]
    del entry["tiers"]
    config_apply(document={"models": {"sonnet-house": entry}})
    third = rows()[-1]
    assert third.input_per_1m == D("3.50")
    assert tiers_of(third) == tiers_of(second)
    config_apply(document=document(input_per_1m="3.50", tiers=[]))
    assert rows()[-1].tiers.count() == 0


def test_tiers_are_sorted_and_optional_tier_prices_may_be_left_out(db):
    low = {"above_input_tokens": 1000, "input_per_1m": "4.00", "output_per_1m": "16.00"}
    config_apply(document=document(tiers=[TIER, low]))
    (price,) = rows()
    assert [tier.above_input_tokens for tier in price.tiers.all()] == [1000, 200_000]
    assert price.tiers.get(above_input_tokens=1000).cache_write_1h_per_1m is None
    assert config_export()["models"]["sonnet-house"]["tiers"][0] == {
        **low,
        "cached_input_per_1m": None,
        "cache_write_per_1m": None,
        "cache_write_1h_per_1m": None,
    }


def test_bad_tiers_are_refused_whole_with_every_error(db):
    doc = document(
        cache_write_1h_per_1m=6,
        tiers=[
            {**TIER, "discount": "0.1"},
            {"above_input_tokens": 200000, "input_per_1m": "1.00", "output_per_1m": "2.00"},
            {"above_input_tokens": 0, "output_per_1m": "1.00"},
            "not a tier",
        ],
    )
    assert errors_of(doc) == {
        'models.sonnet-house.cache_write_1h_per_1m: must be a decimal string such as "2.50", not a JSON number '
        "(money never goes through floats)",
        "models.sonnet-house.tiers[0].discount: unknown key (expected one of: above_input_tokens, input_per_1m, "
        "output_per_1m, cached_input_per_1m, cache_write_per_1m, cache_write_1h_per_1m)",
        "models.sonnet-house.tiers[1].above_input_tokens: another tier starts above 200000 too",
        'models.sonnet-house.tiers[2]: a tier needs "input_per_1m"',
        "models.sonnet-house.tiers[2].above_input_tokens: must be a positive integer (prompt tokens)",
        "models.sonnet-house.tiers[3]: must be an object",
    }
    assert errors_of(document(tiers={"above_input_tokens": 1})) == {
        "models.sonnet-house.tiers: must be a list of tiers (or [] for none)"
    }
    assert not CatalogModel.objects.filter(name="sonnet-house").exists()


def test_the_default_catalog_prices_claude_one_hour_writes_at_twice_input_and_sonnet_above_200k(db):
    for name in ("claude-opus-4-5", "claude-sonnet-4-5", "claude-sonnet-4", "claude-haiku-4-5", "claude-3-opus"):
        price = CatalogModel.objects.get(name=name).prices.get()
        assert price.cache_write_1h_per_1m == 2 * price.input_per_1m, name
    for name in ("claude-sonnet-4-5", "claude-sonnet-4"):
        (tier,) = CatalogModel.objects.get(name=name).prices.get().tiers.all()
        assert (tier.above_input_tokens, tier.input_per_1m, tier.output_per_1m) == (200_000, D("6"), D("22.5"))
        assert (tier.cached_input_per_1m, tier.cache_write_per_1m, tier.cache_write_1h_per_1m) == (
            D("0.6"),
            D("7.5"),
            D("12"),
        )
    assert not CatalogModel.objects.get(name="claude-haiku-4-5").prices.get().tiers.exists()
    assert CatalogModel.objects.get(name="gpt-4o").prices.get().cache_write_1h_per_1m is None
    exported = config_export()["models"]["claude-sonnet-4-5"]
    assert exported["cache_write_1h_per_1m"] == "6.00"
    assert exported["tiers"] == [TIER]


def test_the_catalog_completion_is_idempotent_and_reversible(db):
    migration = importlib.import_module("billing.migrations.0010_default_catalog_1h_writes_long_context")
    tiers = PriceTier.objects.count()
    migration.catalog_complete(django_apps, None)
    assert PriceTier.objects.count() == tiers == 2
    migration.catalog_uncomplete(django_apps, None)
    assert PriceTier.objects.count() == 0
    assert not ModelPrice.objects.filter(cache_write_1h_per_1m__isnull=False).exists()
    migration.catalog_complete(django_apps, None)
    assert PriceTier.objects.count() == 2
