"""Bulk configuration of tenants from the admin's tenant list: an intermediate form, then one
transaction for every selected tenant, so that a refusal for one tenant changes none.
"""

import pytest
from django.contrib.admin.models import LogEntry

from tenants.models import CatalogModel, Tenant
from tenants.services import Refused, tenants_set_limits, tenants_set_models

from .conftest import make_model, make_tenant

CHANGELIST = "/admin/tenants/tenant/"


@pytest.fixture
def trio(catalog):
    """alice: OpenAI and Anthropic, two listed models; bob: OpenAI only, one listed model;
    carol: every provider and every model (nothing listed)."""
    alice = make_tenant("alice", allowed_providers=["openai", "anthropic"], requests_per_minute=10, max_concurrent=5)
    alice.allowed_models.set([catalog["gpt"], catalog["claude"]])
    bob = make_tenant("bob", allowed_providers=["openai"], tokens_per_minute=1000)
    bob.allowed_models.set([catalog["gpt"]])
    carol = make_tenant("carol")
    return {"alice": alice, "bob": bob, "carol": carol}


def models_of(slug: str) -> set[str]:
    return set(Tenant.objects.get(slug=slug).allowed_models.values_list("name", flat=True))


def limits_of(slug: str) -> tuple:
    return Tenant.objects.values_list("requests_per_minute", "tokens_per_minute", "max_concurrent").get(slug=slug)


def snapshot() -> dict:
    return {t.slug: (limits_of(t.slug), models_of(t.slug), t.model_aliases, t.updated_at) for t in Tenant.objects.all()}


def post_action(client, action, tenants, **data):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [t.pk for t in tenants], "apply": "yes", **data}
    )


# --- limits ------------------------------------------------------------------------------------


def test_the_limits_action_shows_a_form_first_and_changes_nothing(admin_client, trio):
    before = snapshot()
    page = admin_client.post(CHANGELIST, {"action": "set_limits", "_selected_action": [trio["alice"].pk]})
    assert page.status_code == 200
    assert [t.name for t in page.templates][0] == "admin/tenants/tenant/bulk_action.html"
    html = page.content.decode()
    assert "alice" in html
    assert 'name="clear_tokens_per_minute"' in html
    assert snapshot() == before


