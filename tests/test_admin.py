"""The staff admin: every page renders, keys are shown once and never as a hash, actions call
services, prices that were billed are frozen, usage is read-only, list pages do not N+1.
"""

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import ModelPrice, Plan, UsageRecord
from tenants.keys import key_hash
from tenants.models import ApiKey, PlatformPolicy, ProviderCredential, RequestLog, Tenant
from tenants.prompting import template_create_version
from tenants.selectors import api_key_for_secret
from tenants.services import api_key_create, credential_set
from tests.conftest import make_model, make_tenant

RAW_KEY = re.compile(r"tpk_[0-9A-Za-z]{38}")
PROVIDER_SECRET = "sk-ant-admin-test-0123456789"


# --- helpers -------------------------------------------------------------------------------


def make_usage(tenant, model, *, count=1, key=None, at=None, **fields):
    """`count` usage rows of one tenant and model, one second apart, billed at its latest price."""
    at = at or timezone.now()
    values = {
        "tenant": tenant,
        "api_key": key,
        "model": model.name,
        "provider": model.provider,
        "upstream_model": model.name,
        "endpoint": UsageRecord.Endpoint.CHAT,
        "status_code": 200,
        "input_tokens": 100,
        "cached_input_tokens": 10,
        "output_tokens": 20,
        "cost": Decimal("0.000123"),
        "price": model.prices.order_by("-effective_from").first(),
        "latency_ms": 150,
        **fields,
    }
    rows = [
        UsageRecord(request_id=uuid.uuid4().hex, created_at=at - timedelta(seconds=i), **values) for i in range(count)
    ]
    return UsageRecord.objects.bulk_create(rows)


class _FormReader(HTMLParser):
    """What a browser would submit for the admin form on a page, without pressing anything."""

    def __init__(self):
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def _add(self, name, value):
        self.data.setdefault(name, []).append(value)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in {"submit", "button", "file"}:
            if a.get("type") in {"checkbox", "radio"}:
                if "checked" in a:
                    self._add(name, a.get("value", "on"))
            else:
                self._add(name, a.get("value") or "")
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, [])
        elif tag == "option" and self._select and "selected" in a:
            self._add(self._select, a.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea = name
            self._add(name, "")

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea][-1] += data

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def form_data(response) -> dict[str, list[str]]:
    reader = _FormReader()
    reader.feed(response.content.decode())
    reader.data.pop("csrfmiddlewaretoken", None)
    return reader.data


def change_url(obj):
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def changelist_url(model):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.fixture
def catalog(db):
    """Models of our own: names that no default catalog migration ships."""
    return {
        "gpt": make_model("adm-gpt", "openai", "gpt-x", input_per_1m="0.15", output_per_1m="0.60", cached="0.075"),
        "claude": make_model("adm-claude", "anthropic", "claude-x", input_per_1m="1.00", output_per_1m="5.00"),
        "azure": make_model("adm-azure", "azure", "azure-x", input_per_1m="2.50", output_per_1m="10.00"),
    }


@pytest.fixture
def world(catalog):
    """Some of everything, so that every admin page has a row to show."""
    plan = Plan.objects.create(name="enterprise", monthly_base_fee=Decimal("99.00"))
    alice = make_tenant("alice", plan=plan, region="us")
    bob = make_tenant("bob")
    alice.allowed_models.add(catalog["gpt"])
    key, _ = api_key_create(tenant=alice, name="ci")
    revoked, _ = api_key_create(tenant=bob, name="old")
    revoked.revoked_at = timezone.now()
    revoked.save()
    make_usage(alice, catalog["gpt"], key=key, count=2)
    make_usage(bob, catalog["claude"], status_code=429, error_type="rate_limit", streamed=True)
    credential = credential_set(tenant=alice, provider="anthropic", secret=PROVIDER_SECRET)
    template = template_create_version(
        tenant_id=alice.pk, name="greet", messages=[{"role": "system", "content": "Hi {{name}}"}]
    )
    log = RequestLog.objects.create(
        tenant=alice,
        api_key=key,
        request_id="req-1",
        model="adm-gpt",
        endpoint="chat",
        status_code=200,
        request={"messages": [{"role": "user", "content": "hello"}]},
        response={"choices": []},
        created_at=timezone.now(),
    )
    policy = PlatformPolicy.objects.create(pk=1, blocked_models=["adm-azure"])
    return {
        "alice": alice,
        "bob": bob,
        "key": key,
        "revoked": revoked,
        "plan": plan,
        "credential": credential,
        "template": template,
        "log": log,
        "policy": policy,
        **catalog,
    }


