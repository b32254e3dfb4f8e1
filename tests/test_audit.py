"""The audit trail (issue 14 part 7): an admin edit, an import, a command and a key API call each
leave one entry with the right actor and diff; secrets never appear; nobody can change or
delete an entry, neither from the admin nor (on PostgreSQL) from SQL.
"""

import csv
import io
import json
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from billing.models import Plan, Subscription
from billing.services import subscriptions_set_plan
from config.apply import config_apply
from tenants import audit, crypto
from tenants.models import ApiKey, AuditEntry, PlatformPolicy, Project, ProviderCredential, Tenant
from tenants.services import (
    api_key_create,
    api_key_revoke,
    credential_set,
    tenants_set_limits,
    tenants_set_models,
)
from tests.conftest import make_model, make_tenant
from tests.test_admin import change_url, form_data

PROVIDER_SECRET = "sk-ant-audit-test-0123456789ABCD"
IMPORTED_KEY = "ta_audit_import_secret_key_0001"


def entries_after(mark: int, **filters) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(pk__gt=mark, **filters).order_by("pk"))


def last_id() -> int:
    return AuditEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def every_entry_text() -> str:
    return json.dumps(
        list(AuditEntry.objects.values("actor_label", "object_repr", "changes")), default=str, ensure_ascii=False
    )


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser(username="sam", email="sam@example.com", password="pw")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def gpt(db):
    return make_model("audit-gpt", "openai", "gpt-x", input_per_1m="0.15", output_per_1m="0.60")


# --- the four ways in -------------------------------------------------------------------------


def test_an_admin_edit_leaves_one_entry_by_the_staff_user_with_the_diff(staff_client, staff, gpt):
    alice = make_tenant("alice")
    key, raw = api_key_create(tenant=alice, name="ci")
    page = staff_client.get(change_url(key))
    data = form_data(page)
    data.update(name=["renamed"], monthly_budget=["12.50"])
    mark = last_id()

    response = staff_client.post(change_url(key), data)

    assert response.status_code == 302
    [entry] = entries_after(mark)
    assert (entry.actor_kind, entry.actor_label, entry.staff_user_id, entry.api_key_id) == (
        "staff",
        "sam",
        staff.pk,
        None,
    )
    assert (entry.object_type, entry.object_id, entry.action) == ("tenants.apikey", str(key.pk), "update")
    assert (entry.tenant_id, entry.tenant_slug) == (alice.pk, "alice")
    assert entry.changes == {"name": ["ci", "renamed"], "monthly_budget": [None, "12.50"]}
    assert raw not in every_entry_text()
    assert key.key_hash not in every_entry_text()


def test_an_admin_edit_of_a_tenant_s_fields_and_models_is_one_entry(staff_client, gpt):
    other = make_model("audit-claude", "anthropic", "claude-x", input_per_1m="1", output_per_1m="5")
    alice = make_tenant("alice")
    alice.allowed_models.set([gpt])
    page = staff_client.get(change_url(alice))
    data = form_data(page)
    data.update(name=["Alice Corp"], allowed_models=[str(other.pk)])
    mark = last_id()

    response = staff_client.post(change_url(alice), data)

    assert response.status_code == 302, response.content.decode()[:2000]
    [entry] = entries_after(mark)
    assert (entry.actor_kind, entry.object_type, entry.action) == ("staff", "tenants.tenant", "update")
    assert entry.changes == {
        "name": ["Alice", "Alice Corp"],
        "allowed_models": [["audit-gpt"], ["audit-claude"]],
    }


def test_an_import_leaves_one_entry_per_object_by_the_import_and_never_the_key(db, gpt, tmp_path):
    Plan.objects.create(name="standard")
    document = {
        "tenants": {
            "acme": {
                "api_key": IMPORTED_KEY,
                "models": ["audit-gpt"],
                "rate_limit": {"requests_per_minute": 100},
                "monthly_budget": "50.00",
                "billing_plan": "standard",
            }
        }
    }
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(document))
    call_command("import_tenants", str(path), stdout=io.StringIO())
    tenant = Tenant.objects.get(slug="acme")
    created = AuditEntry.objects.filter(tenant_id=tenant.pk)
    assert {e.object_type for e in created} == {"tenants.tenant", "tenants.apikey", "billing.subscription"}
    assert all(e.action == "create" and e.actor_kind == "import" for e in created)
    tenant_entry = created.get(object_type="tenants.tenant")
    assert tenant_entry.changes["allowed_models"] == [None, ["audit-gpt"]]  # merged into the create
    assert tenant_entry.changes["requests_per_minute"] == [None, 100]
    assert IMPORTED_KEY not in every_entry_text()
    assert ApiKey.objects.get(tenant=tenant).key_hash not in every_entry_text()

    document["tenants"]["acme"]["rate_limit"]["requests_per_minute"] = 200
    path.write_text(json.dumps(document))
    mark = last_id()
    call_command("import_tenants", str(path), stdout=io.StringIO())

    [entry] = entries_after(mark)
    assert (entry.actor_kind, entry.actor_label) == ("import", f"{path} by import_tenants")
    assert (entry.object_type, entry.action, entry.tenant_slug) == ("tenants.tenant", "update", "acme")
    assert entry.changes == {"requests_per_minute": [100, 200]}


