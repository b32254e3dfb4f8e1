"""The configuration file (docs/design.md#the-configuration-file) and its commands
(docs/design.md#management-commands), and the default catalog."""

import copy
import importlib
import io
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import ModelPrice, Plan, Subscription
from billing.selectors import price_in_force
from config.apply import config_apply
from config.export import config_dumps, config_export
from config.schema import ConfigInvalid, config_parse, config_validate, config_warnings
from tenants.keys import key_hash
from tenants.models import ApiKey, CatalogModel, Deployment, Tenant
from tenants.selectors import api_key_for_secret
from tenants.services import api_key_create, api_key_revoke

from .conftest import make_tenant

ROOT = Path(__file__).resolve().parent.parent
SEED_EXAMPLE = Path(__file__).resolve().parent / "data" / "seed_example.json"
EXAMPLE_FILE = ROOT / "examples" / "tenants.json"

# The first example the file's format was specified with, verbatim: it must stay importable.
DESIGN_EXAMPLE = """
{
  "models": {
    "gpt-4":         {"provider": "openai",    "upstream": "gpt-4",
                      "input_per_1m": "30.00", "output_per_1m": "60.00", "region": "us"},
    "claude-3-opus": {"provider": "anthropic", "upstream": "claude-3-opus-20240229",
                      "input_per_1m": "15.00", "output_per_1m": "75.00"},
    "gpt-4o-eu":     {"provider": "azure",     "upstream": "gpt4o-eu-deployment",
                      "input_per_1m": "2.50",  "output_per_1m": "10.00", "region": "eu"}
  },
  "tenants": {
    "tenant_a": {
      "api_key": "ta_xxx",
      "providers": ["openai", "anthropic"],
      "rate_limit": {"requests_per_minute": 100, "tokens_per_minute": 200000, "max_concurrent": 20},
      "models": ["gpt-4", "claude-3-opus"],
      "billing_plan": "enterprise",
      "monthly_budget": "500.00",
      "region": "us"
    }
  }
}
"""