# --- every page ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_registered_model_has_working_pages_and_no_page_shows_a_key_hash(admin_client, world):
    hashes = list(ApiKey.objects.values_list("key_hash", flat=True))
    assert hashes
    # Nor a provider secret, in plain text or encrypted.
    hashes += [PROVIDER_SECRET, *ProviderCredential.objects.values_list("encrypted_secret", flat=True)]
    request = admin_client.get(reverse("admin:index")).wsgi_request
    pages = 0
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        urls = [changelist_url(model), changelist_url(model) + "?q=a"]
        if model_admin.has_add_permission(request):
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        for obj in model.objects.order_by("-pk")[:3]:  # the newest: ours, not the default catalog
            urls += [change_url(obj), reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[obj.pk])]
            if model_admin.has_delete_permission(request, obj):
                urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[obj.pk]))
        for url in urls:
            response = admin_client.get(url, follow=True)  # the platform policy's list goes to its one row
            assert response.status_code == 200, url
            html = response.content.decode()
            for value in hashes:
                assert value not in html, url
            pages += 1
    assert pages > 60


@pytest.mark.django_db
def test_the_filters_of_the_usage_list_work(admin_client, world):
    url = changelist_url(UsageRecord)
    cases = {
        f"?tenant__id__exact={world['bob'].pk}": 1,
        "?model=adm-gpt": 2,
        "?status=4xx": 1,
        "?status=429": 1,
        "?status=2xx": 2,
        "?error_type=rate_limit": 1,
        "?error_type=-": 2,
        "?streamed__exact=1": 1,
        "?estimated__exact=0": 3,
        "?cache_hit__exact=0": 3,
        f"?created_at__year={timezone.now().year}": 3,
    }
    for query, rows in cases.items():
        response = admin_client.get(url + query)
        assert response.status_code == 200, query
        assert response.context["cl"].result_count == rows, query


# --- API keys ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_make_a_tenant_admin_key_whose_kind_stays(admin_client, alice):
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {"tenant": alice.pk, "name": "alice-admin", "is_admin": "on", "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="alice-admin")
    assert key.is_admin
    # On the change page the kind is shown, not editable: posting it changes nothing.
    change = admin_client.get(change_url(key))
    assert "is_admin" not in change.context["adminform"].form.fields
    admin_client.post(change_url(key), {"name": "renamed", "expires_at_0": "", "expires_at_1": ""})
    key.refresh_from_db()
    assert (key.name, key.is_admin) == ("renamed", True)


def test_creating_a_key_shows_the_secret_once_and_stores_only_its_hash(admin_client, alice):
    add_url = reverse("admin:tenants_apikey_add")
    form = admin_client.get(f"{add_url}?tenant={alice.pk}")
    assert form.status_code == 200
    assert set(form.context["adminform"].form.fields) == {
        "tenant",
        "project",
        "daily_budget",
        "name",
        "is_admin",
        "expires_at",
        "allowed_models",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent",
        "monthly_budget",
    }

    response = admin_client.post(
        add_url, {"tenant": alice.pk, "name": "from-admin", "expires_at_0": "", "expires_at_1": "", "_continue": "1"}
    )

    assert response.status_code == 200  # the page itself, not a redirect that would need to carry the secret
    assert [t.name for t in response.templates][0] == "admin/tenants/apikey/key_created.html"
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    raw_keys = set(RAW_KEY.findall(html))
    assert len(raw_keys) == 1
    raw = raw_keys.pop()
    assert "will not be shown again" in html

    key = ApiKey.objects.get(name="from-admin")
    assert key.tenant == alice
    assert key.key_hash == key_hash(raw, pepper=settings.API_KEY_PEPPER)
    assert raw not in {str(getattr(key, f.attname)) for f in ApiKey._meta.concrete_fields}
    assert api_key_for_secret(raw_key=raw) == key

    # Nowhere else: cookies, messages, sessions, the admin log.
    assert all(raw not in morsel.value for morsel in response.cookies.values())
    assert all(raw not in morsel.value for morsel in admin_client.cookies.values())
    assert all(raw not in str(m) for m in get_messages(response.wsgi_request))
    assert all(raw not in str(s.get_decoded()) for s in Session.objects.all())
    assert all(raw not in f"{e.object_repr} {e.change_message}" for e in LogEntry.objects.all())

    # And on no later page.
    for url in [
        changelist_url(ApiKey),
        change_url(key),
        change_url(alice),
        reverse("admin:tenants_apikey_history", args=[key.pk]),
        reverse("admin:index"),
    ]:
        later = admin_client.get(url)
        assert later.status_code == 200
        assert raw not in later.content.decode(), url
        assert key.display in admin_client.get(changelist_url(ApiKey)).content.decode()


@pytest.mark.django_db
def test_a_key_with_an_expiry_can_be_created(admin_client, alice):
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {"tenant": alice.pk, "name": "temp", "expires_at_0": "2031-01-02", "expires_at_1": "03:04:05"},
    )
    assert response.status_code == 200
    assert ApiKey.objects.get(name="temp").expires_at == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.django_db