def test_a_dry_run_import_leaves_no_entry(db, gpt):
    Plan.objects.create(name="standard")
    mark = last_id()
    changes = config_apply(
        document={"tenants": {"acme": {"api_key": IMPORTED_KEY, "billing_plan": "standard"}}}, dry_run=True
    )
    assert changes
    assert not Tenant.objects.filter(slug="acme").exists()
    assert entries_after(mark) == []


def test_a_command_leaves_one_entry_by_the_command_with_the_secret_masked(db, settings):
    settings.FIELD_ENCRYPTION_KEYS = [old := Fernet.generate_key().decode()]
    crypto._fernet.cache_clear()
    try:
        alice = make_tenant("alice")
        credential = credential_set(tenant=alice, provider="anthropic", secret=PROVIDER_SECRET)
        settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old]
        crypto._fernet.cache_clear()
        mark = last_id()

        call_command("rotate_credentials", stdout=io.StringIO())
    finally:
        crypto._fernet.cache_clear()

    [entry] = entries_after(mark)
    assert (entry.actor_kind, entry.actor_label) == ("command", "rotate_credentials")
    assert (entry.object_type, entry.object_id, entry.tenant_slug) == (
        "tenants.providercredential",
        str(credential.pk),
        "alice",
    )
    assert entry.changes == {"encrypted_secret": ["[secret]", "[new secret]"]}
    stored = ProviderCredential.objects.get(pk=credential.pk).encrypted_secret
    assert PROVIDER_SECRET not in every_entry_text()
    assert stored not in every_entry_text()


def test_a_key_api_call_leaves_one_entry_by_the_tenant_admin_key(db, gpt):
    """What the key API (/v1/keys, helper "keysapi") does: the service call inside
    `acting(api_key_id=...)` and `collecting()`. A key created with its models is one entry."""
    alice = make_tenant("alice", allowed_providers=[])
    admin_key, _ = api_key_create(tenant=alice, name="admin")
    ApiKey.objects.filter(pk=admin_key.pk).update(is_admin=True)
    mark = last_id()

    with audit.acting(api_key_id=admin_key.pk), audit.collecting():
        key, raw = api_key_create(tenant=alice, name="search", allowed_models=[gpt], monthly_budget=Decimal("5.00"))

    [entry] = entries_after(mark)
    assert (entry.actor_kind, entry.actor_label, entry.api_key_id) == ("tenant_key", admin_key.display, admin_key.pk)
    assert (entry.object_type, entry.object_id, entry.action) == ("tenants.apikey", str(key.pk), "create")
    assert entry.changes["name"] == [None, "search"]
    assert entry.changes["monthly_budget"] == [None, "5.00"]  # Decimal as a string
    assert entry.changes["allowed_models"] == [None, ["audit-gpt"]]
    assert entry.changes["key_hash"] == [None, "[secret]"]
    assert entry.changes["tenant"] == [None, f"alice (#{alice.pk})"]  # a foreign key: its object and id

    mark = last_id()
    with audit.acting(api_key=admin_key):
        api_key_revoke(key=key)
    [revoked] = entries_after(mark)
    assert (revoked.actor_kind, revoked.object_id, revoked.action) == ("tenant_key", str(key.pk), "update")
    assert list(revoked.changes) == ["revoked_at"]
    assert revoked.changes["revoked_at"][0] is None
    assert raw not in every_entry_text()
    assert key.key_hash not in every_entry_text()


# --- what is and is not recorded ---------------------------------------------------------------


