"""Several deployments per catalog model, routing, fallbacks and affinity in the configuration file
(issue 13, part 1): import, validation (every error at its path), dry run, export round trip."""

import copy
import io
import json
import re

import pytest
from django.core.management import call_command

from billing.models import ModelPrice
from config.apply import config_apply
from config.export import config_export
from config.schema import ConfigInvalid, config_parse
from tenants.models import CatalogModel, Deployment

pytestmark = pytest.mark.django_db

# The example, with its base_url made concrete.
ROUTED = {
    "provider": "openai",
    "input_per_1m": "2.50",
    "output_per_1m": "10.00",
    "routing": "weighted",
    "deployments": [
        {
            "provider": "openai",
            "upstream": "gpt-4o",
            "region": "us",
            "weight": 1,
            "base_url": "https://openai-account-2.example.com/v1",
            "requests_per_minute": 500,
            "tokens_per_minute": 200000,
            "timeout_seconds": 60,
        },
        {"provider": "azure", "upstream": "gpt4o-prod", "region": "us", "weight": 3},
    ],
    "fallbacks": ["claude-sonnet-4-5"],
}


def routed(**changes) -> dict:
    entry = copy.deepcopy(ROUTED)
    entry.update(changes)
    return {"models": {"gpt-4o-routed": entry}}


def errors_of(document) -> set[str]:
    with pytest.raises(ConfigInvalid) as caught:
        config_apply(document=document)
    return {str(error) for error in caught.value.errors}


def deployments_of(name: str) -> list[tuple]:
    return list(
        Deployment.objects.filter(model__name=name)
        .order_by("priority", "id")
        .values_list(
            "provider",
            "upstream",
            "region",
            "base_url",
            "priority",
            "weight",
            "requests_per_minute",
            "tokens_per_minute",
            "timeout_seconds",
            "active",
        )
    )


def test_a_model_with_two_deployments_is_created_with_its_routing_and_fallbacks():
    changes = config_apply(document=routed())

    model = CatalogModel.objects.get(name="gpt-4o-routed")
    assert (model.provider, model.routing, model.fallbacks, model.affinity) == (
        "openai",
        "weighted",
        ["claude-sonnet-4-5"],
        "",
    )
    assert deployments_of("gpt-4o-routed") == [
        ("openai", "gpt-4o", "us", "https://openai-account-2.example.com/v1", 0, 1, 500, 200000, 60.0, True),
        ("azure", "gpt4o-prod", "us", "", 1, 3, None, None, None, True),
    ]
    assert changes[0] == "create model gpt-4o-routed (openai)"
    assert changes[1] == (
        "create deployment gpt-4o-routed → openai:gpt-4o @us via https://openai-account-2.example.com/v1 "
        "(priority 0, weight 1, requests_per_minute 500, tokens_per_minute 200000, timeout_seconds 60.0)"
    )
    assert changes[2] == "create deployment gpt-4o-routed → azure:gpt4o-prod @us (priority 1, weight 3)"
    assert "set model gpt-4o-routed.routing: weighted" in changes
    assert "set model gpt-4o-routed.fallbacks: [claude-sonnet-4-5]" in changes
    assert ModelPrice.objects.filter(model=model).count() == 1


def test_the_export_writes_the_deployments_back_and_importing_it_changes_nothing():
    config_apply(document=routed(affinity="prefix"))

    exported = config_export()

    assert exported["models"]["gpt-4o-routed"] == {
        "provider": "openai",
        "kind": "chat",
        "routing": "weighted",
        "fallbacks": ["claude-sonnet-4-5"],
        "affinity": "prefix",
        "deployments": [
            {
                "base_url": "https://openai-account-2.example.com/v1",
                "priority": 0,
                "provider": "openai",
                "region": "us",
                "requests_per_minute": 500,
                "timeout_seconds": 60,
                "tokens_per_minute": 200000,
                "upstream": "gpt-4o",
                "weight": 1,
            },
            {
                "base_url": None,
                "priority": 1,
                "provider": "azure",
                "region": "us",
                "requests_per_minute": None,
                "timeout_seconds": None,
                "tokens_per_minute": None,
                "upstream": "gpt4o-prod",
                "weight": 3,
            },
        ],
        "input_per_1m": "2.50",
        "output_per_1m": "10.00",
        "cached_input_per_1m": None,
        "cache_write_per_1m": None,
        "cache_write_1h_per_1m": None,
        "tiers": [],
    }
    # A model of the default catalog keeps its single-deployment keys.
    assert exported["models"]["gpt-4o"]["upstream"] == "gpt-4o"
    assert "deployments" not in exported["models"]["gpt-4o"]
    # Through the text form, as the commands do: floats come back as Decimal and must still match.
    out = io.StringIO()
    call_command("export_tenants", stdout=out)
    assert config_apply(document=config_parse(text=out.getvalue())) == []
    assert config_export() == exported


