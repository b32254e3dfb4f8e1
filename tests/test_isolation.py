"""Tenant isolation, end to end (issue 3, docs/design.md#security): bob's key against alice's names and ids.

Every tenant-facing endpoint and object: templates, request logs, usage, models and model
aliases, templates named in a completion, and keys. Bob must find nothing of alice's: a 404
exactly like the one for a name that never existed (never a 403 that confirms it exists), none
of her data in any body, and her objects untouched by whatever he tries. Live gateway process,
real HTTP (httpx2 and the openai SDK), the project's mock provider upstream.

There is no tenant-facing key endpoint: keys are staff objects (admin, config file). What a
tenant can learn of another's key is covered by what reaches bob: never alice's key, its hash
or its display form, and the hash itself is no key.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import anthropic
import httpx2
import openai
import orjson
import pytest
from django.conf import settings

from billing.models import UsageRecord
from billing.services import usage_rollup
from tenants.keys import key_hash
from tenants.models import ApiKey, Project, PromptTemplate, RequestLog
from tenants.prompting import logs_cursor_encode, template_create_version

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "ALICE-CONFIDENTIAL-7f3a"  # in every piece of alice's data; must never reach bob
DAY = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
MARCH = {"start": "2025-03-01", "end": "2025-03-31"}
ALICE_TEMPLATE = [
    {"role": "system", "content": f"You are {SECRET}'s assistant for {{{{topic}}}}."},
    {"role": "user", "content": "Tell me about {{topic}}."},
]
INTERNALS = ("Traceback", 'File "', "SELECT ", "INSERT ", "psycopg", "django.", "IntegrityError", "DataError")


class Recorder:
    """Bob's HTTP client: every body he receives is kept, so that a test can search them all."""

    def __init__(self, gateway: str, key: str) -> None:
        self.client = httpx2.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=15)
        self.bodies: list[bytes] = []

    def request(self, method: str, path: str, **kwargs) -> httpx2.Response:
        response = self.client.request(method, path, **kwargs)
        self.bodies.append(response.content)
        return response

    def get(self, path: str, **kwargs) -> httpx2.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx2.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs) -> httpx2.Response:
        return self.request("DELETE", path, **kwargs)

    def everything(self) -> bytes:
        return b"\n".join(self.bodies)


@pytest.fixture
def alice_world(catalog, alice, alice_key):
    """Alice's objects: templates, logs, usage, a model alias, a narrowed model list."""
    alice.allowed_models.set([catalog["gpt"]])
    alice.model_aliases = {"alice-private-alias": "gpt-test"}
    alice.log_requests = True
    alice.save()
    template_create_version(tenant_id=alice.id, name="support", messages=ALICE_TEMPLATE, description=SECRET)
    template_create_version(tenant_id=alice.id, name="support", messages=ALICE_TEMPLATE, description=SECRET)
    template_create_version(tenant_id=alice.id, name="alice-only", messages=ALICE_TEMPLATE)
    logs = [
        RequestLog.objects.create(
            tenant=alice,
            request_id=f"alice-request-{n}",
            model="gpt-test",
            endpoint="chat",
            status_code=200,
            request={"messages": [{"role": "user", "content": SECRET}]},
            response={"choices": [{"message": {"content": SECRET}}]},
            created_at=DAY + timedelta(minutes=n),
        )
        for n in range(3)
    ]
    for n in range(4):
        UsageRecord.objects.create(
            request_id=f"alice-usage-{n}",
            created_at=DAY + timedelta(minutes=n),
            tenant=alice,
            model="gpt-test",
            endpoint="chat",
            status_code=200 if n else 500,
            error_type="" if n else "upstream_error",
            input_tokens=1000,
            output_tokens=500,
            cost=Decimal("1.000000"),
        )
    return {"tenant": alice, "key": alice_key, "logs": logs}


@pytest.fixture
def bob_world(catalog, bob, bob_key):
    bob.allowed_models.set([catalog["claude"]])
    bob.save()
    UsageRecord.objects.create(
        request_id="bob-usage-0",
        created_at=DAY,
        tenant=bob,
        model="claude-test",
        endpoint="messages",
        status_code=200,
        input_tokens=10,
        output_tokens=5,
        cost=Decimal("0.000035"),
    )
    RequestLog.objects.create(
        tenant=bob,
        request_id="bob-request-0",
        model="claude-test",
        endpoint="messages",
        status_code=200,
        request={"messages": [{"role": "user", "content": "bob's own"}]},
        response=None,
        created_at=DAY,
    )
    return {"tenant": bob, "key": bob_key}


