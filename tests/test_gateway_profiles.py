"""Tenant profiles, key scope, platform policy, residency, bring-your-own-key and request logs,
as the gateway applies them to live requests (real SDKs, mock provider, a gateway process).
"""

import anthropic
import httpx2
import openai
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from tenants.crypto import encrypt
from tenants.models import ApiKey, PlatformPolicy, ProviderCredential, RequestLog
from tenants.services import api_key_create

from .conftest import make_model

pytestmark = pytest.mark.django_db(transaction=True)


def chat(gateway, key, **kwargs):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)
    kwargs.setdefault("messages", [{"role": "user", "content": "hello"}])
    return client.chat.completions.with_raw_response.create(**kwargs)


def upstream_requests(mock_llm) -> list[dict]:
    return httpx2.get(f"{mock_llm}/_mock/requests").json()


@pytest.fixture(autouse=True)
def clean_mock(mock_llm):
    httpx2.delete(f"{mock_llm}/_mock/requests")


def test_a_tenant_alias_names_a_catalog_model(gateway, mock_llm, catalog, alice, alice_key):
    alice.model_aliases = {"fast": "gpt-test"}
    alice.save()
    raw = chat(gateway, alice_key, model="fast")
    assert raw.parse().model == "fast"
    assert upstream_requests(mock_llm)[-1]["body"]["model"] == "gpt-4o-mini-2024-07-18"
    assert UsageRecord.objects.get(request_id=raw.headers["x-request-id"]).model == "gpt-test"


def test_default_parameters_fill_in_and_the_max_tokens_ceiling_holds(gateway, mock_llm, catalog, alice, alice_key):
    alice.default_params = {"temperature": 0.2, "top_p": 0.9}
    alice.max_tokens_cap = 40
    alice.save()
    chat(gateway, alice_key, model="gpt-test", temperature=0.7, max_tokens=500)
    sent = upstream_requests(mock_llm)[-1]["body"]
    assert sent["temperature"] == 0.7  # the request's own value wins over the default
    assert sent["top_p"] == 0.9
    assert sent["max_tokens"] == 40
    chat(gateway, alice_key, model="gpt-test")
    assert upstream_requests(mock_llm)[-1]["body"]["max_completion_tokens"] == 40


def test_the_global_cap_is_stricter_than_a_tenant_cap(gateway, mock_llm, catalog, alice, alice_key):
    alice.max_tokens_cap = 100
    alice.save()
    PlatformPolicy.objects.create(pk=1, max_tokens_cap=25)
    client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    client.messages.create(model="claude-test", max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    assert upstream_requests(mock_llm)[-1]["body"]["max_tokens"] == 25


def test_a_key_scoped_to_one_model_cannot_use_another(gateway, catalog, alice):
    key, raw_key = api_key_create(tenant=alice, name="narrow")
    key.allowed_models.set([catalog["claude"]])
    assert chat(gateway, raw_key, model="claude-test").parse().choices
    with pytest.raises(openai.PermissionDeniedError) as error:
        chat(gateway, raw_key, model="gpt-test")
    assert error.value.body["code"] == "model_not_allowed"


@pytest.mark.parametrize(
    ("policy", "status", "code"),
    [
        ({"blocked_models": ["gpt-test"]}, 403, "blocked_by_policy"),
        ({"blocked_providers": ["openai"]}, 403, "blocked_by_policy"),
        ({"killed_providers": ["openai"]}, 503, "provider_disabled"),
        ({"maintenance_message": "Back at 10:00 UTC."}, 503, "maintenance"),
    ],
)
def test_platform_policy_overrides_every_tenant(gateway, catalog, alice_key, policy, status, code):
    PlatformPolicy.objects.create(pk=1, **policy)
    with pytest.raises(openai.APIStatusError) as error:
        chat(gateway, alice_key, model="gpt-test")
    assert error.value.status_code == status
    assert error.value.body["code"] == code
    if code == "maintenance":
        assert error.value.body["message"] == "Back at 10:00 UTC."
    # Other providers are untouched unless the rule says everything.
    if code != "maintenance":
        assert chat(gateway, alice_key, model="claude-test").parse().choices


def test_a_killed_provider_falls_over_to_another_providers_deployment(gateway, mock_llm, catalog, alice_key):
    from tenants.models import Deployment

    Deployment.objects.create(model=catalog["gpt"], provider="azure", upstream="gpt-azure-backup", priority=9)
    PlatformPolicy.objects.create(pk=1, killed_providers=["openai"])
    assert chat(gateway, alice_key, model="gpt-test").parse().choices
    assert upstream_requests(mock_llm)[-1]["path"].endswith("/deployments/gpt-azure-backup/chat/completions")


def test_residency_keeps_an_eu_tenant_in_the_eu(gateway, mock_llm, db):
    from tests.conftest import make_tenant

    both = make_model("gpt-global", "openai", "gpt-us-1", input_per_1m="1", output_per_1m="2", region="us")
    both.deployments.create(provider="azure", upstream="gpt-eu-1", region="eu", priority=5)
    make_model("gpt-us-only", "openai", "gpt-us-2", input_per_1m="1", output_per_1m="2", region="us")
    eu_tenant = make_tenant("eu-corp", region="eu")
    _, key = api_key_create(tenant=eu_tenant)
    for _ in range(3):
        chat(gateway, key, model="gpt-global")
    anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0).messages.create(
        model="gpt-global", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    paths = [r["path"] for r in upstream_requests(mock_llm)]
    assert len(paths) == 4
    assert all(p.endswith("/deployments/gpt-eu-1/chat/completions") for p in paths)
    with pytest.raises(openai.PermissionDeniedError) as error:
        chat(gateway, key, model="gpt-us-only")
    assert error.value.body["code"] == "region_not_allowed"
    assert "`eu`" in error.value.body["message"]
    models = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key).models.list()
    assert [m.id for m in models.data] == ["gpt-global"]


