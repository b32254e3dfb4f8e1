"""Key lifecycle: several keys per tenant with a name, an expiry, a narrower model scope and
limits of their own; rotation with a grace period; the admin's rotate action shows new keys once.
"""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from tenants.models import ApiKey, CatalogModel
from tenants.selectors import api_key_for_secret, api_key_models
from tenants.services import InvalidKey, Refused, api_key_create, api_key_revoke, api_key_rotate, api_key_set_models

from .conftest import make_tenant
from .test_admin import form_data

RAW_KEY = re.compile(r"tpk_[0-9A-Za-z]{38}")
CHANGELIST = "/admin/tenants/apikey/"


@pytest.fixture
def narrow_alice(catalog):
    """alice may use two of the three test models, and only OpenAI and Anthropic."""
    alice = make_tenant("alice", allowed_providers=["openai", "anthropic"])
    alice.allowed_models.set([catalog["gpt"], catalog["claude"]])
    return alice


# --- services ----------------------------------------------------------------------------------


def test_a_tenant_has_several_named_keys_each_with_its_own_scope_and_limits(narrow_alice, catalog):
    ci, ci_raw = api_key_create(
        tenant=narrow_alice, name="ci", allowed_models=[catalog["gpt"]], requests_per_minute=10, max_concurrent=2
    )
    web, web_raw = api_key_create(tenant=narrow_alice, name="web", tokens_per_minute=5000)

    assert api_key_for_secret(raw_key=ci_raw) == ci
    assert api_key_for_secret(raw_key=web_raw) == web
    assert (ci.requests_per_minute, ci.tokens_per_minute, ci.max_concurrent) == (10, None, 2)
    assert [m.name for m in api_key_models(key=ci)] == ["gpt-test"]
    assert [m.name for m in api_key_models(key=web)] == ["claude-test", "gpt-test"]  # the tenant's


def test_a_key_scope_must_lie_within_the_tenants_models(narrow_alice, catalog):
    with pytest.raises(Refused) as caught:
        api_key_create(tenant=narrow_alice, name="x", allowed_models=[catalog["gpt"], catalog["azure"]])
    assert caught.value.problems == ['allowed_models: model "azure-gpt-test" is not among the tenant\'s models']
    assert not ApiKey.objects.filter(name="x").exists()

    key, _ = api_key_create(tenant=narrow_alice, name="y")
    with pytest.raises(Refused):
        api_key_set_models(key=key, models=[catalog["azure"]])
    assert not key.allowed_models.exists()


def test_a_key_scope_is_refused_for_a_provider_the_tenant_excludes(catalog):
    alice = make_tenant("alice", allowed_providers=["openai"])  # every OpenAI model, nothing else
    with pytest.raises(Refused, match="served by anthropic"):
        api_key_create(tenant=alice, allowed_models=[catalog["claude"]])
    api_key_create(tenant=alice, allowed_models=[catalog["gpt"]])


def test_a_key_limit_must_be_positive(narrow_alice):
    with pytest.raises(Refused, match="requests_per_minute"):
        api_key_create(tenant=narrow_alice, requests_per_minute=0)


def test_a_key_never_reaches_beyond_its_tenant_even_when_the_tenant_shrinks(narrow_alice, catalog):
    key, _ = api_key_create(tenant=narrow_alice, allowed_models=[catalog["claude"]])
    narrow_alice.allowed_models.set([catalog["gpt"]])
    assert list(api_key_models(key=key)) == []


def test_rotation_makes_a_twin_key_and_ends_the_old_one_after_the_grace_period(narrow_alice, catalog):
    old, old_raw = api_key_create(
        tenant=narrow_alice, name="ci", allowed_models=[catalog["gpt"]], requests_per_minute=7, tokens_per_minute=70
    )
    before = timezone.now()

    new, new_raw = api_key_rotate(key=old, grace=timedelta(hours=1))

    assert new.pk != old.pk
    assert new_raw != old_raw
    assert RAW_KEY.fullmatch(new_raw)
    assert api_key_for_secret(raw_key=new_raw) == new
    assert (new.tenant, new.name, new.requests_per_minute, new.tokens_per_minute, new.max_concurrent) == (
        narrow_alice,
        "ci",
        7,
        70,
        None,
    )
    assert [m.name for m in new.allowed_models.all()] == ["gpt-test"]
    assert new.expires_at is None
    old.refresh_from_db()
    assert before + timedelta(hours=1) <= old.expires_at <= timezone.now() + timedelta(hours=1)
    assert api_key_for_secret(raw_key=old_raw) == old  # still working during the grace period
    assert old.status_at(old.expires_at) == "expired"