# Every key the format knows, so that an export can give back exactly this (minus keys).
COMPLETE = {
    "models": {
        "gpt-4o-eu": {
            "provider": "azure",
            "kind": "chat",
            "upstream": "gpt-4o-eu",
            "region": "eu",
            "input_per_1m": "2.75",
            "cached_input_per_1m": "1.375",
            "cache_write_per_1m": None,
            "cache_write_1h_per_1m": None,
            "tiers": [],
            "output_per_1m": "11.00",
            "routing": "priority",
            "fallbacks": [],
            "affinity": None,
        },
        "claude-3.7-custom": {
            "provider": "anthropic",
            "kind": "chat",
            "upstream": "claude-3-7-sonnet-20250219",
            "region": "",
            "input_per_1m": "3.00",
            "cached_input_per_1m": "0.30",
            "cache_write_per_1m": "3.75",
            "cache_write_1h_per_1m": "6.00",
            "tiers": [
                {
                    "above_input_tokens": 1000,
                    "input_per_1m": "4.00",
                    "output_per_1m": "16.00",
                    "cached_input_per_1m": None,
                    "cache_write_per_1m": None,
                    "cache_write_1h_per_1m": None,
                },
                {
                    "above_input_tokens": 200000,
                    "input_per_1m": "6.00",
                    "output_per_1m": "22.50",
                    "cached_input_per_1m": "0.60",
                    "cache_write_per_1m": "7.50",
                    "cache_write_1h_per_1m": "12.00",
                },
            ],
            "output_per_1m": "15.00",
            "routing": "priority",
            "fallbacks": [],
            "affinity": None,
        },
    },
    "plans": {
        "gold": {
            "description": "Gold",
            "currency": "USD",
            "monthly_base_fee": "199.00",
            "included_allowance": "50.00",
            "markup_percent": "12.50",
            "default_monthly_budget": None,
        },
    },
    "tenants": {
        "acme": {
            "name": "Acme Corp",
            "status": "suspended",
            "api_key": {"key": "acme_secret_key_1", "project": "search", "daily_budget": "5.00"},
            "providers": ["anthropic", "azure"],
            "rate_limit": {"requests_per_minute": 10, "tokens_per_minute": None, "max_concurrent": 3},
            "models": ["claude-3.7-custom", "gpt-4o-eu"],
            "billing_plan": "gold",
            "monthly_budget": "75.50",
            "region": "",
            "model_aliases": {"smart": "claude-3.7-custom", "eu.fast": "gpt-4o-eu"},
            "default_params": {"temperature": 0.2, "stop": ["END", "STOP"], "max_tokens": 512, "user": "acme"},
            "max_tokens_cap": 1024,
            "log_requests": True,
            "log_retention_days": 7,
            "response_cache_seconds": 120,
            "projects": {
                "search": {
                    "monthly_budget": "50.00",
                    "rate_limit": {"requests_per_minute": 60, "tokens_per_minute": None, "max_concurrent": 5},
                },
                "chat": {
                    "monthly_budget": None,
                    "rate_limit": {"requests_per_minute": None, "tokens_per_minute": None, "max_concurrent": None},
                },
            },
            "end_user_limits": {"daily_budget": "0.10", "monthly_budget": "1.00", "requests_per_minute": 20},
            "hash_end_user_ids": True,
        },
        "globex": {
            "name": "Globex",
            "status": "active",
            "api_key": "globex_secret_key_1",
            "providers": [],
            "rate_limit": {"requests_per_minute": None, "tokens_per_minute": 50000, "max_concurrent": None},
            "models": [],
            "billing_plan": "gold",
            "monthly_budget": None,
            "region": "eu",
            "model_aliases": {},
            "default_params": {},
            "max_tokens_cap": None,
            "log_requests": False,
            "log_retention_days": 30,
            "response_cache_seconds": None,
            "projects": {},
            "end_user_limits": {},
            "hash_end_user_ids": False,
        },
    },
    "policy": {
        "blocked_models": ["claude-3.7-custom"],
        "blocked_providers": [],
        "killed_providers": ["azure"],
        "max_tokens_cap": 8192,
        "maintenance_message": "",
    },
}

TABLES = (Tenant, ApiKey, Plan, Subscription, CatalogModel, Deployment, ModelPrice)


def load(path: Path):
    return config_parse(text=path.read_text(encoding="utf-8"))


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in TABLES}


def errors_of(document) -> set[str]:
    with pytest.raises(ConfigInvalid) as caught:
        config_apply(document=document)
    return {str(error) for error in caught.value.errors}


def tenant_doc(**fields):
    """A minimal valid tenant entry, with overrides."""
    return {"billing_plan": "starter", **fields}


# --- the default catalog (billing/migrations/0002_default_catalog.py) ---


def test_the_migrated_database_has_the_default_catalog_with_prices(db):
    gpt4o = CatalogModel.objects.get(name="gpt-4o")
    assert gpt4o.provider == "openai"
    assert [(d.provider, d.upstream, d.region) for d in gpt4o.deployments.all()] == [("openai", "gpt-4o", "")]
    price = price_in_force(model_id=gpt4o.id, at=timezone.now())
    assert price.effective_from == datetime(2025, 1, 1, tzinfo=UTC)
    assert (price.input_per_1m, price.cached_input_per_1m, price.output_per_1m) == (
        Decimal("2.50"),
        Decimal("1.25"),
        Decimal("10.00"),
    )

    opus = CatalogModel.objects.get(name="claude-3-opus")
    assert opus.deployments.get().upstream == "claude-3-opus-20240229"
    opus_price = opus.prices.get()
    # Anthropic: cache reads 0.1x, cache writes 1.25x the input price.
    assert (opus_price.cached_input_per_1m, opus_price.cache_write_per_1m) == (Decimal("1.50"), Decimal("18.75"))
    assert CatalogModel.objects.get(name="azure-gpt-4o").deployments.get().provider == "azure"
    for name in ("gpt-5", "gpt-4.1-nano", "o4-mini", "gpt-4", "gpt-3.5-turbo", "claude-sonnet-4-5", "claude-haiku-4-5"):
        assert CatalogModel.objects.get(name=name).prices.exists(), name