def test_a_fractional_timeout_and_equal_priorities_survive_the_round_trip():
    document = routed()
    for item in document["models"]["gpt-4o-routed"]["deployments"]:
        item["priority"] = 5
    document["models"]["gpt-4o-routed"]["deployments"][0]["timeout_seconds"] = config_parse(text="12.5")
    config_apply(document=document)
    text = json.dumps(config_export())
    assert config_apply(document=config_parse(text=text)) == []
    assert [d[4] for d in deployments_of("gpt-4o-routed")] == [5, 5]
    assert deployments_of("gpt-4o-routed")[0][8] == 12.5


def test_the_list_replaces_the_models_deployments_deactivating_those_it_leaves_out():
    config_apply(document=routed())
    document = routed()
    entry = document["models"]["gpt-4o-routed"]
    entry["deployments"] = [
        {"provider": "azure", "upstream": "gpt4o-prod", "region": "us", "weight": 2},
        {"provider": "azure", "upstream": "gpt4o-eu", "region": "eu"},
    ]

    changes = config_apply(document=document)

    assert changes == [
        "update deployment gpt-4o-routed → azure:gpt4o-prod @us: priority 1 → 0",
        "update deployment gpt-4o-routed → azure:gpt4o-prod @us: weight 3 → 2",
        "create deployment gpt-4o-routed → azure:gpt4o-eu @eu (priority 1, weight 1)",
        "deactivate deployment gpt-4o-routed → openai:gpt-4o @us via https://openai-account-2.example.com/v1 "
        "(not in the file's list)",
    ]
    rows = deployments_of("gpt-4o-routed")
    assert [(r[0], r[1], r[4], r[5], r[9]) for r in rows] == [
        ("openai", "gpt-4o", 0, 1, False),  # kept, inactive: stored responses may point at it
        ("azure", "gpt4o-prod", 0, 2, True),
        ("azure", "gpt4o-eu", 1, 1, True),
    ]
    # Listing it again brings it back.
    changes = config_apply(document=routed())
    assert any(line.startswith("activate deployment gpt-4o-routed → openai:gpt-4o") for line in changes)
    assert {r[1]: r[9] for r in deployments_of("gpt-4o-routed")} == {
        "gpt-4o": True,
        "gpt4o-prod": True,
        "gpt4o-eu": False,
    }


def test_a_default_catalog_model_gains_deployments_and_routing():
    document = {
        "models": {
            "gpt-4o": {
                "routing": "least_busy",
                "deployments": [
                    {"provider": "openai", "upstream": "gpt-4o"},
                    {"provider": "openai", "upstream": "gpt-4o", "base_url": "http://127.0.0.1:43101/v1"},
                ],
            }
        }
    }
    changes = config_apply(document=document)
    assert changes == [
        "update model gpt-4o.routing: priority → least_busy",
        "create deployment gpt-4o → openai:gpt-4o @any via http://127.0.0.1:43101/v1 (priority 1, weight 1)",
    ]
    assert config_apply(document=document) == []


def test_a_dry_run_lists_the_deployment_changes_and_writes_nothing():
    before = (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count())
    dry = config_apply(document=routed(), dry_run=True)
    assert (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count()) == before
    real = config_apply(document=routed())

    def no_instant(lines):  # the new price's instant is "now", a second apart between the two runs
        return [re.sub(r" from \S+Z:", " from NOW:", line) for line in lines]

    assert no_instant(dry) == no_instant(real)
    assert any(line.startswith("create deployment") for line in dry)


