"""The self-service key API (/v1/keys) over HTTP against live gateway processes, and
`manage.py create_api_key` (docs/keys-api.md).

Most tests use the session's gateway (no key cache). Revocation and changes are also tested on
two more processes whose key cache lasts 5 minutes: a key refused there right after the API
call was forgotten because it was announced (gateway/key_events.py), not because time passed.
"""

import io
from datetime import timedelta
from decimal import Decimal

import anthropic
import httpx2
import openai
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import UsageRecord
from tenants.keys import key_hash
from tenants.models import ApiKey, Project
from tenants.services import api_key_create

from .conftest import start_gateway, stop

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
LONG_CACHE = "300"


def admin_key_for(tenant) -> str:
    return api_key_create(tenant=tenant, name="admin", is_admin=True)[1]


def api(url: str, method: str, path: str, key: str, body=None, *, header: str = "bearer") -> httpx2.Response:
    headers = {"authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    return httpx2.request(method, f"{url}{path}", json=body, headers=headers, timeout=10)


def chat_status(url: str, key: str) -> int:
    return httpx2.post(
        f"{url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}, timeout=10
    ).status_code


@pytest.fixture
def search(alice):
    return Project.objects.create(tenant=alice, name="search")


@pytest.fixture
def alice_admin(alice):
    return admin_key_for(alice)


# --- create, list, read ------------------------------------------------------------------------


def test_an_admin_key_creates_a_key_shown_once_that_calls_models(gateway, catalog, alice, alice_admin, search):
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    body = {
        "name": "search backend",
        "project": "search",
        "rate_limit": {"requests_per_minute": 60, "tokens_per_minute": 50000, "max_concurrent": 4},
        "monthly_budget": "25.00",
        "daily_budget": "1.50",
        "models": ["gpt-test", "claude-test"],
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
    }
    created = api(gateway, "POST", "/v1/keys", alice_admin, body)
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    answer = created.json()
    secret = answer.pop("key")
    row = ApiKey.objects.get(pk=answer["id"])
    # Stored as the body said, hashed; the answer speaks the body's words back.
    assert (row.tenant_id, row.name, row.project_id, row.is_admin) == (alice.pk, "search backend", search.pk, False)
    assert (row.requests_per_minute, row.tokens_per_minute, row.max_concurrent) == (60, 50000, 4)
    assert (row.monthly_budget, row.daily_budget, row.expires_at) == (Decimal("25.00"), Decimal("1.50"), expires)
    assert sorted(row.allowed_models.values_list("name", flat=True)) == ["claude-test", "gpt-test"]
    assert row.key_hash == key_hash(secret, pepper=settings.API_KEY_PEPPER)
    assert secret not in row.key_hash
    assert secret.startswith(row.prefix)
    assert secret.endswith(row.last4)
    assert answer == {
        "object": "api_key",
        "id": row.pk,
        "name": "search backend",
        "display": row.display,
        "admin": False,
        "status": "active",
        "project": "search",
        "rate_limit": {"requests_per_minute": 60, "tokens_per_minute": 50000, "max_concurrent": 4},
        "monthly_budget": "25.00",
        "daily_budget": "1.50",
        "models": ["claude-test", "gpt-test"],
        "created_at": answer["created_at"],
        "expires_at": answer["expires_at"],
        "revoked_at": None,
        "last_used_at": None,
    }
    # The new key works at once, through the SDK; it may use only its models.
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=secret, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(**{**CHAT, "model": "azure-gpt-test"})
    # Listed and read back, never with the secret: its display form only.
    listed = api(gateway, "GET", "/v1/keys", alice_admin).json()
    assert [k["id"] for k in listed["data"]] == sorted(k.pk for k in ApiKey.objects.filter(tenant=alice))
    assert listed["has_more"] is False
    one = api(gateway, "GET", f"/v1/keys/{row.pk}", alice_admin).json()
    assert one == next(k for k in listed["data"] if k["id"] == row.pk)
    assert "key" not in one
    assert one["display"] == f"{row.prefix}…{row.last4}"
    for text in (listed, one):
        assert secret not in str(text)
        assert secret[4:-4] not in str(text)


def test_a_minimal_body_makes_a_key_with_no_settings_of_its_own(gateway, catalog, alice, alice_admin):
    created = api(gateway, "POST", "/v1/keys", alice_admin, {}, header="x-api-key")
    assert created.status_code == 201
    row = ApiKey.objects.get(pk=created.json()["id"])
    assert (row.name, row.project, row.requests_per_minute, row.monthly_budget, row.expires_at) == (
        "default",
        None,
        None,
        None,
        None,
    )
    assert chat_status(gateway, created.json()["key"]) == 200


def test_the_list_pages_by_id(gateway, alice, alice_admin):
    for i in range(3):
        api_key_create(tenant=alice, name=f"k{i}")
    ids = sorted(ApiKey.objects.filter(tenant=alice).values_list("pk", flat=True))
    first = api(gateway, "GET", "/v1/keys?limit=2", alice_admin).json()
    assert ([k["id"] for k in first["data"]], first["has_more"], first["last_id"]) == (ids[:2], True, ids[1])
    rest = api(gateway, "GET", f"/v1/keys?limit=2&after={first['last_id']}", alice_admin).json()
    assert ([k["id"] for k in rest["data"]], rest["has_more"]) == (ids[2:], False)
    bad = api(gateway, "GET", "/v1/keys?limit=0", alice_admin)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "limit")