def test_the_catalog_migration_is_idempotent_and_its_reverse_deletes_only_its_own_rows(db):
    migration = importlib.import_module("billing.migrations.0002_default_catalog")
    before = row_counts()
    migration.catalog_create(django_apps, None)
    assert row_counts() == before

    own = CatalogModel.objects.create(name="in-house", provider="openai")
    gpt4o = CatalogModel.objects.get(name="gpt-4o")
    ModelPrice.objects.create(
        model=gpt4o, effective_from=timezone.now(), input_per_1m=Decimal("3"), output_per_1m=Decimal("12")
    )
    migration.catalog_delete(django_apps, None)

    assert CatalogModel.objects.filter(pk=own.pk).exists()
    assert list(CatalogModel.objects.filter(name="gpt-4o")) == [gpt4o]  # kept: a later price hangs on it
    assert gpt4o.prices.count() == 1
    assert not gpt4o.deployments.exists()
    assert not CatalogModel.objects.filter(name="claude-3-opus").exists()


# --- importing the documented examples ---


def test_the_seed_example_imports_as_is(db):
    changes = config_apply(document=load(SEED_EXAMPLE))

    assert "create tenant tenant_a" in changes
    assert "create plan starter (not defined in the file: zero fees)" in changes
    tenant_a = Tenant.objects.get(slug="tenant_a")
    assert tenant_a.allowed_providers == ["anthropic", "openai"]
    assert tenant_a.requests_per_minute == 100
    assert tenant_a.tokens_per_minute is None
    assert {m.name for m in tenant_a.allowed_models.all()} == {"gpt-4", "claude-3-opus"}
    assert tenant_a.subscription.plan.name == "enterprise"
    assert tenant_a.subscription.plan.monthly_base_fee == 0
    tenant_b = Tenant.objects.get(slug="tenant_b")
    assert [m.name for m in tenant_b.allowed_models.all()] == ["gpt-3.5-turbo"]
    assert api_key_for_secret(raw_key="ta_xxx").tenant == tenant_a
    assert api_key_for_secret(raw_key="tb_xxx").tenant == tenant_b


def test_the_design_example_imports_as_is(db):
    document = config_parse(text=DESIGN_EXAMPLE)
    changes = config_apply(document=document)

    eu = CatalogModel.objects.get(name="gpt-4o-eu")
    assert [(d.provider, d.upstream, d.region) for d in eu.deployments.all()] == [
        ("azure", "gpt4o-eu-deployment", "eu")
    ]
    assert eu.prices.get().input_per_1m == Decimal("2.50")
    # The file's entry describes the primary deployment: gpt-4 is now pinned to "us".
    assert CatalogModel.objects.get(name="gpt-4").deployments.get().region == "us"
    assert "update model gpt-4 deployment: openai:gpt-4 @any → openai:gpt-4 @us" in changes
    # Same prices as the catalog: no new price rows for gpt-4 and claude-3-opus.
    assert CatalogModel.objects.get(name="gpt-4").prices.count() == 1
    assert CatalogModel.objects.get(name="claude-3-opus").prices.count() == 1

    tenant = Tenant.objects.get(slug="tenant_a")
    assert (tenant.requests_per_minute, tenant.tokens_per_minute, tenant.max_concurrent) == (100, 200000, 20)
    assert tenant.region == "us"
    assert tenant.subscription.monthly_budget == Decimal("500.00")
    # Allowed, but said: claude-3-opus has no deployment in "us", so this tenant cannot reach it.
    assert [str(w) for w in config_warnings(document=document)] == [
        'tenants.tenant_a.models[1]: model "claude-3-opus" has no deployment in region us; this tenant cannot use it'
    ]