def test_the_import_command_dry_run_prints_the_deployments(tmp_path):
    path = tmp_path / "routed.json"
    path.write_text(json.dumps(routed()), encoding="utf-8")
    out = io.StringIO()
    call_command("import_tenants", str(path), "--dry-run", stdout=out)
    assert "create deployment gpt-4o-routed → azure:gpt4o-prod @us (priority 1, weight 3)" in out.getvalue()
    assert not CatalogModel.objects.filter(name="gpt-4o-routed").exists()


def _deployment(index: int, **changes) -> dict:
    item = copy.deepcopy(ROUTED["deployments"][index])
    item.update(changes)
    return item


P = "models.gpt-4o-routed"


@pytest.mark.parametrize(
    ("entry_changes", "expected"),
    [
        ({"deployments": []}, f"{P}.deployments: must be a non-empty list of deployments"),
        ({"deployments": {"provider": "openai"}}, f"{P}.deployments: must be a non-empty list of deployments"),
        (
            {"deployments": [{"provider": "openai"}]},
            f'{P}.deployments[0]: a deployment needs "upstream"',
        ),
        (
            {"deployments": [_deployment(0), {"provider": "anthropic", "upstream": "claude-sonnet-4-5"}]},
            f"{P}.deployments[1].provider: anthropic does not speak the model's family (openai): "
            "OpenAI and Azure deployments go together, Anthropic ones alone",
        ),
        (
            {"deployments": [_deployment(0, provider="bedrock")]},
            f'{P}.deployments[0].provider: unknown provider "bedrock" (expected one of: anthropic, azure, openai)',
        ),
        ({"deployments": [_deployment(0, weight=0)]}, f"{P}.deployments[0].weight: must be a positive integer"),
        (
            {"deployments": [_deployment(0, priority=-1)]},
            f"{P}.deployments[0].priority: must be a non-negative integer (lower is tried first)",
        ),
        (
            {"deployments": [_deployment(0, requests_per_minute=0)]},
            f"{P}.deployments[0].requests_per_minute: must be a positive integer (or null for no limit)",
        ),
        (
            {"deployments": [_deployment(0, timeout_seconds="60")]},
            f"{P}.deployments[0].timeout_seconds: must be a number of seconds from 0.1 to 3600 "
            "(or null for the default)",
        ),
        (
            {"deployments": [_deployment(0, timeout_seconds=0)]},
            f"{P}.deployments[0].timeout_seconds: must be a number of seconds from 0.1 to 3600 "
            "(or null for the default)",
        ),
        (
            {"deployments": [_deployment(0, base_url="ftp://files.example.com")]},
            f'{P}.deployments[0].base_url: "ftp://files.example.com" is not an http(s) URL',
        ),
        (
            {"deployments": [_deployment(0, zone="us-east")]},
            f"{P}.deployments[0].zone: unknown key (expected one of: provider, upstream, region, base_url, "
            "priority, weight, requests_per_minute, tokens_per_minute, timeout_seconds, breaker_failures, "
            "breaker_window_seconds, breaker_cooldown_seconds)",
        ),
        (
            {"deployments": [_deployment(1), _deployment(1, weight=5)]},
            f"{P}.deployments[1]: the same provider, upstream, region and base_url as an earlier deployment",
        ),
        (
            {"upstream": "gpt-4o"},
            f'{P}.upstream: "deployments" replaces the single-deployment keys: give one or the other',
        ),
        (
            {"routing": "random"},
            f"{P}.routing: must be one of: priority, weighted, least_busy, latency, cost",
        ),
        ({"affinity": "suffix"}, f'{P}.affinity: must be "prefix", or null for none'),
        ({"fallbacks": ["gpt-4o-routed"]}, f"{P}.fallbacks[0]: a model cannot fall back to itself"),
        (
            {"fallbacks": ["claude-sonnet-4-5", "no-such-model"]},
            f'{P}.fallbacks[1]: unknown model "no-such-model" (neither in the file\'s models nor in the catalog)',
        ),
        (
            {"fallbacks": ["claude-sonnet-4-5", "claude-sonnet-4-5"]},
            f'{P}.fallbacks[1]: "claude-sonnet-4-5" is listed twice',
        ),
        (
            {"fallbacks": ["text-embedding-3-small"]},
            f'{P}.fallbacks[0]: "text-embedding-3-small" is a embedding model, this one a chat model',
        ),
        ({"fallbacks": "claude-sonnet-4-5"}, f"{P}.fallbacks: must be a list"),
    ],
)
def test_each_error_names_its_path_and_nothing_is_written(entry_changes, expected):
    before = (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count())
    assert errors_of(routed(**entry_changes)) == {expected}
    assert (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count()) == before


