"""The admin of the platform policy (one row), prompt templates (versions immutable) and
request logs (read-only, cheap on a large table).
"""

import uuid
from datetime import timedelta

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from tenants.models import PlatformPolicy, PromptTemplate, RequestLog
from tenants.prompting import template_create_version
from tenants.services import Refused, api_key_create, credential_set, platform_policy_update

from .conftest import make_tenant
from .test_admin import count_queries, form_data

POLICY_LIST = "/admin/tenants/platformpolicy/"
POLICY_ADD = "/admin/tenants/platformpolicy/add/"


# --- platform policy ---------------------------------------------------------------------------


def test_the_policy_list_leads_to_the_add_page_until_the_one_row_exists(admin_client, catalog):
    assert admin_client.get(POLICY_LIST).url == POLICY_ADD
    response = admin_client.post(
        POLICY_ADD,
        {
            "blocked_models": ["gpt-test"],
            "blocked_providers": ["azure"],
            "killed_providers": [],
            "max_tokens_cap": "4096",
            "maintenance_message": "",
        },
    )
    assert response.status_code == 302
    policy = PlatformPolicy.objects.get()
    assert (policy.pk, policy.blocked_models, policy.blocked_providers, policy.max_tokens_cap) == (
        1,
        ["gpt-test"],
        ["azure"],
        4096,
    )
    change = reverse("admin:tenants_platformpolicy_change", args=[1])
    assert admin_client.get(POLICY_LIST).url == change
    assert admin_client.get(POLICY_ADD).status_code == 403
    assert admin_client.get(reverse("admin:tenants_platformpolicy_delete", args=[1])).status_code == 403
    assert "delete_selected" not in str(
        admin.site._registry[PlatformPolicy].get_actions(admin_client.get(change).wsgi_request)
    )


def test_the_policy_page_edits_the_row_and_refuses_unknown_names(admin_client, catalog):
    PlatformPolicy.objects.create(pk=1)
    change = reverse("admin:tenants_platformpolicy_change", args=[1])
    data = form_data(admin_client.get(change))

    refused = admin_client.post(change, {**data, "blocked_models": ["no-such-model"], "killed_providers": ["google"]})
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert set(errors) == {"blocked_models", "killed_providers"}
    assert PlatformPolicy.objects.get().blocked_models == []

    saved = admin_client.post(
        change, {**data, "killed_providers": ["openai"], "maintenance_message": "Upgrading, back soon"}
    )
    assert saved.status_code == 302
    policy = PlatformPolicy.objects.get()
    assert (policy.killed_providers, policy.maintenance_message) == (["openai"], "Upgrading, back soon")


def test_a_blocked_model_that_left_the_catalog_can_still_be_unblocked(admin_client, catalog):
    PlatformPolicy.objects.create(pk=1, blocked_models=["retired-model"])
    change = reverse("admin:tenants_platformpolicy_change", args=[1])
    data = form_data(admin_client.get(change))
    assert data["blocked_models"] == ["retired-model"]
    assert admin_client.post(change, {**data, "blocked_models": []}).status_code == 302
    assert PlatformPolicy.objects.get().blocked_models == []


def test_the_policy_service_checks_names(catalog):
    with pytest.raises(Refused, match="unknown provider"):
        platform_policy_update(changes={"blocked_providers": ["google"]})
    assert not PlatformPolicy.objects.exists()
    platform_policy_update(changes={"blocked_models": ["gpt-test", "claude-test"]})
    assert PlatformPolicy.objects.get().blocked_models == ["claude-test", "gpt-test"]


# --- prompt templates --------------------------------------------------------------------------

TEMPLATE_ADD = "/admin/tenants/prompttemplate/add/"
MESSAGES = '[{"role": "system", "content": "You answer as {{persona}}."}]'


