"""Provider credentials (bring your own key): encrypted at rest, write-only in the admin,
re-encrypted under a new key by `manage.py rotate_credentials`.
"""

import io

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.contrib.admin.models import LogEntry
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from tenants import crypto
from tenants.models import ProviderCredential
from tenants.selectors import credential_secret
from tenants.services import Refused, credential_set, credentials_reencrypt

SECRET = "sk-ant-api03-alice-0123456789abcdefXYZW"
OTHER = "sk-proj-platform-9876543210zyxw"


@pytest.fixture
def old_key(settings):
    """One encryption key in force, as in production; the crypto cache cleared around the test."""
    key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [key]
    crypto._fernet.cache_clear()
    yield key
    crypto._fernet.cache_clear()


def use_keys(settings, *keys):
    settings.FIELD_ENCRYPTION_KEYS = list(keys)
    crypto._fernet.cache_clear()


def raw_rows() -> list[tuple]:
    """Every column of every credential row, straight from the table."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ProviderCredential._meta.db_table}")  # noqa: S608 - our own table name
        return cursor.fetchall()


# --- services and selector ---------------------------------------------------------------------


def test_a_saved_secret_is_in_no_column_and_decrypts_back(old_key, alice):
    credential = credential_set(tenant=alice, provider="anthropic", secret=SECRET, base_url="https://eu.example.com")

    rows = raw_rows()
    assert len(rows) == 1
    for column in rows[0]:
        assert SECRET not in str(column)
        assert SECRET[:12] not in str(column)
    assert credential.last4 == "XYZW"
    assert crypto.decrypt(credential.encrypted_secret) == SECRET
    assert credential_secret(tenant_id=alice.pk, provider="anthropic") == (SECRET, "https://eu.example.com")
    assert credential_secret(tenant_id=alice.pk, provider="openai") is None
    assert credential_secret(tenant_id=None, provider="anthropic") is None  # the platform's is another row


def test_a_new_secret_deactivates_the_previous_one(old_key, alice, bob):
    first = credential_set(tenant=alice, provider="openai", secret=OTHER)
    bobs = credential_set(tenant=bob, provider="openai", secret="sk-bob-0000000000")
    platform = credential_set(tenant=None, provider="openai", secret="sk-platform-11111111")

    second = credential_set(tenant=alice, provider="openai", secret=SECRET)

    first.refresh_from_db()
    assert not first.active
    assert second.active
    assert credential_secret(tenant_id=alice.pk, provider="openai") == (SECRET, "")
    assert credential_secret(tenant_id=bob.pk, provider="openai") == ("sk-bob-0000000000", "")
    assert credential_secret(tenant_id=None, provider="openai") == ("sk-platform-11111111", "")
    assert ProviderCredential.objects.filter(active=True).count() == 3
    assert {bobs.pk, platform.pk} < set(ProviderCredential.objects.filter(active=True).values_list("pk", flat=True))


@pytest.mark.parametrize(
    ("provider", "secret", "base_url", "fragment"),
    [
        ("google", SECRET, "", "unknown provider"),
        ("openai", "short", "", "at least 8"),
        ("openai", "sk with spaces inside", "", "without spaces"),
        ("openai", SECRET, "ftp://example.com", "http(s) URL"),
    ],
)
def test_bad_credentials_are_refused(old_key, alice, provider, secret, base_url, fragment):
    with pytest.raises(Refused, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        credential_set(tenant=alice, provider=provider, secret=secret, base_url=base_url)
    assert not ProviderCredential.objects.exists()


# --- rotation of the encryption key ------------------------------------------------------------


def test_rotation_re_encrypts_under_the_newest_key_so_the_old_key_can_go(settings, old_key, alice):
    credential = credential_set(tenant=alice, provider="anthropic", secret=SECRET)
    platform = credential_set(tenant=None, provider="openai", secret=OTHER)
    before = dict(ProviderCredential.objects.values_list("pk", "encrypted_secret"))
    new_key = Fernet.generate_key().decode()

    # Before rotating, the new key alone cannot read what the old key wrote.
    use_keys(settings, new_key)
    with pytest.raises(InvalidToken):
        crypto.decrypt(before[credential.pk])

    use_keys(settings, new_key, old_key)
    out = io.StringIO()
    call_command("rotate_credentials", stdout=out)
    assert out.getvalue() == "re-encrypted 2 credential(s)\n"

    after = dict(ProviderCredential.objects.values_list("pk", "encrypted_secret"))
    assert all(after[pk] != before[pk] for pk in before)
    assert credential_secret(tenant_id=alice.pk, provider="anthropic") == (SECRET, "")

    use_keys(settings, new_key)  # the old key removed: everything still decrypts
    assert credential_secret(tenant_id=alice.pk, provider="anthropic") == (SECRET, "")
    assert credential_secret(tenant_id=None, provider="openai") == (OTHER, "")
    assert platform.pk in after

    use_keys(settings, old_key)  # and the old key alone can no longer read them
    for token in after.values():
        with pytest.raises(InvalidToken):
            crypto.decrypt(token)


def test_rotation_refuses_whole_when_a_credential_cannot_be_decrypted(settings, old_key, alice):
    credential_set(tenant=alice, provider="anthropic", secret=SECRET)
    before = list(ProviderCredential.objects.values_list("encrypted_secret", flat=True))
    use_keys(settings, Fernet.generate_key().decode())  # the key that wrote it is gone

    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was re-encrypted"):
        call_command("rotate_credentials", stdout=io.StringIO(), stderr=err)
    assert "cannot be decrypted with any configured key" in err.getvalue()
    assert SECRET not in err.getvalue()
    assert list(ProviderCredential.objects.values_list("encrypted_secret", flat=True)) == before
    with pytest.raises(Refused):
        credentials_reencrypt()


# --- the admin ---------------------------------------------------------------------------------

ADD = "/admin/tenants/providercredential/add/"


def test_staff_enter_a_secret_that_is_never_shown_again(admin_client, old_key, alice):
    form = admin_client.get(ADD)
    html = form.content.decode()
    assert 'type="password"' in html
    assert 'name="secret"' in html

    response = admin_client.post(
        ADD, {"tenant": alice.pk, "provider": "anthropic", "secret": SECRET, "base_url": "https://proxy.example.com"}
    )

    assert response.status_code == 302
    credential = ProviderCredential.objects.get()
    assert credential_secret(tenant_id=alice.pk, provider="anthropic") == (SECRET, "https://proxy.example.com")
    change = reverse("admin:tenants_providercredential_change", args=[credential.pk])
    for url in (change, "/admin/tenants/providercredential/", reverse("admin:tenants_tenant_change", args=[alice.pk])):
        page = admin_client.get(url).content.decode()
        assert SECRET not in page, url
        assert credential.encrypted_secret not in page, url
    assert "…XYZW" in admin_client.get(change).content.decode()
    assert all(SECRET not in f"{e.object_repr} {e.change_message}" for e in LogEntry.objects.all())


def test_a_refused_form_does_not_render_the_secret_back(admin_client, old_key, alice):
    response = admin_client.post(
        ADD, {"tenant": alice.pk, "provider": "anthropic", "secret": SECRET, "base_url": "not a url"}
    )
    assert response.status_code == 200
    assert SECRET not in response.content.decode()
    assert not ProviderCredential.objects.exists()


def test_the_secret_is_required_when_adding(admin_client, old_key, alice):
    response = admin_client.post(ADD, {"tenant": alice.pk, "provider": "openai", "secret": "", "base_url": ""})
    assert response.status_code == 200
    assert "Enter the provider" in response.content.decode()


def test_the_change_page_edits_the_base_url_or_replaces_the_secret(admin_client, old_key, alice):
    credential = credential_set(tenant=alice, provider="openai", secret=OTHER)
    url = reverse("admin:tenants_providercredential_change", args=[credential.pk])
    html = admin_client.get(url).content.decode()
    assert 'name="tenant"' not in html
    assert 'name="provider"' not in html

    assert admin_client.post(url, {"secret": "", "base_url": "https://b.example.com"}).status_code == 302
    assert credential_secret(tenant_id=alice.pk, provider="openai") == (OTHER, "https://b.example.com")
    assert ProviderCredential.objects.count() == 1

    assert admin_client.post(url, {"secret": SECRET, "base_url": "https://b.example.com"}).status_code == 302
    assert ProviderCredential.objects.count() == 2
    assert not ProviderCredential.objects.get(pk=credential.pk).active
    assert credential_secret(tenant_id=alice.pk, provider="openai") == (SECRET, "https://b.example.com")


def test_the_deactivate_action(admin_client, old_key, alice):
    credential = credential_set(tenant=alice, provider="openai", secret=OTHER)
    admin_client.post(
        "/admin/tenants/providercredential/",
        {"action": "deactivate_credentials", "_selected_action": [credential.pk]},
    )
    assert credential_secret(tenant_id=alice.pk, provider="openai") is None