# --- update, revoke, expiry ----------------------------------------------------------------------


def test_a_change_sets_what_the_body_gives_and_keeps_the_rest(gateway, catalog, alice, alice_admin, search):
    key, secret = api_key_create(
        tenant=alice, name="worker", project=search, requests_per_minute=10, monthly_budget=Decimal("5.00")
    )
    key.allowed_models.set([catalog["gpt"]])
    changed = api(
        gateway,
        "PATCH",
        f"/v1/keys/{key.pk}",
        alice_admin,
        {"rate_limit": {"tokens_per_minute": 1000}, "daily_budget": "0.50", "project": None, "models": []},
    )
    assert changed.status_code == 200, changed.text
    key.refresh_from_db()
    assert (key.name, key.requests_per_minute, key.tokens_per_minute) == ("worker", 10, 1000)
    assert (key.monthly_budget, key.daily_budget, key.project) == (Decimal("5.00"), Decimal("0.50"), None)
    assert list(key.allowed_models.all()) == []  # no models: the tenant's again
    assert changed.json()["project"] is None
    assert changed.json()["models"] == []
    cleared = api(gateway, "PATCH", f"/v1/keys/{key.pk}", alice_admin, {"rate_limit": {"requests_per_minute": None}})
    key.refresh_from_db()
    assert cleared.json()["rate_limit"]["requests_per_minute"] is None
    assert key.requests_per_minute is None
    assert chat_status(gateway, secret) == 200


@pytest.fixture(scope="module")
def warm_pair(mock_llm, django_db_setup):
    """Two gateway processes whose key cache outlives any test: only an announcement refreshes it."""
    processes = [start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS=LONG_CACHE) for _ in range(2)]
    yield [url for _, url in processes]
    for process, _ in processes:
        stop(process)