def test_only_name_expiry_scope_limits_and_budget_of_a_key_can_change(admin_client, world):
    key = world["key"]
    before = ApiKey.objects.get(pk=key.pk)
    page = admin_client.get(change_url(key))
    assert set(page.context["adminform"].form.fields) == {
        "name",
        "project",
        "daily_budget",
        "expires_at",
        "allowed_models",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent",
        "monthly_budget",
    }
    data = form_data(page)
    data.update(
        name=["renamed"],
        tenant=[str(world["bob"].pk)],
        key_hash=["0" * 64],
        prefix=["evil"],
        revoked_at_0=["2020-01-01"],
        revoked_at_1=["00:00:00"],
    )
    response = admin_client.post(change_url(key), data)
    assert response.status_code == 302
    after = ApiKey.objects.get(pk=key.pk)
    assert after.name == "renamed"
    assert (after.tenant_id, after.key_hash, after.prefix, after.last4, after.revoked_at) == (
        before.tenant_id,
        before.key_hash,
        before.prefix,
        before.last4,
        before.revoked_at,
    )


@pytest.mark.django_db
def test_saving_a_key_writes_only_what_changed(world):
    """A form read before a revoke must not bring the key back to life, nor rewind last_used_at."""
    key, model_admin = world["key"], admin.site._registry[ApiKey]
    stale = ApiKey.objects.get(pk=key.pk)  # what the form was built from
    used = timezone.now()
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=used, last_used_at=used)  # meanwhile, elsewhere
    form_class = model_admin.get_form(None, stale, change=True, fields=["name", "expires_at"])
    form = form_class({"name": "renamed", "expires_at_0": "", "expires_at_1": ""}, instance=stale)
    assert form.is_valid(), form.errors

    model_admin.save_model(None, form.save(commit=False), form, change=True)

    after = ApiKey.objects.get(pk=key.pk)
    assert (after.name, after.revoked_at, after.last_used_at) == ("renamed", used, used)


@pytest.mark.django_db
def test_the_revoke_action_revokes_the_selected_keys_through_the_service(admin_client, world, monkeypatch):
    import console.admin.tenants

    calls = []
    real = console.admin.tenants.api_key_revoke
    monkeypatch.setattr(console.admin.tenants, "api_key_revoke", lambda *, key: calls.append(key.pk) or real(key=key))
    key, revoked = world["key"], world["revoked"]
    revoked_at = ApiKey.objects.get(pk=revoked.pk).revoked_at

    response = admin_client.post(
        changelist_url(ApiKey), {"action": "revoke_keys", "_selected_action": [key.pk, revoked.pk]}, follow=True
    )

    assert response.status_code == 200
    assert calls == [key.pk]
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=revoked.pk).revoked_at == revoked_at  # already revoked: untouched
    assert "Revoked 1 API key(s)." in [str(m) for m in response.context["messages"]]
    assert "revoked" in response.content.decode()


@pytest.mark.django_db
def test_keys_have_no_bulk_delete_and_filter_by_status(admin_client, world):
    response = admin_client.get(changelist_url(ApiKey))
    assert "delete_selected" not in response.content.decode()
    assert "revoke_keys" in response.content.decode()
    expired, _ = api_key_create(tenant=world["alice"], name="expired", expires_at=timezone.now() - timedelta(days=1))
    for status, names in {"active": {"ci"}, "revoked": {"old"}, "expired": {"expired"}}.items():
        page = admin_client.get(changelist_url(ApiKey) + f"?status={status}")
        assert {k.name for k in page.context["cl"].result_list} == names, status