def test_a_change_without_an_actor_is_the_system_s_and_a_save_that_changes_nothing_leaves_none(db):
    mark = last_id()
    tenant = Tenant.objects.create(slug="plain", name="Plain")
    [created] = entries_after(mark)
    assert (created.actor_kind, created.actor_label, created.action) == ("system", "system", "create")

    mark = last_id()
    tenant.save()  # nothing changed (updated_at is not configuration)
    key, _ = api_key_create(tenant=tenant)
    mark = last_id()
    key.last_used_at = key.created_at
    key.save(update_fields=["last_used_at"])  # the gateway's bookkeeping is not audited
    ApiKey.objects.get(pk=key.pk).save()
    assert entries_after(mark) == []


def test_bulk_writes_that_bypass_signals_are_audited(db, gpt):
    plan = Plan.objects.create(name="gold")
    alice, bob = make_tenant("alice"), make_tenant("bob")
    mark = last_id()

    tenants_set_limits(tenants=[alice, bob], limits={"requests_per_minute": 7})
    subscriptions_set_plan(tenants=[alice, bob], plan=plan)

    got = [(e.object_type, e.tenant_slug, e.changes) for e in entries_after(mark)]
    standard = Plan.objects.get(name="standard").pk
    assert got == [
        ("tenants.tenant", "alice", {"requests_per_minute": [None, 7]}),
        ("tenants.tenant", "bob", {"requests_per_minute": [None, 7]}),
        ("billing.subscription", "alice", {"plan": [f"standard (#{standard})", f"gold (#{plan.pk})"]}),
        ("billing.subscription", "bob", {"plan": [f"standard (#{standard})", f"gold (#{plan.pk})"]}),
    ]


def test_replacing_a_tenant_s_models_is_one_entry(db, gpt):
    other = make_model("audit-claude", "anthropic", "claude-x", input_per_1m="1", output_per_1m="5")
    alice = make_tenant("alice")
    alice.allowed_models.set([gpt])
    mark = last_id()

    tenants_set_models(tenants=[alice], enable=[other], disable=[gpt])

    [entry] = entries_after(mark)
    assert entry.changes == {"allowed_models": [["audit-gpt"], ["audit-claude"]]}


def test_a_change_rolled_back_inside_a_collecting_block_leaves_no_entry(db):
    """The admin's key rotation: several keys in one savepoint, the second refused, the
    exception caught and reported; the first key's new row was rolled back, so is its entry."""
    alice = make_tenant("alice")
    mark = last_id()

    with audit.collecting():
        try:
            with transaction.atomic():
                api_key_create(tenant=alice, name="undone")
                raise RuntimeError("refused half-way")
        except RuntimeError:
            pass
        alice.name = "Alice kept"
        alice.save()

    got = [(e.object_type, e.changes) for e in entries_after(mark)]
    assert got == [("tenants.tenant", {"name": ["Alice", "Alice kept"]})]


def test_a_deleted_tenant_keeps_its_id_and_slug_in_the_trail(db):
    tenant = make_tenant("gone")
    Project.objects.create(tenant=tenant, name="search", monthly_budget=Decimal("3.00"))
    tenant_id = tenant.pk
    mark = last_id()

    tenant.delete()

    deleted = entries_after(mark)
    assert {e.object_type for e in deleted} >= {"tenants.tenant", "tenants.project", "billing.subscription"}
    assert all((e.action, e.tenant_id, e.tenant_slug) == ("delete", tenant_id, "gone") for e in deleted)
    project = next(e for e in deleted if e.object_type == "tenants.project")
    assert project.changes["monthly_budget"] == ["3.00", None]
    assert AuditEntry.objects.filter(tenant_id=tenant_id, action="create").exists()  # kept


# --- append-only ---------------------------------------------------------------------------------


@pytest.fixture
def entry(db):
    PlatformPolicy.objects.create(pk=1, maintenance_message="back soon")
    return AuditEntry.objects.latest("pk")