def test_a_revoked_key_is_refused_at_once_by_every_warm_process(warm_pair, catalog, alice, alice_admin):
    key, secret = api_key_create(tenant=alice, name="to revoke")
    first, second = warm_pair
    assert [chat_status(url, secret) for url in warm_pair] == [200, 200]  # cached by both
    revoked = api(first, "DELETE", f"/v1/keys/{key.pk}", alice_admin)
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert chat_status(second, secret) == 401  # the other process, right after, its cache notwithstanding
    assert chat_status(first, secret) == 401
    # Revoking again changes nothing; a revoked key cannot be changed back to life.
    again = api(first, "DELETE", f"/v1/keys/{key.pk}", alice_admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    patched = api(second, "PATCH", f"/v1/keys/{key.pk}", alice_admin, {"name": "alive?"})
    assert (patched.status_code, patched.json()["error"]["code"]) == (400, "key_revoked")
    key.refresh_from_db()
    assert key.name == "to revoke"


def test_a_changed_key_is_seen_at_once_by_every_warm_process(warm_pair, catalog, alice, alice_admin):
    key, secret = api_key_create(tenant=alice, name="to narrow")
    first, second = warm_pair
    assert [chat_status(url, secret) for url in warm_pair] == [200, 200]
    narrowed = api(first, "PATCH", f"/v1/keys/{key.pk}", alice_admin, {"models": ["claude-test"]})
    assert narrowed.status_code == 200
    assert chat_status(second, secret) == 403  # gpt-test is no longer this key's
    assert chat_status(first, secret) == 403


def test_an_expired_key_is_refused_listed_as_expired_and_can_be_extended(gateway, catalog, alice, alice_admin):
    soon = (timezone.now() + timedelta(hours=1)).isoformat()
    created = api(gateway, "POST", "/v1/keys", alice_admin, {"expires_at": soon}).json()
    assert chat_status(gateway, created["key"]) == 200
    # An hour later (the row is moved, rather than the clock of a process we cannot reach).
    ApiKey.objects.filter(pk=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert chat_status(gateway, created["key"]) == 401
    assert api(gateway, "GET", f"/v1/keys/{created['id']}", alice_admin).json()["status"] == "expired"
    later = (timezone.now() + timedelta(days=1)).isoformat()
    extended = api(gateway, "PATCH", f"/v1/keys/{created['id']}", alice_admin, {"expires_at": later})
    assert extended.json()["status"] == "active"
    assert chat_status(gateway, created["key"]) == 200


# --- who may: admin versus ordinary keys, and tenants apart --------------------------------------


def test_an_admin_key_calls_no_model_in_either_wire_format(gateway, catalog, alice, alice_admin):
    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_admin, max_retries=0).chat.completions.create(**CHAT)
    assert refused.value.code == "admin_key_cannot_call_models"
    assert "admin key" in refused.value.message
    with pytest.raises(anthropic.PermissionDeniedError) as refused_messages:
        anthropic.Anthropic(base_url=gateway, api_key=alice_admin, max_retries=0).messages.create(
            model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused_messages.value.body["error"]["type"] == "permission_error"
    assert "admin key" in refused_messages.value.body["error"]["message"]
    models = httpx2.get(f"{gateway}/v1/models", headers={"authorization": f"Bearer {alice_admin}"}, timeout=10)
    assert models.status_code == 403
    # The refusals are metered like any other, on the admin key, costing nothing.
    records = UsageRecord.objects.filter(tenant=alice)
    assert sorted(records.values_list("status_code", "error_type")) == [
        (403, "admin_key_cannot_call_models"),
        (403, "admin_key_cannot_call_models"),
    ]
    assert all(r.cost == 0 for r in records)


def test_an_ordinary_key_manages_no_key(gateway, alice, alice_key):
    before = ApiKey.objects.count()
    key = ApiKey.objects.get(tenant=alice)
    for method, path, body in (
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"name": "mine"}),
        ("GET", f"/v1/keys/{key.pk}", None),
        ("PATCH", f"/v1/keys/{key.pk}", {"name": "renamed"}),
        ("DELETE", f"/v1/keys/{key.pk}", None),
    ):
        answer = api(gateway, method, path, alice_key, body)
        assert answer.status_code == 403, (method, path)
        assert answer.json()["error"]["code"] == "admin_key_required"
    key.refresh_from_db()
    assert (ApiKey.objects.count(), key.name, key.revoked_at) == (before, "test", None)


def test_admin_keys_are_neither_made_nor_changed_through_the_api(gateway, alice, alice_admin):
    other_admin = ApiKey.objects.get(tenant=alice, is_admin=True)
    made = api(gateway, "POST", "/v1/keys", alice_admin, {"name": "boss", "admin": True})
    assert (made.status_code, made.json()["error"]["param"]) == (400, "admin")
    for method, body in (("PATCH", {"name": "x"}), ("DELETE", None)):
        answer = api(gateway, method, f"/v1/keys/{other_admin.pk}", alice_admin, body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "admin_key_not_managed")
    other_admin.refresh_from_db()
    assert (other_admin.name, other_admin.revoked_at) == ("admin", None)
    assert ApiKey.objects.filter(tenant=alice, is_admin=True).count() == 1
    listed = api(gateway, "GET", "/v1/keys", alice_admin).json()["data"]
    assert [k["admin"] for k in listed] == [True]


def test_nothing_crosses_tenants(gateway, alice, bob, alice_admin, bob_key):
    Project.objects.create(tenant=bob, name="bobs")
    bobs = ApiKey.objects.get(tenant=bob)
    unknown = api(gateway, "GET", "/v1/keys/999999999", alice_admin)
    assert unknown.status_code == 404
    for method, body in (("GET", None), ("PATCH", {"name": "taken"}), ("DELETE", None)):
        answer = api(gateway, method, f"/v1/keys/{bobs.pk}", alice_admin, body)
        assert (answer.status_code, answer.json()) == (404, unknown.json())  # the same as no such key
    bobs.refresh_from_db()
    assert (bobs.name, bobs.revoked_at) == ("test", None)
    assert chat_status(gateway, bob_key) != 401
    assert all(k["id"] != bobs.pk for k in api(gateway, "GET", "/v1/keys", alice_admin).json()["data"])
    # Another tenant's project is, for alice, a project that does not exist.
    made = api(gateway, "POST", "/v1/keys", alice_admin, {"project": "bobs"})
    assert (made.status_code, made.json()["error"]["param"]) == (400, "project")
    assert not ApiKey.objects.filter(tenant=alice, is_admin=False).exists()