# --- tenants -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_suspend_and_resume_actions_go_through_the_service(admin_client, world, monkeypatch):
    import console.admin.tenants

    calls = []
    real = console.admin.tenants.tenant_set_status
    monkeypatch.setattr(
        console.admin.tenants,
        "tenant_set_status",
        lambda *, tenant, status: calls.append((tenant.slug, status)) or real(tenant=tenant, status=status),
    )
    alice, bob = world["alice"], world["bob"]
    url = changelist_url(Tenant)

    response = admin_client.post(
        url, {"action": "suspend_tenants", "_selected_action": [alice.pk, bob.pk]}, follow=True
    )
    assert set(Tenant.objects.values_list("status", flat=True)) == {"suspended"}
    assert "Suspended 2 tenant(s)." in [str(m) for m in response.context["messages"]]

    response = admin_client.post(url, {"action": "resume_tenants", "_selected_action": [alice.pk]}, follow=True)
    assert Tenant.objects.get(pk=alice.pk).status == "active"
    assert Tenant.objects.get(pk=bob.pk).status == "suspended"
    assert "Resumed 1 tenant(s)." in [str(m) for m in response.context["messages"]]
    assert calls == [("alice", "suspended"), ("bob", "suspended"), ("alice", "active")]


@pytest.mark.django_db
def test_the_tenant_page_edits_access_plan_and_status(admin_client, world, monkeypatch):
    import console.admin.tenants

    calls = []
    real = console.admin.tenants.tenant_set_status
    monkeypatch.setattr(
        console.admin.tenants,
        "tenant_set_status",
        lambda *, tenant, status: calls.append(status) or real(tenant=tenant, status=status),
    )
    alice, gold = world["alice"], Plan.objects.create(name="gold")
    page = admin_client.get(change_url(alice))
    html = page.content.decode()
    assert world["key"].display in html  # the key inline
    assert f"{reverse('admin:tenants_apikey_add')}?tenant={alice.pk}" in html
    data = form_data(page)
    data.update(
        status=["suspended"],
        allowed_providers=["openai", "azure"],
        allowed_models=[str(world["gpt"].pk), str(world["claude"].pk)],
        tokens_per_minute=["5000"],
        **{"subscription-0-plan": [str(gold.pk)]},
    )

    response = admin_client.post(change_url(alice), data)

    assert response.status_code == 302, response.context and response.context["errors"]
    alice.refresh_from_db()
    assert alice.status == "suspended"
    assert calls == ["suspended"]
    assert alice.allowed_providers == ["openai", "azure"]
    assert set(alice.allowed_models.values_list("name", flat=True)) == {"adm-gpt", "adm-claude"}
    assert alice.tokens_per_minute == 5000
    assert alice.subscription.plan == gold
    assert ApiKey.objects.filter(tenant=alice).count() == 1  # the read-only inline changed nothing


@pytest.mark.django_db
def test_a_tenant_can_be_added_with_its_subscription(admin_client, world):
    page = admin_client.get(reverse("admin:tenants_tenant_add"))
    data = form_data(page)
    data.update(slug=["carol"], name=["Carol"], **{"subscription-0-plan": [str(world["plan"].pk)]})
    response = admin_client.post(reverse("admin:tenants_tenant_add"), data)
    assert response.status_code == 302, response.context and response.context["errors"]
    carol = Tenant.objects.get(slug="carol")
    assert carol.subscription.plan == world["plan"]
    assert carol.allowed_providers == []


@pytest.mark.django_db
def test_the_tenant_list_shows_the_plan_and_filters_by_it(admin_client, world):
    response = admin_client.get(changelist_url(Tenant) + f"?subscription__plan__id__exact={world['plan'].pk}")
    assert [t.slug for t in response.context["cl"].result_list] == ["alice"]
    assert "enterprise" in response.content.decode()
    Tenant.objects.filter(slug="bob").update(status=Tenant.Status.SUSPENDED)
    for query in ["?status__exact=suspended", "?region=us", "?q=ali"]:
        assert admin_client.get(changelist_url(Tenant) + query).context["cl"].result_count == 1, query