def test_the_example_file_imports_with_four_tenants_and_no_warnings(db):
    document = load(EXAMPLE_FILE)
    assert config_validate(document=document) == []
    assert config_warnings(document=document) == []
    config_apply(document=document)

    assert set(Tenant.objects.values_list("slug", flat=True)) == {"tenant_a", "tenant_b", "tenant_c", "tenant_d"}
    assert set(Plan.objects.values_list("name", flat=True)) == {"enterprise", "business", "starter"}
    assert Plan.objects.get(name="enterprise").monthly_base_fee == Decimal("250.00")
    tenant_d = Tenant.objects.get(slug="tenant_d")
    assert tenant_d.region == "eu"
    for model in tenant_d.allowed_models.all():
        assert model.deployments.filter(region="eu", provider="azure").exists()


# --- keys ---


def test_keys_are_stored_only_as_a_keyed_hash(db):
    config_apply(document=load(SEED_EXAMPLE))

    for raw in ("ta_xxx", "tb_xxx"):
        key = ApiKey.objects.get(key_hash=key_hash(raw, pepper=settings.API_KEY_PEPPER))
        assert key.name == "config"
        for field in ApiKey._meta.concrete_fields:
            assert raw not in str(getattr(key, field.attname)), field.name
    assert "api_key" not in json.dumps(config_export())


def test_a_new_key_in_the_file_replaces_the_previous_config_key(db):
    config_apply(document=load(SEED_EXAMPLE))
    tenant = Tenant.objects.get(slug="tenant_a")
    other = api_key_create(tenant=tenant, name="ci")[1]
    document = load(SEED_EXAMPLE)
    document["tenants"]["tenant_a"]["api_key"] = "ta_rotated"

    changes = config_apply(document=document)

    assert "revoke old config key of tenant_a (…)" in changes  # a short key shows nothing of itself
    assert api_key_for_secret(raw_key="ta_xxx") is None
    assert api_key_for_secret(raw_key="ta_rotated").tenant == tenant
    assert api_key_for_secret(raw_key=other).tenant == tenant  # keys made elsewhere are left alone


def test_a_key_the_tenant_already_has_changes_nothing(db):
    alice = make_tenant("alice")
    api_key_create(tenant=alice, name="default", raw_key="alice_key_123")
    document = {"tenants": {"alice": {"api_key": "alice_key_123"}}}

    assert config_apply(document=document) == []
    assert alice.api_keys.count() == 1


def test_a_key_of_another_tenant_is_refused(db):
    alice = make_tenant("alice")
    api_key_create(tenant=alice, raw_key="shared_key_1")
    document = {"tenants": {"mallory": tenant_doc(api_key="shared_key_1")}}

    assert errors_of(document) == {"tenants.mallory.api_key: belongs to another tenant"}
    assert not Tenant.objects.filter(slug="mallory").exists()


def test_a_revoked_key_cannot_be_brought_back(db):
    alice = make_tenant("alice")
    key, _ = api_key_create(tenant=alice, raw_key="old_key_123")
    api_key_revoke(key=key)

    assert errors_of({"tenants": {"alice": {"api_key": "old_key_123"}}}) == {
        "tenants.alice.api_key: was revoked or has expired and cannot be used again"
    }


def test_one_key_for_two_tenants_in_one_file_is_refused(db):
    document = {"tenants": {"one": tenant_doc(api_key="same_key_1"), "two": tenant_doc(api_key="same_key_1")}}
    assert errors_of(document) == {"tenants.two.api_key: is the same key as tenants.one.api_key"}


def test_errors_never_show_the_key(db):
    document = {"tenants": {"one": tenant_doc(api_key="bad key with spaces")}}
    assert errors_of(document) == {"tenants.one.api_key: is not a usable key (characters, length or checksum)"}


# --- idempotency, dry run, atomicity ---


@pytest.mark.parametrize("source", [SEED_EXAMPLE, EXAMPLE_FILE, None], ids=["seed", "example", "design"])
def test_importing_the_same_file_twice_changes_nothing_the_second_time(db, source):
    document = config_parse(text=DESIGN_EXAMPLE) if source is None else load(source)
    assert config_apply(document=document)
    counts = row_counts()

    assert config_apply(document=document) == []
    assert row_counts() == counts


