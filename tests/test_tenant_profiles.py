"""Tenant configuration profiles: what `tenants.profiles` accepts, and the admin's tenant page,
which validates with it (the configuration file does too: test_tenant_config_profiles.py).
"""

import math
from decimal import Decimal

import pytest
from django.urls import reverse

from tenants.models import Tenant
from tenants.profiles import (
    ModelScope,
    default_params_clean,
    model_aliases_clean,
    policy_problems,
    profile_problems,
)

from .conftest import make_tenant
from .test_admin import form_data

SCOPE = ModelScope(
    catalog={"gpt-4o": "openai", "gpt-4o-mini": "openai", "claude-x": "anthropic", "old-model": "openai"},
    active={"gpt-4o", "gpt-4o-mini", "claude-x"},
)


def messages(problems) -> dict[tuple, str]:
    return {p.path: p.message for p in problems}


# --- default parameters ------------------------------------------------------------------------


def test_the_whitelisted_default_parameters_are_accepted_and_stored_as_json_values():
    params, problems = default_params_clean(
        {
            "temperature": Decimal("0.2"),  # what the config file's parser gives for 0.2
            "top_p": 1,
            "max_tokens": 512,
            "presence_penalty": -1.5,
            "frequency_penalty": 2,
            "stop": ["END", "###"],
            "seed": 42,
            "user": "acme-backend",
        }
    )
    assert problems == []
    assert params["temperature"] == 0.2
    assert isinstance(params["temperature"], float)
    assert params["stop"] == ["END", "###"]
    assert params["max_tokens"] == 512
    assert isinstance(params["max_tokens"], int)


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({"tools": []}, ("default_params", "tools"), "is not a parameter a profile may set"),
        ({"stream": True}, ("default_params", "stream"), "is not a parameter a profile may set"),
        ({"model": "gpt-4o"}, ("default_params", "model"), "is not a parameter a profile may set"),
        ({"temperature": 2.5}, ("default_params", "temperature"), "from 0 to 2"),
        ({"temperature": True}, ("default_params", "temperature"), "from 0 to 2"),
        ({"temperature": "0.2"}, ("default_params", "temperature"), "from 0 to 2"),
        ({"temperature": math.nan}, ("default_params", "temperature"), "from 0 to 2"),
        ({"top_p": 1.01}, ("default_params", "top_p"), "from 0 to 1"),
        ({"presence_penalty": -3}, ("default_params", "presence_penalty"), "from -2 to 2"),
        ({"max_tokens": 0}, ("default_params", "max_tokens"), "positive whole number"),
        ({"max_tokens": 10.5}, ("default_params", "max_tokens"), "positive whole number"),
        ({"seed": "7"}, ("default_params", "seed"), "whole number"),
        ({"stop": ["a", "b", "c", "d", "e"]}, ("default_params", "stop"), "1 to 4 strings"),
        ({"stop": [""]}, ("default_params", "stop"), "non-empty string"),
        ({"stop": 5}, ("default_params", "stop"), "a string or a list"),
        ({"user": ""}, ("default_params", "user"), "non-empty string"),
    ],
)
def test_a_default_parameter_outside_the_whitelist_or_of_the_wrong_type_is_refused(params, path, fragment):
    cleaned, problems = default_params_clean(params)
    assert list(messages(problems)) == [path]
    assert fragment in problems[0].message
    assert cleaned == {}


def test_default_params_must_be_an_object_and_max_tokens_stay_under_the_cap():
    assert messages(default_params_clean([1, 2])[1]) == {
        ("default_params",): "must be an object of parameter names to values"
    }
    assert messages(default_params_clean({"max_tokens": 2000}, max_tokens_cap=1000)[1]) == {
        ("default_params", "max_tokens"): "is above the tenant's max_tokens_cap (1000)"
    }


# --- aliases -----------------------------------------------------------------------------------


def test_an_alias_names_a_catalog_model_the_tenant_may_use():
    aliases, problems = model_aliases_clean({"fast": "gpt-4o-mini", "smart.v2": "claude-x"}, scope=SCOPE)
    assert problems == []
    assert aliases == {"fast": "gpt-4o-mini", "smart.v2": "claude-x"}


def test_alias_problems_each_say_what_is_wrong():
    scope = ModelScope(catalog=SCOPE.catalog, active=SCOPE.active, models={"gpt-4o", "claude-x"}, providers={"openai"})
    _, problems = model_aliases_clean(
        {
            "gpt-4o": "gpt-4o-mini",  # shadows a catalog name
            "a": "nope",  # unknown
            "b": "old-model",  # inactive
            "c": "gpt-4o-mini",  # not among the tenant's models
            "d": "claude-x",  # provider excluded
            "e": "a",  # another alias
            "bad name": "gpt-4o",
            "f": 5,
            "ok": "gpt-4o",
        },
        scope=scope,
    )
    assert messages(problems) == {
        ("model_aliases", "gpt-4o"): "is the name of a catalog model and would shadow it",
        ("model_aliases", "a"): 'unknown model "nope"',
        ("model_aliases", "b"): 'model "old-model" is not active in the catalog',
        ("model_aliases", "c"): 'model "gpt-4o-mini" is not among the tenant\'s models',
        ("model_aliases", "d"): 'model "claude-x" is served by anthropic, not among the tenant\'s providers',
        ("model_aliases", "e"): '"a" is another alias; an alias must name a catalog model',
        ("model_aliases", "bad name"): (
            "is not a usable alias (letters, digits, '.', '_', ':', '/', '-'; at most 100)"
        ),
        ("model_aliases", "f"): "must name a catalog model (a string)",
    }


