"""What a caller may do, over real HTTP against a live gateway (issue 10):

- `/v1/models` lists what this key may use: the tenant's models narrowed by the key's own
  list, minus what platform policy blocks;
- a suspended tenant may read what it has (usage, logs, templates) and nothing else: every
  other endpoint answers 403 `tenant_suspended` in its wire format and changes nothing (its admin
  key may list its keys, not change them). The
  matrix covers every tenant route of gateway/urls.py, so a new endpoint must take a side.
"""

from datetime import timedelta

import anthropic
import httpx2
import openai
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from gateway import urls
from tenants.models import ApiKey, PlatformPolicy, PromptTemplate, StoredResponse, Tenant
from tenants.services import api_key_create
from tests.test_logs_api import make_log

pytestmark = pytest.mark.django_db(transaction=True)


def model_ids(gateway, key) -> list[str]:
    return [m.id for m in openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0).models.list().data]


@pytest.fixture
def alice_models(catalog, alice):
    alice.allowed_models.set(catalog.values())  # not the default catalog of the data migration


def test_models_lists_only_what_the_key_may_use(gateway, catalog, alice, alice_key, alice_models):
    narrow = api_key_create(tenant=alice, name="narrow", allowed_models=[catalog["gpt"], catalog["claude"]])[1]
    assert model_ids(gateway, alice_key) == ["azure-gpt-test", "claude-test", "gpt-test"]
    assert model_ids(gateway, narrow) == ["claude-test", "gpt-test"]
    # What it lists it may call; what it leaves out it may not.
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=narrow, max_retries=0)
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="azure-gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "model_not_allowed"


def test_models_leaves_out_what_platform_policy_blocks(gateway, catalog, alice_key, alice_models):
    PlatformPolicy.objects.create(pk=1, blocked_models=["claude-test"], blocked_providers=["azure"])
    assert model_ids(gateway, alice_key) == ["gpt-test"]


# --- a suspended tenant ----------------------------------------------------------------------

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
COUNT = {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}
EMBEDDINGS = {"model": "gpt-test", "input": "hi"}  # refused as suspended before its kind is looked at
RESPONSES = {"model": "gpt-test", "input": "hi"}
NEW_TEMPLATE = {"name": "fresh", "messages": [{"role": "user", "content": "{{x}}"}]}

# (route in gateway/urls.py, method, path, body, status for a suspended tenant)
SUSPENDED = [
    ("v1/chat/completions", "POST", "/v1/chat/completions", CHAT, 403),
    ("v1/messages", "POST", "/v1/messages", MESSAGES, 403),
    ("v1/messages/count_tokens", "POST", "/v1/messages/count_tokens", COUNT, 403),
    ("v1/embeddings", "POST", "/v1/embeddings", EMBEDDINGS, 403),
    ("v1/responses", "POST", "/v1/responses", RESPONSES, 403),
    ("v1/responses/<str:response_id>", "GET", "/v1/responses/resp_alice", None, 200),
    ("v1/responses/<str:response_id>", "DELETE", "/v1/responses/resp_alice", None, 403),
    ("v1/responses/<str:response_id>/input_items", "GET", "/v1/responses/resp_alice/input_items", None, 200),
    ("v1/models", "GET", "/v1/models", None, 403),
    ("v1/models/<path:model_id>", "GET", "/v1/models/gpt-test", None, 403),
    ("v1/usage", "GET", "/v1/usage?start=2025-03-01&end=2025-03-31", None, 200),
    ("v1/templates", "GET", "/v1/templates", None, 200),
    ("v1/templates", "POST", "/v1/templates", NEW_TEMPLATE, 403),
    ("v1/templates/<str:name>", "GET", "/v1/templates/support", None, 200),
    ("v1/templates/<str:name>", "DELETE", "/v1/templates/support", None, 403),
    ("v1/templates/<str:name>/versions/<str:version>", "GET", "/v1/templates/support/versions/1", None, 200),
    ("v1/logs", "GET", "/v1/logs", None, 200),
    ("v1/logs/<str:request_id>", "GET", "/v1/logs/alice-0001", None, 200),
    # The key API, called with the tenant's admin key ({key}: the id of its ordinary key).
    ("v1/keys", "GET", "/v1/keys", None, 200),
    ("v1/keys", "POST", "/v1/keys", {"name": "new"}, 403),
    ("v1/keys/<str:key_id>", "GET", "/v1/keys/{key}", None, 200),
    ("v1/keys/<str:key_id>", "PATCH", "/v1/keys/{key}", {"name": "renamed"}, 403),
    ("v1/keys/<str:key_id>", "DELETE", "/v1/keys/{key}", None, 403),
]


def test_the_matrix_covers_every_tenant_endpoint():
    routes = {str(p.pattern) for p in urls.urlpatterns if str(p.pattern).startswith("v1/")}
    assert routes == {route for route, *_ in SUSPENDED}


@pytest.fixture
def suspended(catalog, alice, alice_key):
    PromptTemplate.objects.create(tenant=alice, name="support", version=1, messages=[{"role": "user", "content": "x"}])
    make_log(alice, 1)
    # A response the gateway keeps itself (a translated model's): reading it asks no provider.
    StoredResponse.objects.create(
        response_id="resp_alice",
        tenant=alice,
        model="claude-test",
        created_at=timezone.now(),
        expires_at=timezone.now() + timedelta(days=30),
        kept_by_gateway=True,
        input_items=[
            {"id": "msg_1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        ],
        response={
            "id": "resp_alice",
            "object": "response",
            "status": "completed",
            "model": "claude-test",
            "output": [],
        },
    )
    Tenant.objects.filter(pk=alice.pk).update(status=Tenant.Status.SUSPENDED)
    return alice_key


@pytest.mark.parametrize(
    ("route", "method", "path", "body", "status"), SUSPENDED, ids=[f"{r[1]} {r[0]}" for r in SUSPENDED]
)
def test_a_suspended_tenant_may_read_what_it_has_and_nothing_else(
    gateway, suspended, alice, route, method, path, body, status
):
    key = suspended
    if route.startswith("v1/keys"):
        ordinary = ApiKey.objects.get(tenant=alice)
        path = path.replace("{key}", str(ordinary.pk))
        key = api_key_create(tenant=alice, name="admin", is_admin=True)[1]
    response = httpx2.request(
        method, f"{gateway}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == status, response.text
    if status == 403:
        error = response.json()["error"]
        if route.startswith("v1/messages"):
            assert error["type"] == "permission_error"
        else:
            assert error["code"] == "tenant_suspended"
        assert "suspended" in error["message"]
    # Nothing was changed: the template is still there, no new one exists; no key was made or changed.
    assert list(PromptTemplate.objects.values_list("name", "version")) == [("support", 1)]
    assert sorted(ApiKey.objects.values_list("name", "revoked_at")) == sorted(
        [("test", None)] + ([("admin", None)] if route.startswith("v1/keys") else [])
    )


def test_a_suspended_tenants_refused_completions_are_still_metered(gateway, suspended):
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{gateway}/v1", api_key=suspended, max_retries=0).chat.completions.create(**CHAT)
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(base_url=gateway, api_key=suspended, max_retries=0).messages.create(**MESSAGES)
    assert sorted(UsageRecord.objects.values_list("endpoint", "status_code", "error_type")) == [
        ("chat", 403, "tenant_suspended"),
        ("messages", 403, "tenant_suspended"),
    ]