# --- prices --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_billed_price_is_read_only_and_cannot_be_deleted(admin_client, world):
    price = world["gpt"].prices.get()
    page = admin_client.get(change_url(price))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="input_per_1m"' not in html
    assert 'name="_save"' not in html
    assert f"{reverse('admin:billing_modelprice_add')}?model={world['gpt'].pk}&amp;input_per_1m=0.150000" in html

    data = {"model": world["gpt"].pk, "input_per_1m": "99", "output_per_1m": "99"}
    assert admin_client.post(change_url(price), data).status_code == 403
    assert ModelPrice.objects.get(pk=price.pk).input_per_1m == Decimal("0.15")
    assert (
        admin_client.post(reverse("admin:billing_modelprice_delete", args=[price.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert ModelPrice.objects.filter(pk=price.pk).exists()


@pytest.mark.django_db
def test_an_unbilled_price_can_be_edited_and_a_new_price_added(admin_client, world):
    unbilled = world["azure"].prices.get()
    data = form_data(admin_client.get(change_url(unbilled)))
    data["input_per_1m"] = ["2.75"]
    assert admin_client.post(change_url(unbilled), data).status_code == 302
    assert ModelPrice.objects.get(pk=unbilled.pk).input_per_1m == Decimal("2.75")

    add_url = reverse("admin:billing_modelprice_add")
    later = timezone.now() + timedelta(days=1)
    response = admin_client.post(
        add_url,
        {
            "model": world["gpt"].pk,
            "effective_from_0": later.strftime("%Y-%m-%d"),
            "effective_from_1": later.strftime("%H:%M:%S"),
            "input_per_1m": "0.20",
            "output_per_1m": "0.80",
            "tiers-TOTAL_FORMS": "1",
            "tiers-INITIAL_FORMS": "0",
            "tiers-0-above_input_tokens": "200000",
            "tiers-0-input_per_1m": "0.40",
            "tiers-0-output_per_1m": "1.20",
        },
    )
    assert response.status_code == 302
    assert world["gpt"].prices.count() == 2
    added = world["gpt"].prices.order_by("-effective_from").first()
    assert list(added.tiers.values_list("above_input_tokens", "input_per_1m")) == [(200_000, Decimal("0.40"))]


@pytest.mark.django_db
def test_a_price_cannot_be_back_dated_under_billed_usage(admin_client, world):
    response = admin_client.post(
        reverse("admin:billing_modelprice_add"),
        {
            "model": world["gpt"].pk,
            "effective_from_0": "2024-06-01",
            "effective_from_1": "00:00:00",
            "input_per_1m": "0.20",
            "output_per_1m": "0.80",
            "tiers-TOTAL_FORMS": "0",
            "tiers-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "already been billed" in response.content.decode()
    assert world["gpt"].prices.count() == 1


# --- usage ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_usage_records_cannot_be_added_changed_or_deleted(admin_client, world):
    record = UsageRecord.objects.first()
    model_admin = admin.site._registry[UsageRecord]
    request = admin_client.get(changelist_url(UsageRecord)).wsgi_request
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, record)
    assert not model_admin.has_delete_permission(request, record)
    assert admin_client.get(reverse("admin:billing_usagerecord_add")).status_code == 403
    assert admin_client.get(reverse("admin:billing_usagerecord_delete", args=[record.pk])).status_code == 403
    assert admin_client.post(change_url(record), {"status_code": "200"}).status_code == 403
    page = admin_client.get(change_url(record))
    assert page.status_code == 200
    assert page.context["adminform"].form.fields == {}
    assert "delete_selected" not in admin_client.get(changelist_url(UsageRecord)).content.decode()


# --- query counts --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_usage_list_runs_the_same_queries_for_3_or_30_rows(admin_client, catalog):
    tenants = [make_tenant(f"t{i}") for i in range(3)]
    for i, tenant in enumerate(tenants):
        make_usage(tenant, catalog["gpt"], key=api_key_create(tenant=tenant)[0], error_type=f"e{i}")
    url = changelist_url(UsageRecord)
    few = count_queries(admin_client, url)
    for i, tenant in enumerate(tenants):
        make_usage(tenant, [catalog["gpt"], catalog["claude"], catalog["azure"]][i], count=9)
    assert UsageRecord.objects.count() == 30
    assert count_queries(admin_client, url) == few
    assert count_queries(admin_client, url + "?status=2xx&model=adm-gpt") <= few


@pytest.mark.django_db
def test_the_tenant_and_key_lists_run_the_same_queries_for_3_or_30_rows(admin_client, catalog):
    for i in range(3):
        api_key_create(tenant=make_tenant(f"t{i:02}", region="us"), name="k")
    few_tenants = count_queries(admin_client, changelist_url(Tenant))
    few_keys = count_queries(admin_client, changelist_url(ApiKey))
    for i in range(3, 30):
        tenant = make_tenant(f"t{i:02}", plan=Plan.objects.get_or_create(name=f"p{i % 4}")[0], region=f"r{i % 5}")
        api_key_create(tenant=tenant, name="k")
    assert count_queries(admin_client, changelist_url(Tenant)) == few_tenants
    assert count_queries(admin_client, changelist_url(ApiKey)) == few_keys