def test_staff_add_versions_and_a_saved_version_never_changes(admin_client, alice):
    first = admin_client.post(
        TEMPLATE_ADD, {"tenant": alice.pk, "name": "support", "description": "v1", "messages": MESSAGES}
    )
    assert first.status_code == 302
    v1 = PromptTemplate.objects.get(tenant=alice, name="support")
    assert v1.version == 1

    change = reverse("admin:tenants_prompttemplate_change", args=[v1.pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    assert page.context["adminform"].form.fields == {}  # read-only
    assert "You answer as {{persona}}." in page.content.decode()
    assert f"{TEMPLATE_ADD}?from={v1.pk}" in page.content.decode()
    assert admin_client.post(change, {"description": "edited"}).status_code == 403
    assert admin_client.get(reverse("admin:tenants_prompttemplate_delete", args=[v1.pk])).status_code == 403

    prefilled = form_data(admin_client.get(f"{TEMPLATE_ADD}?from={v1.pk}"))
    assert prefilled["name"] == ["support"]
    assert prefilled["tenant"] == [str(alice.pk)]
    assert "{{persona}}" in prefilled["messages"][0]
    prefilled["messages"] = ['[{"role": "system", "content": "You are {{persona}}, briefly."}]']
    assert admin_client.post(TEMPLATE_ADD, prefilled).status_code == 302

    versions = list(PromptTemplate.objects.filter(tenant=alice, name="support").order_by("version"))
    assert [(t.version, t.messages[0]["content"]) for t in versions] == [
        (1, "You answer as {{persona}}."),
        (2, "You are {{persona}}, briefly."),
    ]


@pytest.mark.parametrize(
    ("name", "messages", "field"),
    [
        ("support", '[{"role": "wizard", "content": "x"}]', "messages"),
        ("support", '[{"role": "user", "content": "{{ user.name }}"}]', "messages"),
        ("support", "[]", "messages"),
        ("bad name!", MESSAGES, "name"),
    ],
)
def test_an_invalid_template_is_refused(admin_client, alice, name, messages, field):
    response = admin_client.post(
        TEMPLATE_ADD, {"tenant": alice.pk, "name": name, "description": "", "messages": messages}
    )
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not PromptTemplate.objects.exists()


# --- request logs ------------------------------------------------------------------------------


def make_logs(tenant, count, *, key=None, at=None):
    at = at or timezone.now()
    return RequestLog.objects.bulk_create(
        RequestLog(
            tenant=tenant,
            api_key=key,
            request_id=uuid.uuid4().hex,
            model="gpt-test",
            endpoint="chat",
            status_code=200,
            request={"messages": [{"role": "user", "content": f"q{i}"}]},
            response={"choices": [{"message": {"content": f"a{i}"}}]},
            created_at=at - timedelta(seconds=i),
        )
        for i in range(count)
    )


def test_request_logs_are_read_only(admin_client, alice):
    log = make_logs(alice, 1)[0]
    model_admin = admin.site._registry[RequestLog]
    request = admin_client.get("/admin/tenants/requestlog/").wsgi_request
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, log)
    assert not model_admin.has_delete_permission(request, log)
    change = reverse("admin:tenants_requestlog_change", args=[log.pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    assert page.context["adminform"].form.fields == {}
    assert "q0" in page.content.decode()
    assert "a0" in page.content.decode()
    assert admin_client.post(change, {"status_code": "500"}).status_code == 403
    assert admin_client.get(reverse("admin:tenants_requestlog_delete", args=[log.pk])).status_code == 403


def test_the_request_log_list_filters_by_tenant_and_date_without_a_full_count(admin_client, alice, bob):
    make_logs(alice, 2)
    make_logs(bob, 1, at=timezone.now() - timedelta(days=400))
    url = "/admin/tenants/requestlog/"
    page = admin_client.get(url)
    assert page.context["cl"].show_full_result_count is False
    assert admin_client.get(url + f"?tenant__id__exact={alice.pk}").context["cl"].result_count == 2
    year = timezone.now().year
    assert admin_client.get(url + f"?created_at__year={year}").context["cl"].result_count == 2
    assert "created_at__year" in page.content.decode()  # the date hierarchy


def test_the_request_log_list_runs_the_same_queries_for_3_or_30_rows(admin_client, catalog):
    tenants = [make_tenant(f"t{i}") for i in range(3)]
    for tenant in tenants:
        make_logs(tenant, 1, key=api_key_create(tenant=tenant)[0])
    url = "/admin/tenants/requestlog/"
    few = count_queries(admin_client, url)
    for tenant in tenants:
        make_logs(tenant, 9, key=api_key_create(tenant=tenant)[0])
    assert RequestLog.objects.count() == 30
    assert count_queries(admin_client, url) == few


def test_the_template_and_credential_lists_run_the_same_queries_for_3_or_30_rows(admin_client, catalog):
    tenants = [make_tenant(f"t{i}") for i in range(3)]
    for tenant in tenants:
        template_create_version(tenant_id=tenant.pk, name="a", messages=[{"role": "user", "content": "x"}])
    url = "/admin/tenants/prompttemplate/"
    few = count_queries(admin_client, url)
    for tenant in tenants:
        for name in "bcdefghij":
            template_create_version(tenant_id=tenant.pk, name=name, messages=[{"role": "user", "content": "x"}])
    assert PromptTemplate.objects.count() == 30
    assert count_queries(admin_client, url) == few

    url = "/admin/tenants/providercredential/"
    for tenant in tenants:
        credential_set(tenant=tenant, provider="openai", secret="sk-0123456789")
    few = count_queries(admin_client, url)
    for i in range(27):
        credential_set(tenant=make_tenant(f"more{i}"), provider="anthropic", secret="sk-0123456789")
    assert count_queries(admin_client, url) == few