def test_a_dry_run_lists_the_changes_and_writes_nothing(db):
    document = load(EXAMPLE_FILE)
    counts = row_counts()

    planned = config_apply(document=document, dry_run=True)

    assert row_counts() == counts
    assert not Tenant.objects.exists()
    applied = config_apply(document=document)

    def timeless(changes):
        return [re.sub(r"\d{4}-\d\d-\d\dT[\d:]+Z", "NOW", change) for change in changes]

    assert timeless(planned) == timeless(applied)
    assert "create tenant tenant_d" in planned


def test_one_bad_tenant_among_good_ones_changes_nothing_and_every_error_is_listed(db):
    document = load(EXAMPLE_FILE)
    document["tenants"]["tenant_e"] = {
        "api_key": "te_key_1",
        "providers": ["openai", "google"],
        "rate_limit": {"requests_per_minute": 0, "tokens_per_minute": "many"},
        "models": ["gpt-4o", "no-such-model", "claude-3-opus"],
        "billing_plan": "starter",
        "monthly_budget": "-5.00",
        "status": "paused",
    }
    document["models"]["gpt-4.1"] = {"input_per_1m": "2.1234567"}
    counts = row_counts()

    errors = errors_of(document)

    assert errors == {
        'models["gpt-4.1"].input_per_1m: has more than 6 decimal places',
        "tenants.tenant_e.status: must be one of: active, suspended",
        'tenants.tenant_e.providers[1]: unknown provider "google" (expected one of: anthropic, azure, openai)',
        "tenants.tenant_e.rate_limit.requests_per_minute: must be a positive integer (or null for no limit)",
        "tenants.tenant_e.rate_limit.tokens_per_minute: must be a positive integer (or null for no limit)",
        "tenants.tenant_e.monthly_budget: must not be negative",
        'tenants.tenant_e.models[1]: unknown model "no-such-model" (neither in the file\'s models nor in the catalog)',
        'tenants.tenant_e.models[2]: model "claude-3-opus" is served by anthropic, not among the tenant\'s providers',
    }
    assert row_counts() == counts


def test_unknown_keys_are_refused_at_every_level(db):
    document = {
        "version": 1,
        "models": {"gpt-4o": {"input_per_1m": "2.50", "discount": "0.1"}},
        "plans": {"gold": {"fee": "1.00"}},
        "tenants": {"acme": tenant_doc(apikey="x_1", rate_limit={"rpm": 5})},
    }
    assert errors_of(document) == {
        "version: unknown key (expected one of: models, plans, tenants, policy)",
        "models.gpt-4o.discount: unknown key (expected one of: provider, kind, upstream, region, input_per_1m, "
        "output_per_1m, cached_input_per_1m, cache_write_per_1m, cache_write_1h_per_1m, tiers, routing, fallbacks, "
        "affinity, deployments)",
        "plans.gold.fee: unknown key (expected one of: description, currency, monthly_base_fee, "
        "included_allowance, default_monthly_budget, markup_percent)",
        "tenants.acme.apikey: unknown key (expected one of: name, status, api_key, providers, rate_limit, models, "
        "billing_plan, monthly_budget, region, model_aliases, default_params, max_tokens_cap, log_requests, "
        "log_retention_days, response_cache_seconds, projects, end_user_limits, hash_end_user_ids)",
        "tenants.acme.rate_limit.rpm: unknown key (expected one of: requests_per_minute, tokens_per_minute, "
        "max_concurrent)",
    }


def test_money_given_as_a_json_number_is_refused(db):
    text = """{"models": {"gpt-4o": {"input_per_1m": 2.5}},
               "plans": {"gold": {"monthly_base_fee": 100}},
               "tenants": {"acme": {"billing_plan": "gold", "monthly_budget": 500.0}}}"""
    number = 'must be a decimal string such as "2.50", not a JSON number (money never goes through floats)'
    assert errors_of(config_parse(text=text)) == {
        f"models.gpt-4o.input_per_1m: {number}",
        f"plans.gold.monthly_base_fee: {number}",
        f"tenants.acme.monthly_budget: {number}",
    }