def test_limits_are_set_cleared_or_left_alone_for_every_selected_tenant(admin_client, trio):
    response = post_action(
        admin_client,
        "set_limits",
        [trio["alice"], trio["bob"]],
        requests_per_minute="100",
        tokens_per_minute="",
        clear_max_concurrent="on",
    )
    assert response.status_code == 302
    assert limits_of("alice") == (100, None, None)
    assert limits_of("bob") == (100, 1000, None)  # tokens per minute left as it was
    assert limits_of("carol") == (None, None, None)  # not selected
    assert set(LogEntry.objects.values_list("object_repr", flat=True)) == {"alice", "bob"}
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert any("Set limits of 2 tenant(s)" in m for m in messages)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "Nothing to change"),
        ({"requests_per_minute": "0"}, "greater than or equal to 1"),
        ({"requests_per_minute": "5", "clear_requests_per_minute": "on"}, "Either a value or clear"),
    ],
)
def test_an_invalid_limits_form_comes_back_and_changes_nothing(admin_client, trio, data, error):
    before = snapshot()
    response = post_action(admin_client, "set_limits", [trio["alice"], trio["bob"]], **data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert snapshot() == before


def test_the_limits_service_refuses_a_bad_value_for_all(trio):
    before = snapshot()
    with pytest.raises(Refused):
        tenants_set_limits(tenants=list(Tenant.objects.all()), limits={"requests_per_minute": 5, "max_concurrent": 0})
    assert snapshot() == before


# --- models ------------------------------------------------------------------------------------


def test_enabling_a_model_for_several_tenants(admin_client, trio, catalog):
    response = post_action(admin_client, "set_models", [trio["alice"], trio["carol"]], enable=[catalog["azure"].pk])
    # alice excludes Azure: refused for everyone, carol included.
    assert response.status_code == 200
    assert "alice: model azure-gpt-test is served by azure" in response.content.decode()
    assert models_of("carol") == set()

    trio["alice"].allowed_providers = ["openai", "anthropic", "azure"]
    trio["alice"].save()
    response = post_action(admin_client, "set_models", [trio["alice"], trio["carol"]], enable=[catalog["azure"].pk])
    assert response.status_code == 302
    assert models_of("alice") == {"gpt-test", "claude-test", "azure-gpt-test"}
    assert models_of("carol") == set()  # every model already: still every model


def test_a_failing_tenant_changes_nothing_for_any_selected_tenant(admin_client, trio, catalog):
    """bob's providers exclude Anthropic: enabling claude for alice, bob and carol changes nobody."""
    before = snapshot()
    response = post_action(
        admin_client,
        "set_models",
        [trio["alice"], trio["bob"], trio["carol"]],
        enable=[catalog["claude"].pk, catalog["gpt"].pk],
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "Nothing was changed" in html
    assert "bob: model claude-test is served by anthropic, not among the tenant&#x27;s providers" in html
    assert snapshot() == before
    assert not LogEntry.objects.exists()


def test_the_models_service_is_all_or_nothing(trio, catalog):
    before = snapshot()
    with pytest.raises(Refused) as caught:
        tenants_set_models(tenants=list(Tenant.objects.order_by("slug")), enable=[catalog["claude"]])
    assert caught.value.problems == ["bob: model claude-test is served by anthropic, not among the tenant's providers"]
    assert snapshot() == before


def test_disabling_a_model_that_an_alias_needs_is_refused_for_all(trio, catalog):
    Tenant.objects.filter(slug="alice").update(model_aliases={"fast": "gpt-test"})
    before = snapshot()
    with pytest.raises(Refused) as caught:
        tenants_set_models(tenants=list(Tenant.objects.filter(slug__in=["alice", "carol"])), disable=[catalog["gpt"]])
    assert caught.value.problems == ['alice: alias fast: model "gpt-test" is not among the tenant\'s models']
    assert snapshot() == before


def test_an_alias_broken_before_does_not_block_an_unrelated_change(trio, catalog):
    Tenant.objects.filter(slug="alice").update(model_aliases={"old": "gpt-test", "fast": "claude-test"})
    CatalogModel.objects.filter(pk=catalog["gpt"].pk).update(active=False)  # "old" is broken now
    enabled = make_model("new-test", "openai", "new-x", input_per_1m="1", output_per_1m="2")

    assert tenants_set_models(tenants=[trio["alice"]], enable=[enabled]) == ["alice: +new-test"]
    with pytest.raises(Refused, match="alias fast"):
        tenants_set_models(tenants=[trio["alice"]], disable=[catalog["claude"]])


def test_disabling_the_last_model_is_refused_because_empty_means_every_model(trio, catalog):
    with pytest.raises(Refused, match="would leave no model"):
        tenants_set_models(tenants=[trio["bob"]], disable=[catalog["gpt"]])
    assert models_of("bob") == {"gpt-test"}


def test_disabling_a_model_for_a_tenant_with_every_model_lists_the_others(admin_client, trio, catalog):
    response = post_action(admin_client, "set_models", [trio["alice"], trio["carol"]], disable=[catalog["gpt"].pk])
    assert response.status_code == 302
    assert models_of("alice") == {"claude-test"}
    carol = models_of("carol")
    assert "gpt-test" not in carol
    assert {"claude-test", "azure-gpt-test", "gpt-4o"} <= carol  # the others, the default catalog's too
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert any("alice: -gpt-test" in m and "carol: every model →" in m for m in messages)


def test_enabling_and_disabling_one_model_at_once_is_a_form_error(admin_client, trio, catalog):
    before = snapshot()
    response = post_action(
        admin_client, "set_models", [trio["alice"]], enable=[catalog["gpt"].pk], disable=[catalog["gpt"].pk]
    )
    assert response.status_code == 200
    assert "Enabled and disabled at once: gpt-test" in response.content.decode()
    assert snapshot() == before


# --- suspend and resume ------------------------------------------------------------------------


def test_suspend_is_one_transaction(admin_client, trio, monkeypatch):
    import console.admin.tenants

    real = console.admin.tenants.tenant_set_status
    calls = []

    def flaky(*, tenant, status):
        calls.append(tenant.slug)
        if tenant.slug == "bob":
            raise RuntimeError("database went away")
        return real(tenant=tenant, status=status)

    monkeypatch.setattr(console.admin.tenants, "tenant_set_status", flaky)
    admin_client.raise_request_exception = False
    response = admin_client.post(
        CHANGELIST, {"action": "suspend_tenants", "_selected_action": [t.pk for t in Tenant.objects.all()]}
    )
    assert response.status_code == 500
    assert calls == ["alice", "bob"]
    assert set(Tenant.objects.values_list("status", flat=True)) == {"active"}  # alice rolled back too
