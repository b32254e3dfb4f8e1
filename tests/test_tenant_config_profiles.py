"""The configuration file's profile keys (model_aliases, default_params, max_tokens_cap,
log_requests, log_retention_days, response_cache_seconds) and its `policy` section: import, errors, export, round trip.
"""

import copy
import json
from decimal import Decimal

import pytest

from config.apply import config_apply
from config.export import config_dumps, config_export
from config.schema import ConfigInvalid, config_parse, config_validate
from tenants.models import ApiKey, CatalogModel, PlatformPolicy, Tenant

from .conftest import make_tenant
from .test_tenant_config import row_counts


def errors_of(document) -> set[str]:
    with pytest.raises(ConfigInvalid) as caught:
        config_apply(document=document)
    return {str(error) for error in caught.value.errors}


def tenant(**fields):
    return {"billing_plan": "starter", "providers": ["openai", "anthropic"], **fields}


def state(slug: str) -> dict:
    return Tenant.objects.values(
        "model_aliases",
        "default_params",
        "max_tokens_cap",
        "log_requests",
        "log_retention_days",
        "response_cache_seconds",
    ).get(slug=slug)


# --- each key ----------------------------------------------------------------------------------


def test_each_profile_key_is_imported_and_listed_as_a_change(db):
    document = {
        "tenants": {
            "acme": tenant(
                models=["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"],
                model_aliases={"fast": "gpt-4o-mini", "smart": "gpt-4o"},
                default_params={"temperature": 0.2, "stop": ["END"]},
                max_tokens_cap=2048,
                log_requests=True,
                log_retention_days=7,
                response_cache_seconds=300,
            )
        }
    }

    changes = config_apply(document=document)

    assert 'set acme.model_aliases: {} → {"fast": "gpt-4o-mini", "smart": "gpt-4o"}' in changes
    assert 'set acme.default_params: {} → {"stop": ["END"], "temperature": 0.2}' in changes
    assert "set acme.max_tokens_cap: null → 2048" in changes
    assert "set acme.log_requests: false → true" in changes
    assert "set acme.log_retention_days: 30 → 7" in changes
    assert "set acme.response_cache_seconds: null → 300" in changes
    assert state("acme") == {
        "model_aliases": {"fast": "gpt-4o-mini", "smart": "gpt-4o"},
        "default_params": {"temperature": 0.2, "stop": ["END"]},
        "max_tokens_cap": 2048,
        "log_requests": True,
        "log_retention_days": 7,
        "response_cache_seconds": 300,
    }
    assert config_apply(document=document) == []


def test_profile_keys_left_out_are_kept(db):
    config_apply(document={"tenants": {"acme": tenant(max_tokens_cap=100, log_requests=True)}})
    config_apply(document={"tenants": {"acme": {"log_retention_days": 90}}})
    assert state("acme")["max_tokens_cap"] == 100
    assert state("acme")["log_requests"] is True
    assert state("acme")["log_retention_days"] == 90


def test_null_clears_the_cap(db):
    config_apply(document={"tenants": {"acme": tenant(max_tokens_cap=100)}})
    assert config_apply(document={"tenants": {"acme": {"max_tokens_cap": None}}}) == [
        "update acme.max_tokens_cap: 100 → null"
    ]
    assert state("acme")["max_tokens_cap"] is None


def test_floats_from_json_text_become_plain_numbers(db):
    text = '{"tenants": {"acme": {"billing_plan": "starter", "default_params": {"temperature": 0.7, "top_p": 1}}}}'
    config_apply(document=config_parse(text=text))
    assert state("acme")["default_params"] == {"temperature": 0.7, "top_p": 1}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"default_params": {"logit_bias": {"1": 2}}},
            "tenants.acme.default_params.logit_bias: is not a parameter a profile may set (allowed: temperature, "
            "top_p, max_tokens, presence_penalty, frequency_penalty, stop, seed, user)",
        ),
        (
            {"default_params": {"temperature": 3}},
            "tenants.acme.default_params.temperature: must be a number from 0 to 2",
        ),
        ({"default_params": []}, "tenants.acme.default_params: must be an object of parameter names to values"),
        (
            {"default_params": {"max_tokens": 500}, "max_tokens_cap": 100},
            "tenants.acme.default_params.max_tokens: is above the tenant's max_tokens_cap (100)",
        ),
        (
            {"model_aliases": {"fast": "no-such-model"}},
            'tenants.acme.model_aliases.fast: unknown model "no-such-model"',
        ),
        (
            {"model_aliases": {"gpt-4o": "gpt-4o-mini"}},
            "tenants.acme.model_aliases.gpt-4o: is the name of a catalog model and would shadow it",
        ),
        (
            {"model_aliases": {"eu": "azure-gpt-4o"}},
            'tenants.acme.model_aliases.eu: model "azure-gpt-4o" is served by azure, not among the tenant\'s providers',
        ),
        (
            {"models": ["gpt-4o"], "model_aliases": {"fast": "gpt-4o-mini"}},
            'tenants.acme.model_aliases.fast: model "gpt-4o-mini" is not among the tenant\'s models',
        ),
        (
            {"max_tokens_cap": 0},
            "tenants.acme.max_tokens_cap: must be a whole number from 1 to 2147483647 (or null for none)",
        ),
        ({"log_requests": "yes"}, "tenants.acme.log_requests: must be true or false"),
        ({"log_retention_days": None}, "tenants.acme.log_retention_days: must be a whole number from 1 to 3650"),
        ({"log_retention_days": 5000}, "tenants.acme.log_retention_days: must be a whole number from 1 to 3650"),
        (
            {"response_cache_seconds": 0},
            "tenants.acme.response_cache_seconds: must be a whole number from 1 to 604800 (or null for none)",
        ),
        (
            {"response_cache_seconds": "300"},
            "tenants.acme.response_cache_seconds: must be a whole number from 1 to 604800 (or null for none)",
        ),
    ],
)
def test_invalid_profile_values_are_refused_with_their_path(db, fields, expected):
    assert errors_of({"tenants": {"acme": tenant(**fields)}}) == {expected}
    assert not Tenant.objects.filter(slug="acme").exists()