def test_a_suspended_tenant_lists_its_keys_but_makes_none(gateway, alice, alice_admin):
    alice.status = alice.Status.SUSPENDED
    alice.save(update_fields=["status"])
    assert api(gateway, "GET", "/v1/keys", alice_admin).status_code == 200
    refused = api(gateway, "POST", "/v1/keys", alice_admin, {})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "tenant_suspended")
    assert ApiKey.objects.filter(tenant=alice).count() == 1


# --- validation: the configuration file's words and checks ---------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"rate_limit": {"requests_per_minute": 0}}, "rate_limit.requests_per_minute", "whole number from 1"),
        ({"rate_limit": {"max_concurrent": "4"}}, "rate_limit.max_concurrent", "whole number from 1"),
        ({"rate_limit": {"burst": 4}}, "rate_limit.burst", "unknown key"),
        ({"rate_limit": 5}, "rate_limit", "must be an object"),
        ({"monthly_budget": 10}, "monthly_budget", "not a JSON number"),
        ({"monthly_budget": "ten"}, "monthly_budget", "plain decimal number"),
        ({"daily_budget": "0"}, "daily_budget", "above zero"),
        ({"daily_budget": "1.005"}, "daily_budget", "decimal places"),
        ({"models": ["gpt-test", "gpt-nope"]}, "models", 'unknown model "gpt-nope"'),
        ({"models": "gpt-test"}, "models", "must be a list"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "in the future"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at", "has no offset"),
        ({"expires_at": "next week"}, "expires_at", "ISO 8601"),
        ({"name": ""}, "name", "non-empty string"),
        ({"project": "nope"}, "project", 'unknown project "nope"'),
        ({"region": "eu"}, "region", "unknown key"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field_and_makes_nothing(
    gateway, catalog, alice, alice_admin, body, param, words
):
    answer = api(gateway, "POST", "/v1/keys", alice_admin, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert words in error["message"]
    assert not ApiKey.objects.filter(tenant=alice, is_admin=False).exists()


def test_a_bad_change_is_a_400_and_changes_nothing(gateway, catalog, alice, alice_admin):
    key, _ = api_key_create(tenant=alice, name="steady", requests_per_minute=5)
    answer = api(
        gateway, "PATCH", f"/v1/keys/{key.pk}", alice_admin, {"name": "new", "rate_limit": {"requests_per_minute": -1}}
    )
    assert (answer.status_code, answer.json()["error"]["param"]) == (400, "rate_limit.requests_per_minute")
    key.refresh_from_db()
    assert (key.name, key.requests_per_minute) == ("steady", 5)
    not_json = httpx2.post(
        f"{gateway}/v1/keys", content=b"{", headers={"authorization": f"Bearer {alice_admin}"}, timeout=10
    )
    assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, "invalid_json")


# --- manage.py create_api_key --------------------------------------------------------------------


def test_the_command_prints_the_new_key_last(gateway, catalog, alice, search):
    out = io.StringIO()
    call_command("create_api_key", "alice", "--project", "search", "--name", "ci", stdout=out)
    lines = out.getvalue().splitlines()
    secret = lines[-1]
    key = ApiKey.objects.get(tenant=alice, name="ci")
    assert (key.project, key.is_admin) == (search, False)
    assert key.display in lines[0]
    assert secret not in "\n".join(lines[:-1])
    assert chat_status(gateway, secret) == 200


def test_the_command_makes_an_admin_key_that_manages_keys(gateway, alice):
    out = io.StringIO()
    call_command("create_api_key", "alice", "--admin", stdout=out)
    admin = out.getvalue().splitlines()[-1]
    assert ApiKey.objects.get(tenant=alice).is_admin
    assert api(gateway, "POST", "/v1/keys", admin, {"name": "from the admin"}).status_code == 201


@pytest.mark.parametrize("args", [("nobody",), ("alice", "--project", "nope")])
def test_the_command_refuses_an_unknown_tenant_or_project(alice, args):
    with pytest.raises(CommandError):
        call_command("create_api_key", *args, stdout=io.StringIO())
    assert not ApiKey.objects.exists()