def test_rotation_without_grace_ends_the_old_key_now(narrow_alice):
    old, old_raw = api_key_create(tenant=narrow_alice)
    _, new_raw = api_key_rotate(key=old, grace=timedelta(0))
    assert api_key_for_secret(raw_key=old_raw) is None
    assert api_key_for_secret(raw_key=new_raw) is not None


def test_rotation_never_extends_an_earlier_expiry_and_the_new_key_keeps_it(narrow_alice):
    soon = timezone.now() + timedelta(minutes=10)
    old, _ = api_key_create(tenant=narrow_alice, expires_at=soon)

    new, _ = api_key_rotate(key=old, grace=timedelta(days=7))

    old.refresh_from_db()
    assert old.expires_at == soon
    assert new.expires_at == soon  # a temporary key stays temporary


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_only_an_active_key_can_be_rotated(narrow_alice, state):
    key, _ = api_key_create(tenant=narrow_alice)
    if state == "revoked":
        api_key_revoke(key=key)
    else:
        ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    count = ApiKey.objects.count()
    with pytest.raises(InvalidKey, match=f"is {state}"):
        api_key_rotate(key=key, grace=timedelta(hours=1))
    assert ApiKey.objects.count() == count


def test_a_negative_grace_period_is_refused(narrow_alice):
    key, _ = api_key_create(tenant=narrow_alice)
    with pytest.raises(Refused):
        api_key_rotate(key=key, grace=timedelta(seconds=-1))


# --- the admin ---------------------------------------------------------------------------------


def test_the_rotate_action_asks_for_the_grace_period_first_and_changes_nothing_yet(admin_client, narrow_alice):
    active, _ = api_key_create(tenant=narrow_alice, name="ci")
    revoked, _ = api_key_create(tenant=narrow_alice, name="old")
    api_key_revoke(key=revoked)
    count = ApiKey.objects.count()

    page = admin_client.post(CHANGELIST, {"action": "rotate_keys", "_selected_action": [active.pk, revoked.pk]})

    assert page.status_code == 200
    assert [t.name for t in page.templates][0] == "admin/tenants/apikey/rotate.html"
    html = page.content.decode()
    assert active.display in html
    assert "Not rotated (revoked or expired)" in html
    assert revoked.display in html
    for seconds in ("0", "3600", "86400", "604800"):
        assert f'value="{seconds}"' in html
    assert ApiKey.objects.count() == count
    assert ApiKey.objects.get(pk=active.pk).expires_at is None


def test_the_rotate_action_shows_every_new_key_once_and_nowhere_else(admin_client, narrow_alice, catalog):
    ci, ci_raw = api_key_create(tenant=narrow_alice, name="ci", allowed_models=[catalog["gpt"]], max_concurrent=3)
    web, _ = api_key_create(tenant=narrow_alice, name="web")
    started = timezone.now()

    response = admin_client.post(
        CHANGELIST,
        {"action": "rotate_keys", "_selected_action": [ci.pk, web.pk], "apply": "yes", "grace": "86400"},
    )

    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "admin/tenants/apikey/keys_rotated.html"
    assert "no-store" in response["Cache-Control"]
    raws = set(RAW_KEY.findall(response.content.decode()))
    assert len(raws) == 2
    new_keys = {api_key_for_secret(raw_key=raw) for raw in raws}
    assert {k.name for k in new_keys} == {"ci", "web"}
    new_ci = next(k for k in new_keys if k.name == "ci")
    assert (new_ci.max_concurrent, [m.name for m in new_ci.allowed_models.all()]) == (3, ["gpt-test"])
    for old in (ci, web):
        old.refresh_from_db()
        assert started + timedelta(hours=24) <= old.expires_at <= timezone.now() + timedelta(hours=24)
    assert api_key_for_secret(raw_key=ci_raw) == ci  # the grace period

    for raw in raws:
        assert all(raw not in morsel.value for morsel in response.cookies.values())
        assert all(raw not in str(m) for m in get_messages(response.wsgi_request))
        assert all(raw not in str(s.get_decoded()) for s in Session.objects.all())
        assert all(raw not in f"{e.object_repr} {e.change_message}" for e in LogEntry.objects.all())
        for url in (CHANGELIST, reverse("admin:tenants_apikey_change", args=[new_ci.pk])):
            assert raw not in admin_client.get(url).content.decode()
    assert LogEntry.objects.filter(object_id=str(ci.pk), change_message__startswith="Rotated").exists()