def test_an_alias_may_name_a_model_defined_in_the_same_file(db):
    document = {
        "models": {"in-house": {"provider": "openai", "upstream": "ft:x", "input_per_1m": "1", "output_per_1m": "2"}},
        "tenants": {"acme": tenant(model_aliases={"mine": "in-house"})},
    }
    assert config_validate(document=document) == []
    # ... but never shadow one.
    document["tenants"]["acme"]["model_aliases"] = {"in-house": "gpt-4o"}
    assert errors_of(document) == {
        "tenants.acme.model_aliases.in-house: is the name of a catalog model and would shadow it"
    }


def test_narrowing_the_models_under_an_existing_alias_is_refused(db):
    config_apply(
        document={"tenants": {"acme": tenant(models=["gpt-4o", "gpt-4o-mini"], model_aliases={"f": "gpt-4o-mini"})}}
    )
    assert errors_of({"tenants": {"acme": {"models": ["gpt-4o"]}}}) == {
        'tenants.acme.models: alias "f": model "gpt-4o-mini" is not among the tenant\'s models'
    }
    assert errors_of({"tenants": {"acme": {"providers": ["anthropic"]}}}) == {
        'tenants.acme.providers: model "gpt-4o" is served by openai, not among the tenant\'s providers',
        'tenants.acme.providers: model "gpt-4o-mini" is served by openai, not among the tenant\'s providers',
        'tenants.acme.providers: alias "f": model "gpt-4o-mini" is served by openai, not among the tenant\'s providers',
    }
    # Moving the alias in the same file is fine.
    config_apply(document={"tenants": {"acme": {"models": ["gpt-4o"], "model_aliases": {"f": "gpt-4o"}}}})
    assert state("acme")["model_aliases"] == {"f": "gpt-4o"}


def test_an_alias_broken_before_the_import_does_not_block_it(db):
    config_apply(document={"tenants": {"acme": tenant(models=["gpt-4o", "gpt-4"], model_aliases={"old": "gpt-4"})}})
    CatalogModel.objects.filter(name="gpt-4").update(active=False)
    assert config_apply(document={"tenants": {"acme": {"models": ["gpt-4o", "gpt-4", "gpt-4o-mini"]}}}) == [
        "update acme.models: +gpt-4o-mini"
    ]


def test_a_cap_lowered_under_the_existing_default_max_tokens_is_refused(db):
    config_apply(document={"tenants": {"acme": tenant(default_params={"max_tokens": 800})}})
    assert errors_of({"tenants": {"acme": {"max_tokens_cap": 500}}}) == {
        "tenants.acme.default_params.max_tokens: is above the tenant's max_tokens_cap (500)"
    }


def test_one_bad_tenant_changes_nothing_for_the_good_ones(db):
    make_tenant("existing")
    counts = row_counts()
    document = {
        "tenants": {
            "good": tenant(model_aliases={"fast": "gpt-4o-mini"}, log_requests=True),
            "existing": {"log_retention_days": 3, "default_params": {"seed": 1}},
            "bad": tenant(default_params={"temperature": -1}),
        },
        "policy": {"blocked_providers": ["azure"]},
    }
    assert errors_of(document) == {"tenants.bad.default_params.temperature: must be a number from 0 to 2"}
    assert row_counts() == counts
    assert state("existing")["log_retention_days"] == 30
    assert state("existing")["default_params"] == {}
    assert not PlatformPolicy.objects.exists()


# --- the policy section ------------------------------------------------------------------------