def test_a_new_model_with_deployments_still_needs_a_provider_and_prices():
    document = routed()
    entry = document["models"]["gpt-4o-routed"]
    del entry["provider"], entry["output_per_1m"]
    assert errors_of(document) == {
        f'{P}: a new model needs "provider"',
        f'{P}: a new model needs "output_per_1m"',
    }


def test_an_anthropic_model_takes_only_anthropic_deployments():
    document = {
        "models": {
            "claude-sonnet-4-5": {
                "deployments": [
                    {"provider": "anthropic", "upstream": "claude-sonnet-4-5-20250929"},
                    {"provider": "azure", "upstream": "gpt4o-prod"},
                ]
            }
        }
    }
    assert errors_of(document) == {
        "models.claude-sonnet-4-5.deployments[1].provider: azure does not speak the model's family "
        "(anthropic): OpenAI and Azure deployments go together, Anthropic ones alone"
    }


def test_a_provider_change_must_suit_the_deployments_the_file_keeps():
    config_apply(document=routed())
    document = {"models": {"gpt-4o-routed": {"provider": "anthropic", "upstream": "claude-sonnet-4-5"}}}
    assert errors_of(document) == {
        f"{P}.provider: the model's deployment azure:gpt4o-prod does not speak anthropic's family (OpenAI and "
        'Azure deployments go together, Anthropic ones alone): give the whole "deployments" list'
    }
    # Azure for OpenAI is the same family: fine.
    assert config_apply(document={"models": {"gpt-4o-routed": {"provider": "azure"}}}) != []


def test_a_fallback_may_be_a_model_defined_later_in_the_same_file_and_of_another_family():
    document = routed(fallbacks=["house-claude", "claude-sonnet-4-5"])
    document["models"]["house-claude"] = {
        "provider": "anthropic",
        "upstream": "claude-haiku-4-5-20251001",
        "input_per_1m": "1.00",
        "output_per_1m": "5.00",
        "fallbacks": ["gpt-4o-routed"],  # a cycle of two is allowed: the router stops at the first model
    }
    config_apply(document=document)
    assert CatalogModel.objects.get(name="gpt-4o-routed").fallbacks == ["house-claude", "claude-sonnet-4-5"]


def test_one_bad_model_among_good_ones_changes_nothing():
    document = routed()
    document["models"]["other"] = copy.deepcopy(ROUTED) | {"routing": "fastest"}
    before = (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count())
    expected = "models.other.routing: must be one of: priority, weighted, least_busy, latency, cost"
    assert errors_of(document) == {expected}
    assert (CatalogModel.objects.count(), Deployment.objects.count(), ModelPrice.objects.count()) == before


def test_a_region_pinned_tenant_is_warned_against_the_regions_of_the_files_deployments():
    from config.schema import config_warnings

    document = routed()
    document["tenants"] = {
        "eu-shop": {"billing_plan": "starter", "region": "eu", "models": ["gpt-4o-routed"]},
        "us-shop": {"billing_plan": "starter", "region": "us", "models": ["gpt-4o-routed"]},
    }
    warnings = {str(w) for w in config_warnings(document=document)}
    assert warnings == {
        'tenants.eu-shop.models[0]: model "gpt-4o-routed" has no deployment in region eu; this tenant cannot use it'
    }


def test_the_readme_format_example_models_import_with_their_deployments():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Tenants, models and prices.*?```json\n(.*?)```", readme, re.S).group(1)
    models = config_parse(text=block)["models"]
    config_apply(document={"models": models})
    ha = CatalogModel.objects.get(name="gpt-4o-ha")
    assert (ha.routing, ha.fallbacks, ha.affinity) == ("weighted", ["sonnet-1m"], "prefix")
    assert [(d[0], d[5]) for d in deployments_of("gpt-4o-ha")] == [("openai", 1), ("azure", 3)]