@pytest.fixture
def as_bob(gateway, alice_world, bob_world):
    recorder = Recorder(gateway, bob_world["key"])
    yield recorder
    # Whatever the test did, nothing bob received may carry alice's data or her key.
    everything = recorder.everything()
    assert SECRET.encode() not in everything
    assert alice_world["key"].encode() not in everything
    recorder.client.close()


def assert_not_found(response: httpx2.Response) -> dict:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "not_found_error"
    return error


def same_error_apart_from_the_name(theirs: httpx2.Response, nobodys: httpx2.Response, theirs_name: str, fake: str):
    """The 404 for alice's object and for a name nobody has must not be told apart."""
    assert theirs.status_code == nobodys.status_code
    assert theirs.json()["error"]["message"].replace(theirs_name, "X") == nobodys.json()["error"]["message"].replace(
        fake, "X"
    )
    assert {k: v for k, v in theirs.json()["error"].items() if k != "message"} == {
        k: v for k, v in nobodys.json()["error"].items() if k != "message"
    }


# --- templates -------------------------------------------------------------------------------


def test_bob_lists_only_his_own_templates(as_bob, alice_world):
    assert as_bob.get("/v1/templates").json() == {"object": "list", "data": []}
    created = as_bob.post("/v1/templates", json={"name": "bobs", "messages": [{"role": "user", "content": "hi"}]})
    assert created.status_code == 201
    assert [t["name"] for t in as_bob.get("/v1/templates").json()["data"]] == ["bobs"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/templates/{name}"),
        ("GET", "/v1/templates/{name}/versions/1"),
        ("GET", "/v1/templates/{name}/versions/2"),
        ("DELETE", "/v1/templates/{name}"),
    ],
)
def test_bob_cannot_read_or_delete_alices_template(as_bob, alice_world, method, path):
    theirs = as_bob.request(method, path.format(name="support"))
    nobodys = as_bob.request(method, path.format(name="nobody-has-this"))
    assert_not_found(theirs)
    assert_not_found(nobodys)
    same_error_apart_from_the_name(theirs, nobodys, "support", "nobody-has-this")
    alice = alice_world["tenant"]
    assert list(PromptTemplate.objects.filter(tenant=alice, name="support").values_list("version", flat=True)) == [
        2,
        1,
    ]


def test_bobs_template_of_the_same_name_is_his_own(as_bob, gateway, alice_world):
    created = as_bob.post("/v1/templates", json={"name": "support", "messages": [{"role": "user", "content": "b"}]})
    assert created.status_code == 201
    assert created.json()["version"] == 1  # alice's two versions do not show through the numbering
    assert created.json()["description"] == ""  # nor does her description carry over
    assert as_bob.get("/v1/templates/support").json()["messages"] == [{"role": "user", "content": "b"}]
    assert as_bob.delete("/v1/templates/support").status_code == 204

    alices = httpx2.get(f"{gateway}/v1/templates/support", headers={"Authorization": f"Bearer {alice_world['key']}"})
    assert alices.status_code == 200
    assert (alices.json()["version"], alices.json()["messages"]) == (2, ALICE_TEMPLATE)


# --- templates named in completions ----------------------------------------------------------


def test_alice_can_use_her_template_in_a_chat(gateway, mock_llm, alice_world):
    """The positive control of the next test: the same request with the owner's key works."""
    httpx2.delete(f"{mock_llm}/_mock/requests")
    response = httpx2.post(
        f"{gateway}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice_world['key']}"},
        json={
            "model": "gpt-test",
            "template": {"name": "support", "variables": {"topic": "invoices"}},
            "messages": [{"role": "user", "content": "and refunds"}],
        },
        timeout=15,
    )
    assert response.status_code == 200, response.text
    sent = httpx2.get(f"{mock_llm}/_mock/requests").json()[-1]["body"]["messages"]
    assert sent == [
        {"role": "system", "content": f"You are {SECRET}'s assistant for invoices."},
        {"role": "user", "content": "Tell me about invoices."},
        {"role": "user", "content": "and refunds"},
    ]


@pytest.mark.parametrize("version", [None, 1, 2])
def test_bob_cannot_use_alices_template_in_a_chat(as_bob, mock_llm, alice_world, bob_world, version):
    httpx2.delete(f"{mock_llm}/_mock/requests")
    template = {"name": "support", "variables": {"topic": "x"}} | ({"version": version} if version else {})
    theirs = as_bob.post("/v1/chat/completions", json={"model": "claude-test", "template": template})
    nobodys = as_bob.post(
        "/v1/chat/completions", json={"model": "claude-test", "template": {**template, "name": "nobody-has-this"}}
    )
    assert_not_found(theirs)
    assert_not_found(nobodys)
    same_error_apart_from_the_name(theirs, nobodys, "support", "nobody-has-this")
    assert httpx2.get(f"{mock_llm}/_mock/requests").json() == []  # nothing of it went upstream


