"""The bulk "change plan" admin action on tenants (issue 3, bulk configuration updates)."""

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from billing.models import Plan, Subscription
from tenants.models import Tenant
from tests.conftest import make_tenant


def test_staff_move_several_tenants_to_another_plan_at_once(admin_client, alice, bob):
    carol = Tenant.objects.create(slug="carol", name="Carol")  # created in the admin: no subscription yet
    enterprise = Plan.objects.create(name="enterprise")
    page = admin_client.post(
        "/admin/tenants/tenant/",
        {"action": "change_plan", ACTION_CHECKBOX_NAME: [alice.pk, carol.pk]},
    )
    assert page.status_code == 200
    assert b"Change plan" in page.content
    done = admin_client.post(
        "/admin/tenants/tenant/",
        {"action": "change_plan", ACTION_CHECKBOX_NAME: [alice.pk, carol.pk], "apply": "1", "plan": enterprise.pk},
    )
    assert done.status_code == 302
    plans = dict(Subscription.objects.values_list("tenant__slug", "plan__name"))
    assert plans == {"alice": "enterprise", "bob": "standard", "carol": "enterprise"}


def test_an_invalid_choice_changes_nothing(admin_client, alice):
    make_tenant("dave")
    page = admin_client.post(
        "/admin/tenants/tenant/",
        {"action": "change_plan", ACTION_CHECKBOX_NAME: [alice.pk], "apply": "1", "plan": 999_999},
    )
    assert page.status_code == 200
    assert set(Subscription.objects.values_list("plan__name", flat=True)) == {"standard"}