def test_a_tenants_own_provider_key_is_used_for_its_calls_only(gateway, mock_llm, catalog, alice, alice_key, bob_key):
    ProviderCredential.objects.create(
        tenant=alice, provider="openai", encrypted_secret=encrypt("sk-alice-own-account"), last4="ount"
    )
    chat(gateway, alice_key, model="gpt-test")
    chat(gateway, bob_key, model="gpt-test")
    alice_call, bob_call = upstream_requests(mock_llm)[-2:]
    assert alice_call["headers"]["authorization"] == "Bearer sk-alice-own-account"
    assert bob_call["headers"]["authorization"] != "Bearer sk-alice-own-account"


def test_request_logs_are_kept_only_when_the_tenant_asks(gateway, catalog, alice, alice_key, bob_key):
    alice.log_requests = True
    alice.save()
    raw = chat(gateway, alice_key, model="gpt-test", messages=[{"role": "user", "content": "remember me"}])
    answer = raw.parse().choices[0].message.content
    stream = chat(gateway, alice_key, model="claude-test", stream=True)
    streamed_text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    chat(gateway, bob_key, model="gpt-test")
    logs = {log.request_id: log for log in RequestLog.objects.all()}
    assert set(logs) == {raw.headers["x-request-id"], stream.headers["x-request-id"]}
    first = logs[raw.headers["x-request-id"]]
    assert first.tenant_id == alice.id
    assert first.request["messages"] == [{"role": "user", "content": "remember me"}]
    assert first.response["choices"][0]["message"]["content"] == answer
    assert logs[stream.headers["x-request-id"]].response == {"content": streamed_text}


def test_last_used_time_is_recorded(gateway, catalog, alice):
    key, raw_key = api_key_create(tenant=alice)
    before = timezone.now()
    chat(gateway, raw_key, model="gpt-test")
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert key.last_used_at >= before.replace(microsecond=0) - timezone.timedelta(seconds=1)
    assert ApiKey.objects.filter(last_used_at__isnull=False).count() == 1


def test_a_prompt_with_a_nul_character_is_still_billed_and_logged(gateway, catalog, alice, alice_key):
    alice.log_requests = True
    alice.save()
    raw = chat(gateway, alice_key, model="gpt-test", messages=[{"role": "user", "content": "a\u0000b"}])
    assert raw.parse().choices
    request_id = raw.headers["x-request-id"]
    assert UsageRecord.objects.get(request_id=request_id).status_code == 200
    assert RequestLog.objects.get(request_id=request_id).request["messages"][0]["content"] == "ab"


def test_an_unknown_v1_path_is_a_404_in_the_wire_format(gateway, alice_key):
    response = httpx2.get(f"{gateway}/v1/nothing-here", headers={"authorization": f"Bearer {alice_key}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_endpoint"