def test_bob_cannot_use_alices_template_through_the_messages_endpoint(gateway, mock_llm, alice_world, bob_world):
    httpx2.delete(f"{mock_llm}/_mock/requests")
    client = anthropic.Anthropic(base_url=gateway, api_key=bob_world["key"], max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="claude-test",
            max_tokens=20,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"template": {"name": "support", "variables": {"topic": "x"}}},
        )
    assert SECRET not in str(caught.value.body)
    assert httpx2.get(f"{mock_llm}/_mock/requests").json() == []


def test_a_missing_template_variable_is_400_with_its_param(gateway, alice_world):
    response = httpx2.post(
        f"{gateway}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice_world['key']}"},
        json={"model": "gpt-test", "template": {"name": "support", "variables": {}}},
        timeout=15,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "template.variables"
    assert "topic" in response.json()["error"]["message"]


# --- request logs ----------------------------------------------------------------------------


def test_bob_cannot_read_alices_request_logs(as_bob, alice_world):
    for log in alice_world["logs"]:
        theirs = as_bob.get(f"/v1/logs/{log.request_id}")
        nobodys = as_bob.get("/v1/logs/nobody-has-this")
        assert_not_found(theirs)
        same_error_apart_from_the_name(theirs, nobodys, log.request_id, "nobody-has-this")
    assert as_bob.get("/v1/logs/bob-request-0").status_code == 200


def test_bob_lists_only_his_own_logs_whatever_the_filter_or_cursor(as_bob, alice_world):
    assert [e["id"] for e in as_bob.get("/v1/logs").json()["data"]] == ["bob-request-0"]
    assert as_bob.get("/v1/logs", params={"model": "gpt-test"}).json()["data"] == []
    assert as_bob.get("/v1/logs", params={"status": 200, "limit": 100}).json()["data"][0]["id"] == "bob-request-0"
    # A cursor pointing just after alice's newest row: a position, never a way into her rows.
    newest = alice_world["logs"][-1]
    cursor = _cursor_after(newest)
    page = as_bob.get("/v1/logs", params={"after": cursor}).json()
    assert [e["id"] for e in page["data"]] == ["bob-request-0"]


def _cursor_after(log: RequestLog) -> str:
    return logs_cursor_encode(created_at=log.created_at + timedelta(seconds=1), log_id=log.id + 1)


# --- usage -----------------------------------------------------------------------------------


def _bobs_totals(as_bob) -> dict:
    response = as_bob.get("/v1/usage", params=MARCH)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_only_bobs_usage(usage: dict) -> None:
    assert usage["tenant"] == "bob"
    totals = usage["totals"]
    assert (totals["requests"], totals["errors"], totals["input_tokens"], totals["output_tokens"]) == (1, 0, 10, 5)
    assert Decimal(totals["cost"]) == Decimal("0.000035")
    assert [m["model"] for m in usage["by_model"]] == ["claude-test"]
    assert "gpt-test" not in orjson.dumps(usage).decode()


def test_bobs_usage_excludes_alices_records(as_bob, alice_world):
    _assert_only_bobs_usage(_bobs_totals(as_bob))


def test_bobs_usage_excludes_alices_records_once_rolled_up(as_bob, alice_world):
    assert usage_rollup(since=date(2025, 3, 1), until=date(2025, 3, 31)).days == [DAY.date()]
    _assert_only_bobs_usage(_bobs_totals(as_bob))


@pytest.mark.parametrize("group_by", ["project", "end_user", "key", "tag:feature"])
def test_bobs_usage_groups_hold_only_his_records(as_bob, alice_world, group_by):
    # alice's records carry her project, end user, key and tags, each named with her secret.
    alice = alice_world["tenant"]
    project = Project.objects.create(tenant=alice, name=f"p-{SECRET}")
    key = ApiKey.objects.get(tenant=alice)
    UsageRecord.objects.filter(tenant=alice).update(
        project=project, api_key=key, end_user=f"user-{SECRET}", tags={"feature": SECRET}
    )
    usage = as_bob.get("/v1/usage", params={**MARCH, "group_by": group_by}).json()
    _assert_only_bobs_usage({k: v for k, v in usage.items() if k not in ("groups", "group_by")})
    assert [(g["group"], g["requests"]) for g in usage["groups"]] == [(None, 1)]
    assert key.display not in orjson.dumps(usage).decode()