def test_a_new_tenant_needs_a_plan_and_a_new_model_needs_a_price(db):
    document = {"models": {"mine": {"provider": "openai", "upstream": "x"}}, "tenants": {"acme": {}}}
    assert errors_of(document) == {
        'models.mine: a new model needs "input_per_1m"',
        'models.mine: a new model needs "output_per_1m"',
        'tenants.acme: a new tenant needs "billing_plan"',
    }


def test_text_that_is_not_json_is_refused_with_a_hint_for_pasted_web_pages(db):
    with pytest.raises(ConfigInvalid) as caught:
        config_parse(text='{\n\u00a0\u00a0"tenants": {}\n}')
    assert "U+00A0" in str(caught.value.errors[0])
    with pytest.raises(ConfigInvalid) as caught:
        config_parse(text='{"tenants": {}, "tenants": {}}')
    assert str(caught.value.errors[0]) == '$: not valid JSON: duplicate key "tenants"'


# --- prices, plans, tenant fields ---


def test_a_changed_price_adds_a_row_effective_now_and_keeps_history(db):
    gpt4o = CatalogModel.objects.get(name="gpt-4o")
    old = gpt4o.prices.get()
    started = timezone.now()

    changes = config_apply(document={"models": {"gpt-4o": {"input_per_1m": "3.00", "output_per_1m": "10.00"}}})

    assert len(changes) == 1
    assert changes[0].startswith("set price gpt-4o from ")
    assert gpt4o.prices.count() == 2
    assert ModelPrice.objects.get(pk=old.pk).input_per_1m == Decimal("2.50")  # history untouched
    new = price_in_force(model_id=gpt4o.id, at=timezone.now())
    assert new.effective_from >= started
    # Left out of the file: the cached price in force is kept.
    assert (new.input_per_1m, new.cached_input_per_1m, new.output_per_1m) == (
        Decimal("3.00"),
        Decimal("1.25"),
        Decimal("10.00"),
    )
    assert config_apply(document={"models": {"gpt-4o": {"input_per_1m": "3"}}}) == []  # same price


def test_null_removes_a_cache_discount(db):
    config_apply(document={"models": {"gpt-4o": {"cached_input_per_1m": None}}})
    gpt4o = CatalogModel.objects.get(name="gpt-4o")
    assert price_in_force(model_id=gpt4o.id, at=timezone.now()).cached_input_per_1m is None


def test_plans_are_created_and_updated_and_tenants_move_between_them(db):
    config_apply(document=load(SEED_EXAMPLE))
    document = {
        "plans": {"starter": {"monthly_base_fee": "25.00", "default_monthly_budget": "150.00"}},
        "tenants": {"tenant_b": {"billing_plan": "enterprise", "monthly_budget": "80.00", "status": "suspended"}},
    }

    changes = config_apply(document=document)

    assert changes == [
        "update plan starter.monthly_base_fee: 0.00 → 25.00",
        "update plan starter.default_monthly_budget: null → 150.00",
        "update tenant_b.status: active → suspended",
        "update tenant_b.billing_plan: starter → enterprise",
        "update tenant_b.monthly_budget: null → 80.00",
    ]
    tenant_b = Tenant.objects.get(slug="tenant_b")
    assert not tenant_b.is_active
    assert tenant_b.subscription.effective_budget == Decimal("80.00")
    # Left out of the file: kept.
    assert tenant_b.requests_per_minute == 50
    assert [m.name for m in tenant_b.allowed_models.all()] == ["gpt-3.5-turbo"]


def test_changed_models_are_listed_as_added_and_removed(db):
    config_apply(document=load(SEED_EXAMPLE))
    document = {"tenants": {"tenant_b": {"models": ["gpt-4", "gpt-4o-mini"]}}}
    assert config_apply(document=document) == ["update tenant_b.models: +gpt-4 +gpt-4o-mini -gpt-3.5-turbo"]