def test_the_admin_offers_no_way_to_add_change_or_delete_an_entry(staff_client, entry):
    changelist = reverse("admin:tenants_auditentry_changelist")
    page = staff_client.get(changelist)
    assert page.status_code == 200
    assert 'name="action"' not in page.content.decode()  # no actions, not even "delete selected"

    assert staff_client.get(reverse("admin:tenants_auditentry_add")).status_code == 403
    change = reverse("admin:tenants_auditentry_change", args=[entry.pk])
    assert staff_client.get(change).status_code == 200  # read-only
    assert staff_client.post(change, {"actor_label": "someone else"}).status_code == 403
    delete = reverse("admin:tenants_auditentry_delete", args=[entry.pk])
    assert staff_client.get(delete).status_code == 403
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.get(pk=entry.pk).actor_label == entry.actor_label


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigger is PostgreSQL's")
def test_postgresql_refuses_to_update_or_delete_an_entry(entry):
    for statement in (
        lambda: AuditEntry.objects.filter(pk=entry.pk).update(actor_label="forged"),
        lambda: AuditEntry.objects.filter(pk=entry.pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            statement()
    assert AuditEntry.objects.get(pk=entry.pk).actor_label == entry.actor_label


# --- reading it ------------------------------------------------------------------------------------


def test_the_list_filters_and_the_csv_export_follows_them_defused(staff_client, db):
    alice, bob = make_tenant("alice"), make_tenant("bob")
    evil = get_user_model().objects.create_user(username="=HYPERLINK(1)", is_staff=True)
    with audit.acting(staff=evil):
        alice.name = "Alice 2"
        alice.save()
        bob.name = "Bob 2"
        bob.save()
    changelist = reverse("admin:tenants_auditentry_changelist")
    page = staff_client.get(changelist, {"tenant_slug": "alice", "actor_kind": "staff"})
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == list(
        AuditEntry.objects.filter(tenant_slug="alice", actor_kind="staff")
    )
    assert 'id="audit-export-csv"' in page.content.decode()

    response = staff_client.get(
        reverse("admin:tenants_auditentry_export"), {"tenant_slug": "alice", "actor_kind": "staff"}
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:3] == ["at", "actor_kind", "actor_label"]
    [row] = rows[1:]
    assert row[1:3] == ["staff", "'=HYPERLINK(1)"]  # a formula shown as text
    assert row[6] == "alice"
    assert json.loads(row[11]) == {"name": ["Alice", "Alice 2"]}


def test_subscription_records_stay_tenant_scoped(db):
    alice = make_tenant("alice")
    entry = AuditEntry.objects.get(
        object_type="billing.subscription", object_id=str(Subscription.objects.get(tenant=alice).pk)
    )
    assert (entry.tenant_id, entry.tenant_slug) == (alice.pk, "alice")


# --- coverage of the ways in -----------------------------------------------------------------------


def read_only(command: str) -> bool:
    return command == "mockllm" or command.startswith("export_")  # exports write files, not rows


def test_every_project_command_that_writes_is_an_audited_command():
    """A new command that writes must derive from AuditedCommand, or its changes would be "system"."""
    from django.core.management import get_commands, load_command_class

    ours = {name: app for name, app in get_commands().items() if app in {"tenants", "billing", "gateway", "config"}}
    assert {"import_tenants", "rotate_credentials", "demo"} <= set(ours)
    for name, app in ours.items():
        if not read_only(name):
            assert isinstance(load_command_class(app, name), audit.AuditedCommand), name


def test_an_admin_bulk_action_is_one_entry_per_tenant_by_the_staff_user(staff_client, staff):
    alice, bob = make_tenant("alice"), make_tenant("bob")
    mark = last_id()

    response = staff_client.post(
        reverse("admin:tenants_tenant_changelist"),
        {"action": "suspend_tenants", "_selected_action": [alice.pk, bob.pk]},
    )

    assert response.status_code == 302
    got = [(e.actor_kind, e.staff_user_id, e.tenant_slug, e.changes) for e in entries_after(mark)]
    assert got == [
        ("staff", staff.pk, "alice", {"status": ["active", "suspended"]}),
        ("staff", staff.pk, "bob", {"status": ["active", "suspended"]}),
    ]


def test_a_nested_collecting_block_is_still_all_or_nothing(db):
    """A service refusing inside the admin's block undoes its own writes, as its atomic() did."""
    alice = make_tenant("alice")
    mark = last_id()

    with audit.collecting():
        try:
            with audit.collecting():
                alice.name = "half-way"
                alice.save()
                raise RuntimeError("refused")
        except RuntimeError:
            pass

    assert Tenant.objects.get(pk=alice.pk).name == "Alice"
    assert entries_after(mark) == []


def test_a_collecting_block_leaves_no_commit_callback_of_its_own(db, django_capture_on_commit_callbacks):
    alice = make_tenant("alice")
    with django_capture_on_commit_callbacks() as callbacks, audit.collecting():
        alice.name = "Alice 2"
        alice.save()
    assert callbacks == []
    assert AuditEntry.objects.filter(tenant_id=alice.pk, action="update").count() == 1


def test_the_list_page_costs_the_same_queries_for_many_entries(staff_client):
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert staff_client.get(reverse("admin:tenants_auditentry_changelist")).status_code == 200
        return len(ctx.captured_queries)

    make_tenant("first")
    few = queries()
    for i in range(30):
        make_tenant(f"t{i}")
    assert queries() == few
