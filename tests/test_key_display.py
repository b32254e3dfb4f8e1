"""What a key's display keeps: never enough of a key to help guess it (issue 10).

Short keys from a configuration file (the product description's `ta_xxx`) still import and
work, but nothing of them is stored beside their keyed hash, nor shown by the admin; a long
imported key shows its last 4 only; a generated key keeps `tpk_` + 4 and its last 4.
"""

import importlib
import json

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from config.apply import config_apply
from tenants.keys import key_display_parts, key_generate, key_hash
from tenants.models import ApiKey, Tenant
from tenants.selectors import api_key_for_secret
from tenants.services import api_key_create

SHORT = ["tq_Zk7", "tc_Qv9w8R", "zz-Q8v1Wm3kP0x7Lr2N"]  # 6, 9 and 19 characters: nothing shown
LONG = "zz-Q8v1Wm3kP0x7Lr2NjY"  # 21 characters: 17 stay hidden, the last 4 may show


def pieces(secret: str, size: int) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def stored_text(key: ApiKey) -> str:
    key.refresh_from_db()
    return " ".join(str(getattr(key, field.attname)) for field in ApiKey._meta.concrete_fields)


def test_display_parts_follow_the_rule():
    generated = key_generate()
    assert key_display_parts(generated) == (generated[:8], generated[-4:])
    for short in SHORT:
        assert key_display_parts(short) == ("", "")
    assert key_display_parts(LONG) == ("", LONG[-4:])
    assert key_display_parts("x" * 20) == ("", "xxxx")  # 16 hidden: the least that shows its end
    assert key_display_parts("x" * 19) == ("", "")


@pytest.fixture
def imported(db):
    """The short keys and the long one, imported from a configuration file as the demo does."""
    document = {
        "tenants": {f"tenant_{i}": {"api_key": raw, "billing_plan": "standard"} for i, raw in enumerate([*SHORT, LONG])}
    }
    config_apply(document=json.loads(json.dumps(document)))
    return {raw: api_key_for_secret(raw_key=raw) for raw in [*SHORT, LONG]}


def test_short_imported_keys_work_and_nothing_of_them_is_stored(imported):
    for raw in SHORT:
        key = imported[raw]
        assert key is not None
        assert key.key_hash == key_hash(raw, pepper=settings.API_KEY_PEPPER)
        text = stored_text(key)
        leaked = {piece for piece in pieces(raw, 3) if piece in text}
        assert not leaked, (raw, leaked, text)
        assert key.display == "…"


def test_a_long_imported_key_stores_its_last_four_only(imported):
    key = imported[LONG]
    text = stored_text(key)
    assert LONG[-4:] in text
    assert {piece for piece in pieces(LONG, 3) if piece in text} <= pieces(LONG[-4:], 3)
    assert key.display == "…" + LONG[-4:]


def test_the_admin_shows_nothing_of_a_short_key(admin_client, imported):
    pages = [reverse("admin:tenants_apikey_changelist")]
    for raw in SHORT:
        key = imported[raw]
        pages += [
            reverse("admin:tenants_apikey_change", args=[key.pk]),
            reverse("admin:tenants_tenant_change", args=[key.tenant_id]),
            reverse("admin:tenants_tenant_overview", args=[key.tenant_id]),
        ]
    html = ""
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html += response.content.decode()
    for raw in SHORT:
        assert not {piece for piece in pieces(raw, 4) if piece in html}, raw
    assert LONG[-4:] in html  # what the rule allows is still shown


def test_a_generated_key_keeps_its_prefix_and_last_four(db):
    tenant = Tenant.objects.create(slug="gen", name="Gen")
    key, raw = api_key_create(tenant=tenant, name="generated")
    assert (key.prefix, key.last4) == (raw[:8], raw[-4:])


def test_the_migration_scrubs_parts_stored_before_and_the_admin_history(db):
    """Keys stored by the old rule (first 4 and last 4): an imported key loses both parts, since
    their length is unknown; the admin's history that named it by its display is rewritten."""
    tenant = Tenant.objects.create(slug="old", name="Old")
    generated_raw = key_generate()
    old = [
        ApiKey.objects.create(tenant=tenant, name=name, key_hash=name * 8, prefix=prefix, last4=last4)
        for name, prefix, last4 in [("ta", "tq", "_Zk7"), ("tc", "tc_Q", "9w8R"), ("lg", "zz-Q", "r2Nj")]
    ]
    generated = ApiKey.objects.create(
        tenant=tenant, name="gen", key_hash="g" * 64, prefix=generated_raw[:8], last4=generated_raw[-4:]
    )
    content_type = ContentType.objects.get_for_model(ApiKey)
    user = apps.get_model("auth", "User").objects.create(username="staff")
    entry = LogEntry.objects.create(
        content_type=content_type,
        object_id=str(old[0].pk),
        object_repr="old: tq…_Zk7",
        action_flag=CHANGE,
        change_message="Rotated: replaced by tc_Q…9w8R; works until later.",
        user=user,
    )

    migration = importlib.import_module("tenants.migrations.0005_scrub_key_display_parts")
    migration.scrub(apps, None)

    for key in old:
        key.refresh_from_db()
        assert (key.prefix, key.last4) == ("", "")
    generated.refresh_from_db()
    assert (generated.prefix, generated.last4) == (generated_raw[:8], generated_raw[-4:])
    entry.refresh_from_db()
    assert (entry.object_repr, entry.change_message) == ("old: …", "Rotated: replaced by …; works until later.")