def test_the_policy_section_sets_the_platform_policy(db):
    document = {
        "policy": {
            "blocked_models": ["gpt-4", "gpt-3.5-turbo"],
            "blocked_providers": ["azure"],
            "killed_providers": ["anthropic"],
            "max_tokens_cap": 8192,
            "maintenance_message": "Back at 10:00 UTC",
        }
    }
    changes = config_apply(document=document)
    assert changes == [
        "update policy.blocked_models: [] → [gpt-3.5-turbo, gpt-4]",
        "update policy.blocked_providers: [] → [azure]",
        "update policy.killed_providers: [] → [anthropic]",
        "update policy.max_tokens_cap: null → 8192",
        'update policy.maintenance_message: "" → Back at 10:00 UTC',
    ]
    policy = PlatformPolicy.objects.get()
    assert (policy.pk, policy.blocked_models, policy.blocked_providers, policy.max_tokens_cap) == (
        1,
        ["gpt-3.5-turbo", "gpt-4"],
        ["azure"],
        8192,
    )
    assert config_apply(document=document) == []
    assert config_apply(document={"policy": {"maintenance_message": ""}}) == [
        'update policy.maintenance_message: Back at 10:00 UTC → ""'
    ]
    assert PlatformPolicy.objects.get().blocked_providers == ["azure"]  # left out: kept


def test_policy_errors_are_listed_and_nothing_changes(db):
    document = {
        "policy": {
            "blocked_models": ["gpt-4", "no-such-model"],
            "blocked_providers": ["google"],
            "killed_providers": "openai",
            "max_tokens_cap": 0,
            "maintenance": "x",
        }
    }
    assert errors_of(document) == {
        "policy.maintenance: unknown key (expected one of: blocked_models, blocked_providers, killed_providers, "
        "max_tokens_cap, maintenance_message)",
        'policy.blocked_models[1]: unknown model "no-such-model"',
        'policy.blocked_providers[0]: unknown provider "google" (expected one of: anthropic, azure, openai)',
        "policy.killed_providers: must be a list",
        "policy.max_tokens_cap: must be a whole number from 1 to 2147483647 (or null for none)",
    }
    assert not PlatformPolicy.objects.exists()


def test_a_policy_may_block_a_model_defined_in_the_same_file(db):
    document = {
        "models": {"in-house": {"provider": "openai", "upstream": "ft:x", "input_per_1m": "1", "output_per_1m": "2"}},
        "policy": {"blocked_models": ["in-house"]},
    }
    config_apply(document=document)
    assert PlatformPolicy.objects.get().blocked_models == ["in-house"]


# --- export and the round trip -----------------------------------------------------------------


def test_export_has_every_profile_key_and_the_policy_but_never_a_key(db):
    config_apply(
        document={"tenants": {"acme": tenant(api_key="acme_secret_1", model_aliases={"f": "gpt-4o"}, max_tokens_cap=9)}}
    )
    exported = config_export()
    entry = exported["tenants"]["acme"]
    assert (entry["model_aliases"], entry["default_params"], entry["max_tokens_cap"]) == ({"f": "gpt-4o"}, {}, 9)
    assert (entry["log_requests"], entry["log_retention_days"], entry["response_cache_seconds"]) == (False, 30, None)
    assert "api_key" not in entry
    assert "keys" not in entry
    assert "acme_secret_1" not in json.dumps(exported)
    assert exported["policy"] == {
        "blocked_models": [],
        "blocked_providers": [],
        "killed_providers": [],
        "max_tokens_cap": None,
        "maintenance_message": "",
    }
    assert not PlatformPolicy.objects.exists()  # exporting writes nothing
    assert ApiKey.objects.filter(tenant__slug="acme").count() == 1


def test_the_exported_text_imports_back_to_the_same_document(db):
    document = {
        "models": {"in-house": {"provider": "openai", "upstream": "ft:x", "input_per_1m": "1", "output_per_1m": "2"}},
        "policy": {"blocked_models": ["gpt-4"], "killed_providers": ["azure"], "max_tokens_cap": 4000},
        "tenants": {
            "acme": tenant(
                api_key="acme_secret_1",
                models=["in-house", "gpt-4o-mini"],
                model_aliases={"mine": "in-house", "fast": "gpt-4o-mini"},
                default_params={"temperature": 0.1, "top_p": 0.95, "stop": "END", "seed": 7, "user": "acme"},
                max_tokens_cap=1000,
                log_requests=True,
                log_retention_days=1,
                response_cache_seconds=60,
            ),
            "globex": tenant(),
        },
    }
    config_apply(document=copy.deepcopy(document))
    text = config_dumps(document=config_export())

    reparsed = config_parse(text=text)
    assert config_apply(document=reparsed) == []
    assert config_dumps(document=config_export()) == text
    assert reparsed["tenants"]["acme"]["default_params"] == {
        "seed": 7,
        "stop": "END",
        "temperature": Decimal("0.1"),  # the parser's; stored as the float 0.1
        "top_p": Decimal("0.95"),
        "user": "acme",
    }
    for key in ("model_aliases", "max_tokens_cap", "log_requests", "log_retention_days"):
        assert reparsed["tenants"]["acme"][key] == document["tenants"]["acme"][key], key
    assert reparsed["policy"]["blocked_models"] == ["gpt-4"]

    # And into an empty installation: the same document again.
    Tenant.objects.all().delete()
    PlatformPolicy.objects.all().delete()
    config_apply(document=config_parse(text=text))
    assert config_dumps(document=config_export()) == text