def test_profile_problems_checks_the_cap_and_retention():
    _, problems = profile_problems(scope=SCOPE, max_tokens_cap=0, log_retention_days=0)
    assert set(messages(problems)) == {("max_tokens_cap",), ("log_retention_days",)}
    _, problems = profile_problems(scope=SCOPE, max_tokens_cap=None, log_retention_days=3651)
    assert set(messages(problems)) == {("log_retention_days",)}
    values, problems = profile_problems(scope=SCOPE, model_aliases=None, default_params=None, log_retention_days=30)
    assert problems == []
    assert values == {"model_aliases": {}, "default_params": {}}


def test_policy_names_must_exist():
    problems = policy_problems(
        catalog={"gpt-4o"},
        blocked_models=["gpt-4o", "nope", "gpt-4o"],
        blocked_providers=["google"],
        killed_providers=["azure"],
        max_tokens_cap=-1,
        maintenance_message="x" * 301,
    )
    assert messages(problems) == {
        ("blocked_models", 1): 'unknown model "nope"',
        ("blocked_models", 2): '"gpt-4o" is listed twice',
        ("blocked_providers", 0): 'unknown provider "google" (expected one of: anthropic, azure, openai)',
        ("max_tokens_cap",): "must be a whole number from 1 to 2147483647 (or null for none)",
        ("maintenance_message",): "must be at most 300 characters",
    }


# --- the admin's tenant page -------------------------------------------------------------------


@pytest.fixture
def alice(catalog):
    tenant = make_tenant("alice", allowed_providers=["openai", "anthropic"])
    tenant.allowed_models.set([catalog["gpt"], catalog["claude"]])
    return tenant


def tenant_page(admin_client, tenant, **changes):
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = form_data(admin_client.get(url))
    data.update({key: value if isinstance(value, list) else [value] for key, value in changes.items()})
    return admin_client.post(url, data)


def test_the_tenant_page_saves_a_valid_profile(admin_client, alice):
    response = tenant_page(
        admin_client,
        alice,
        model_aliases='{"fast": "gpt-test"}',
        default_params='{"temperature": 0.3, "stop": "END", "max_tokens": 100}',
        max_tokens_cap="1000",
        log_requests="on",
        log_retention_days="14",
        region="eu",
    )
    assert response.status_code == 302, response.context and response.context["errors"]
    alice.refresh_from_db()
    assert alice.model_aliases == {"fast": "gpt-test"}
    assert alice.default_params == {"temperature": 0.3, "stop": "END", "max_tokens": 100}
    assert (alice.max_tokens_cap, alice.log_requests, alice.log_retention_days, alice.region) == (1000, True, 14, "eu")


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"model_aliases": '{"fast": "azure-gpt-test"}'}, "model_aliases", "not among the tenant"),
        ({"model_aliases": '{"gpt-test": "claude-test"}'}, "model_aliases", "would shadow it"),
        ({"model_aliases": '["fast"]'}, "model_aliases", "must be an object"),
        ({"default_params": '{"logit_bias": {}}'}, "default_params", "is not a parameter a profile may set"),
        ({"default_params": '{"temperature": "hot"}'}, "default_params", "temperature: must be a number"),
        (
            {"default_params": '{"max_tokens": 900}', "max_tokens_cap": "500"},
            "default_params",
            "above the tenant's max_tokens_cap",
        ),
        ({"log_retention_days": "0"}, "log_retention_days", "from 1 to 3650"),
        ({"max_tokens_cap": "0"}, "max_tokens_cap", "from 1 to"),
        # Removing the model an alias points at, on the same form, is caught too.
        (
            {"model_aliases": '{"fast": "claude-test"}', "allowed_providers": ["openai"]},
            "model_aliases",
            "served by anthropic",
        ),
    ],
)
def test_the_tenant_page_refuses_an_invalid_profile_and_saves_nothing(admin_client, alice, changes, field, fragment):
    before = Tenant.objects.values().get(pk=alice.pk)
    response = tenant_page(admin_client, alice, **changes)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert any(fragment in message for message in errors[field]), errors[field]
    after = Tenant.objects.values().get(pk=alice.pk)
    assert after == before


def test_an_emptied_json_field_is_stored_as_an_empty_object(admin_client, alice):
    Tenant.objects.filter(pk=alice.pk).update(default_params={"seed": 1})
    response = tenant_page(admin_client, alice, default_params="")
    assert response.status_code == 302, response.context and response.context["errors"]
    alice.refresh_from_db()
    assert alice.default_params == {}


def test_an_alias_broken_by_a_catalog_edit_does_not_block_unrelated_edits(admin_client, alice, catalog):
    Tenant.objects.filter(pk=alice.pk).update(model_aliases={"fast": "gpt-test"})
    Tenant.objects.get(pk=alice.pk).allowed_models.remove(catalog["gpt"])  # e.g. by a bulk edit elsewhere

    assert tenant_page(admin_client, alice, requests_per_minute="60").status_code == 302
    assert Tenant.objects.get(pk=alice.pk).requests_per_minute == 60

    refused = tenant_page(admin_client, alice, model_aliases='{"fast": "gpt-test", "smart": "claude-test"}')
    assert refused.status_code == 200
    assert "model_aliases" in refused.context["adminform"].form.errors


def test_the_cap_is_checked_against_the_default_even_when_retention_is_wrong():
    _, problems = profile_problems(
        scope=None, default_params={"max_tokens": 50}, max_tokens_cap=10, log_retention_days=0
    )
    assert set(messages(problems)) == {("log_retention_days",), ("default_params", "max_tokens")}
