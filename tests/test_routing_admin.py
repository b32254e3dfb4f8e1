"""The catalog admin with several deployments per model, routing, fallbacks and affinity (issue 13)."""

import pytest
from django.urls import reverse

from tenants.models import CatalogModel, Deployment
from tests.test_admin import change_url, form_data

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:tenants_catalogmodel_add")


def two_deployments(**overrides) -> dict:
    data = {
        "name": "gpt-4o-routed",
        "provider": "openai",
        "kind": "chat",
        "active": "on",
        "context_window": "",
        "routing": "weighted",
        "fallbacks": '["claude-sonnet-4-5"]',
        "affinity": "prefix",
        "deployments-TOTAL_FORMS": "2",
        "deployments-INITIAL_FORMS": "0",
        "deployments-0-provider": "openai",
        "deployments-0-upstream": "gpt-4o",
        "deployments-0-region": "us",
        "deployments-0-base_url": "https://openai-account-2.example.com/v1",
        "deployments-0-priority": "0",
        "deployments-0-weight": "1",
        "deployments-0-requests_per_minute": "500",
        "deployments-0-tokens_per_minute": "200000",
        "deployments-0-timeout_seconds": "60",
        "deployments-0-active": "on",
        "deployments-1-provider": "azure",
        "deployments-1-upstream": "gpt4o-prod",
        "deployments-1-region": "us",
        "deployments-1-base_url": "",
        "deployments-1-priority": "0",
        "deployments-1-weight": "3",
        "deployments-1-requests_per_minute": "",
        "deployments-1-tokens_per_minute": "",
        "deployments-1-timeout_seconds": "",
        "deployments-1-active": "on",
    }
    data.update(overrides)
    return data


def rows(model) -> list[tuple]:
    return list(
        model.deployments.order_by("weight").values_list(
            "provider", "upstream", "base_url", "weight", "requests_per_minute", "tokens_per_minute", "timeout_seconds"
        )
    )


def errors(response) -> str:
    assert response.status_code == 200, "the form should have been refused"
    return response.content.decode()


def test_staff_add_a_model_with_two_deployments_and_its_routing(admin_client):
    response = admin_client.post(ADD_URL, two_deployments())
    assert response.status_code == 302, response.content.decode()[:3000]

    model = CatalogModel.objects.get(name="gpt-4o-routed")
    assert (model.routing, model.fallbacks, model.affinity) == ("weighted", ["claude-sonnet-4-5"], "prefix")
    assert rows(model) == [
        ("openai", "gpt-4o", "https://openai-account-2.example.com/v1", 1, 500, 200000, 60.0),
        ("azure", "gpt4o-prod", "", 3, None, None, None),
    ]


def test_staff_change_the_weights_and_routing_of_a_model_with_two_deployments(admin_client):
    admin_client.post(ADD_URL, two_deployments())
    model = CatalogModel.objects.get(name="gpt-4o-routed")
    page = admin_client.get(change_url(model))
    assert page.status_code == 200
    body = page.content.decode()
    for field in ("weight", "requests_per_minute", "tokens_per_minute", "timeout_seconds", "base_url"):
        assert f'name="deployments-0-{field}"' in body

    data = form_data(page)
    second = next(i for i in (0, 1) if data[f"deployments-{i}-provider"] == ["azure"])
    data[f"deployments-{second}-weight"] = ["5"]
    data[f"deployments-{second}-timeout_seconds"] = ["12.5"]
    data["routing"] = ["latency"]
    data["fallbacks"] = ['["claude-sonnet-4-5", "gpt-4o"]']
    data["affinity"] = [""]
    response = admin_client.post(change_url(model), data)
    assert response.status_code == 302, response.content.decode()[:3000]

    model.refresh_from_db()
    assert (model.routing, model.fallbacks, model.affinity) == ("latency", ["claude-sonnet-4-5", "gpt-4o"], "")
    assert Deployment.objects.get(model=model, provider="azure").weight == 5
    assert Deployment.objects.get(model=model, provider="azure").timeout_seconds == 12.5


def test_a_deployment_of_another_family_is_refused_on_its_provider(admin_client):
    body = errors(admin_client.post(ADD_URL, two_deployments(**{"deployments-1-provider": "anthropic"})))
    assert "anthropic does not speak the model&#x27;s family (openai)" in body
    assert not CatalogModel.objects.filter(name="gpt-4o-routed").exists()


def test_an_inactive_deployment_of_another_family_is_allowed(admin_client):
    data = two_deployments(**{"deployments-1-provider": "anthropic"})
    del data["deployments-1-active"]
    assert admin_client.post(ADD_URL, data).status_code == 302


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        ('["gpt-4o-routed"]', "a model cannot fall back to itself"),
        ('["no-such-model"]', "unknown model &quot;no-such-model&quot; (not in the catalog)"),
        ('["gpt-4o", "gpt-4o"]', "[1]: &quot;gpt-4o&quot; is listed twice"),
        ('["text-embedding-3-small"]', "is a embedding model, this one a chat model"),
        ('"gpt-4o"', "must be a list of catalog model names"),
    ],
)
def test_bad_fallbacks_are_refused_naming_the_item(admin_client, fallbacks, message):
    body = errors(admin_client.post(ADD_URL, two_deployments(fallbacks=fallbacks)))
    assert message in body
    assert not CatalogModel.objects.filter(name="gpt-4o-routed").exists()


def test_a_weight_of_zero_is_refused(admin_client):
    body = errors(admin_client.post(ADD_URL, two_deployments(**{"deployments-0-weight": "0"})))
    assert "Ensure this value is greater than or equal to 1" in body