def test_the_rotate_action_refuses_an_unknown_grace_period(admin_client, narrow_alice):
    key, _ = api_key_create(tenant=narrow_alice, name="ci")
    count = ApiKey.objects.count()
    response = admin_client.post(
        CHANGELIST, {"action": "rotate_keys", "_selected_action": [key.pk], "apply": "yes", "grace": "999999"}
    )
    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "admin/tenants/apikey/rotate.html"
    assert ApiKey.objects.count() == count
    assert not RAW_KEY.search(response.content.decode())


def test_the_key_list_shows_status_from_status_at_scope_limits_and_last_use(admin_client, narrow_alice, catalog):
    used = timezone.now() - timedelta(hours=2)
    key, _ = api_key_create(tenant=narrow_alice, name="ci", allowed_models=[catalog["gpt"]], requests_per_minute=9)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=used)
    future_revoked, _ = api_key_create(tenant=narrow_alice, name="later")
    # A revocation stamped in the future (clock skew between hosts) is not in force yet.
    ApiKey.objects.filter(pk=future_revoked.pk).update(revoked_at=timezone.now() + timedelta(hours=1))

    page = admin_client.get(CHANGELIST)
    rows = {k.name: k for k in page.context["cl"].result_list}
    model_admin = page.context["cl"].model_admin
    assert model_admin.status(rows["ci"]) == "active"
    assert model_admin.status(rows["later"]) == "active"
    assert model_admin.scope(rows["ci"]) == "gpt-test"
    assert model_admin.scope(rows["later"]) == "the tenant's"
    assert model_admin.limits(rows["ci"]) == "rpm 9"
    html = page.content.decode()
    assert key.display in html
    assert "last used" in html.lower()
    active = admin_client.get(CHANGELIST + "?status=active").context["cl"].result_list
    assert {k.name for k in active} == {"ci", "later"}


def test_the_add_page_refuses_a_scope_outside_the_tenant(admin_client, narrow_alice, catalog):
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {
            "tenant": narrow_alice.pk,
            "name": "scoped",
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": [catalog["azure"].pk],
        },
    )
    assert response.status_code == 200
    assert "is not among the tenant" in response.content.decode()
    assert not ApiKey.objects.filter(name="scoped").exists()
    assert not RAW_KEY.search(response.content.decode())


def test_the_add_page_creates_a_scoped_key_with_limits(admin_client, narrow_alice, catalog):
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {
            "tenant": narrow_alice.pk,
            "name": "scoped",
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": [catalog["claude"].pk],
            "requests_per_minute": "12",
            "tokens_per_minute": "",
            "max_concurrent": "4",
        },
    )
    assert response.status_code == 200
    raw = RAW_KEY.findall(response.content.decode())[0]
    key = api_key_for_secret(raw_key=raw)
    assert (key.name, key.requests_per_minute, key.tokens_per_minute, key.max_concurrent) == ("scoped", 12, None, 4)
    assert [m.name for m in key.allowed_models.all()] == ["claude-test"]


def test_the_change_page_edits_scope_and_limits_within_the_tenant(admin_client, narrow_alice, catalog):
    key, _ = api_key_create(tenant=narrow_alice, name="ci")
    url = reverse("admin:tenants_apikey_change", args=[key.pk])
    data = {"name": "ci", "expires_at_0": "", "expires_at_1": "", "max_concurrent": "2"}

    refused = admin_client.post(url, {**data, "allowed_models": [catalog["azure"].pk]})
    assert refused.status_code == 200
    assert not key.allowed_models.exists()

    saved = admin_client.post(url, {**data, "allowed_models": [catalog["gpt"].pk]})
    assert saved.status_code == 302
    key.refresh_from_db()
    assert key.max_concurrent == 2
    assert [m.name for m in key.allowed_models.all()] == ["gpt-test"]
    assert CatalogModel.objects.filter(name="gpt-test").exists()


def test_a_key_whose_model_left_the_tenant_can_still_be_edited_without_widening(admin_client, narrow_alice, catalog):
    key, _ = api_key_create(tenant=narrow_alice, name="ci", allowed_models=[catalog["claude"]])
    narrow_alice.allowed_models.set([catalog["gpt"]])
    CatalogModel.objects.filter(pk=catalog["claude"].pk).update(active=False)
    url = reverse("admin:tenants_apikey_change", args=[key.pk])
    data = form_data(admin_client.get(url))
    assert data["allowed_models"] == [str(catalog["claude"].pk)]  # still shown, so a save keeps it
    data["name"] = ["renamed"]

    assert admin_client.post(url, data).status_code == 302

    key.refresh_from_db()
    assert key.name == "renamed"
    assert [m.name for m in key.allowed_models.all()] == ["claude-test"]  # not emptied into "every model"
    assert list(api_key_models(key=key)) == []
