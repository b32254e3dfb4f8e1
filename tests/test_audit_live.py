"""The audit trail of the key API over HTTP against a live gateway process, and of
`manage.py create_api_key`: each call is one entry, by the tenant admin key (its display form,
never its secret) or by the command (tests/test_audit.py has the admin, the import and the rest).
"""

import io
import json

import httpx2
import pytest
from django.core.management import call_command

from tenants.models import ApiKey, AuditEntry
from tenants.services import api_key_create

pytestmark = pytest.mark.django_db(transaction=True)


def api(url: str, method: str, path: str, key: str, body=None) -> httpx2.Response:
    return httpx2.request(method, f"{url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)


def new_entries(mark: int) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(pk__gt=mark).order_by("pk"))


def last_id() -> int:
    return AuditEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def test_each_key_api_call_is_one_entry_by_the_admin_key(gateway, catalog, alice):
    admin, admin_secret = api_key_create(tenant=alice, name="admin", is_admin=True)
    actor = ("tenant_key", admin.display, admin.pk)

    mark = last_id()
    created = api(gateway, "POST", "/v1/keys", admin_secret, {"name": "search", "models": ["gpt-test"]})
    assert created.status_code == 201, created.text
    key_id, secret = created.json()["id"], created.json()["key"]
    [create] = new_entries(mark)
    assert (create.actor_kind, create.actor_label, create.api_key_id) == actor
    assert (create.object_type, create.object_id, create.action) == ("tenants.apikey", str(key_id), "create")
    assert create.changes["allowed_models"] == [None, ["gpt-test"]]  # the key and its models: one entry

    mark = last_id()
    changed = api(
        gateway, "PATCH", f"/v1/keys/{key_id}", admin_secret, {"rate_limit": {"requests_per_minute": 5}, "models": []}
    )
    assert changed.status_code == 200, changed.text
    [update] = new_entries(mark)
    assert (update.actor_kind, update.actor_label, update.api_key_id) == actor
    assert update.changes == {"requests_per_minute": [None, 5], "allowed_models": [["gpt-test"], []]}

    mark = last_id()
    assert api(gateway, "DELETE", f"/v1/keys/{key_id}", admin_secret).status_code == 200
    [revoke] = new_entries(mark)
    assert (revoke.action, list(revoke.changes)) == ("update", ["revoked_at"])

    text = json.dumps(list(AuditEntry.objects.values("actor_label", "changes")), default=str)
    for secret_or_hash in (secret, admin_secret, admin.key_hash, ApiKey.objects.get(pk=key_id).key_hash):
        assert secret_or_hash not in text


def test_the_create_api_key_command_is_one_entry_by_the_command(alice):
    mark = last_id()
    out = io.StringIO()
    call_command("create_api_key", "alice", "--name", "ci", stdout=out)
    [entry] = new_entries(mark)
    assert (entry.actor_kind, entry.actor_label, entry.action) == ("command", "create_api_key", "create")
    assert entry.tenant_slug == "alice"
    assert out.getvalue().splitlines()[-1] not in json.dumps(entry.changes)