def test_an_empty_model_list_means_every_model(db):
    config_apply(document=load(SEED_EXAMPLE))
    config_apply(document={"tenants": {"tenant_b": {"models": []}}})
    assert not Tenant.objects.get(slug="tenant_b").allowed_models.exists()


def test_dropping_a_provider_that_listed_models_still_need_is_refused(db):
    config_apply(document=load(SEED_EXAMPLE))
    assert errors_of({"tenants": {"tenant_a": {"providers": ["openai"]}}}) == {
        'tenants.tenant_a.providers: model "claude-3-opus" is served by anthropic, not among the tenant\'s providers'
    }


# --- export ---


def test_export_then_import_gives_back_the_same_document_without_keys(db):
    config_apply(document=copy.deepcopy(COMPLETE))

    exported = config_export()

    expected_tenants = {
        slug: {key: value for key, value in entry.items() if key != "api_key"}
        for slug, entry in COMPLETE["tenants"].items()
    }
    assert exported["tenants"] == expected_tenants
    assert exported["plans"] == COMPLETE["plans"]
    assert exported["policy"] == COMPLETE["policy"]
    for name, entry in COMPLETE["models"].items():
        assert exported["models"][name] == entry
    assert exported["models"]["gpt-4o"]["input_per_1m"] == "2.50"  # the default catalog is in it too
    assert config_apply(document=exported) == []
    assert config_export() == exported


def test_export_is_sorted_and_stable(db):
    config_apply(document=load(EXAMPLE_FILE))
    text = config_dumps(document=config_export())
    assert text == config_dumps(document=config_export())
    assert list(json.loads(text)["tenants"]) == ["tenant_a", "tenant_b", "tenant_c", "tenant_d"]
    assert json.loads(text)["tenants"]["tenant_a"]["providers"] == ["anthropic", "openai"]


# --- the commands ---


def test_import_command_prints_the_changes(db):
    out = io.StringIO()
    call_command("import_tenants", str(SEED_EXAMPLE), stdout=out)
    assert "create tenant tenant_a" in out.getvalue().splitlines()
    assert out.getvalue().splitlines()[-1] == "14 change(s)"

    out = io.StringIO()
    call_command("import_tenants", str(SEED_EXAMPLE), stdout=out)
    assert out.getvalue() == "no changes\n"


def test_import_command_dry_run_writes_nothing(db):
    out = io.StringIO()
    call_command("import_tenants", str(EXAMPLE_FILE), "--dry-run", stdout=out)
    assert out.getvalue().splitlines()[-1].startswith("dry run, nothing written: ")
    assert not Tenant.objects.exists()


def test_import_command_refuses_an_invalid_file_listing_every_error(db, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"tenants": {"a": {"status": "x"}, "b": {"billing_plan": 1}}, "extra": True}))
    err = io.StringIO()

    with pytest.raises(CommandError, match="4 error"):
        call_command("import_tenants", str(path), stdout=io.StringIO(), stderr=err)

    assert err.getvalue().splitlines() == [
        "extra: unknown key (expected one of: models, plans, tenants, policy)",
        "tenants.a.status: must be one of: active, suspended",
        "tenants.b.billing_plan: must be a string",
        'tenants.a: a new tenant needs "billing_plan"',
    ]
    assert not Tenant.objects.exists()


def test_import_command_refuses_a_missing_file(db, tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_tenants", str(tmp_path / "nope.json"))


def test_export_command_writes_to_a_file_or_stdout(db, tmp_path):
    config_apply(document=load(SEED_EXAMPLE))
    out = io.StringIO()
    call_command("export_tenants", stdout=out)
    assert json.loads(out.getvalue()) == config_export()

    path = tmp_path / "export.json"
    call_command("export_tenants", str(path), stdout=io.StringIO(), stderr=io.StringIO())
    assert path.read_text() == out.getvalue()
    assert path.read_text().startswith('{\n  "models": {')