# --- models and aliases ----------------------------------------------------------------------


def test_each_tenant_lists_only_its_own_models(gateway, alice_world, bob_world):
    alice_sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_world["key"], max_retries=0)
    bob_sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key=bob_world["key"], max_retries=0)
    assert [m.id for m in alice_sdk.models.list()] == ["gpt-test"]
    assert [m.id for m in bob_sdk.models.list()] == ["claude-test"]


def test_alices_model_alias_means_nothing_to_bob(as_bob, alice_world):
    response = as_bob.post(
        "/v1/chat/completions",
        json={"model": "alice-private-alias", "messages": [{"role": "user", "content": "hi"}]},
    )
    unknown = as_bob.post(
        "/v1/chat/completions", json={"model": "nobody-has-this", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert_not_found(response)
    same_error_apart_from_the_name(response, unknown, "alice-private-alias", "nobody-has-this")


# --- keys and internals ----------------------------------------------------------------------


def test_alices_stored_key_hash_is_no_key_and_never_shown(as_bob, gateway, alice_world):
    alice_key = ApiKey.objects.get(tenant=alice_world["tenant"])
    assert alice_key.key_hash == key_hash(alice_world["key"], pepper=settings.API_KEY_PEPPER)
    # Bob walks every tenant-facing endpoint, his own objects and alice's names alike.
    as_bob.post("/v1/templates", json={"name": "bobs", "messages": [{"role": "user", "content": "{{x}}"}]})
    for path in [
        "/v1/models",
        "/v1/usage?start=2025-03-01&end=2025-03-31",
        "/v1/templates",
        "/v1/templates/bobs",
        "/v1/templates/bobs/versions/1",
        "/v1/templates/support",
        "/v1/logs",
        "/v1/logs/bob-request-0",
        f"/v1/logs/{alice_world['logs'][0].request_id}",
    ]:
        assert as_bob.get(path).status_code in (200, 404), path
    as_bob.post("/v1/chat/completions", json={"model": "claude-test", "messages": [{"role": "user", "content": "x"}]})
    everything = as_bob.everything()
    for secret in (alice_key.key_hash, alice_world["key"], alice_key.display):
        assert secret.encode() not in everything, secret

    # The hash, presented as a key, opens nothing.
    for header in ({"Authorization": f"Bearer {alice_key.key_hash}"}, {"x-api-key": alice_key.key_hash}):
        response = httpx2.get(f"{gateway}/v1/templates", headers=header)
        assert response.status_code == 401
        assert alice_key.key_hash not in response.text


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/v1/templates/%00", {}),
        ("GET", "/v1/templates/support%00", {}),
        ("DELETE", "/v1/templates/" + "x" * 5000, {}),
        ("GET", "/v1/templates/support/versions/99999999999999999999999", {}),
        ("GET", "/v1/templates/support/versions/-1", {}),
        ("GET", "/v1/logs/%00", {}),
        ("GET", "/v1/logs/" + "y" * 5000, {}),
        ("GET", "/v1/logs?model=%00", {}),
        ("GET", "/v1/logs?after=%00", {}),
        ("GET", "/v1/logs?limit=1e9", {}),
        ("GET", "/v1/usage?start=2025-13-01&end=x", {}),
        ("POST", "/v1/templates", {"content": b"\xff\xfe not json"}),
        ("POST", "/v1/templates", {"json": {"name": "n", "messages": [{"role": "user", "content": "\x00"}]}}),
        ("POST", "/v1/templates", {"json": {"name": "n", "description": "\x00", "messages": ALICE_TEMPLATE}}),
        ("POST", "/v1/templates", {"json": {"name": "n" * 10_000, "messages": ALICE_TEMPLATE}}),
        ("POST", "/v1/templates", {"json": {"name": ["support"], "messages": ALICE_TEMPLATE}}),
        ("PUT", "/v1/templates/support", {}),
        ("POST", "/v1/chat/completions", {"json": {"model": "claude-test", "template": {"name": "support\x00"}}}),
        ("POST", "/v1/chat/completions", {"json": {"model": "claude-test", "template": {"name": 5}}}),
        ("POST", "/v1/chat/completions", {"json": {"model": "claude-test", "template": "support"}}),
    ],
)
def test_odd_requests_get_clean_errors_without_internals(as_bob, method, path, kwargs):
    response = as_bob.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for marker in INTERNALS:
        assert marker not in response.text, marker
