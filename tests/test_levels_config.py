"""Projects, end users and tags: what is valid (tenants.profiles, gateway.attribution), the same
checks in the configuration file and the staff admin, and the file's round trip (issue 14 parts 1-3)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from config.apply import config_apply
from config.export import config_export
from config.schema import ConfigInvalid
from gateway.attribution import end_user_of, end_user_recorded, tags_of
from gateway.errors import GatewayError
from tenants.models import ApiKey, Project, Tenant
from tenants.profiles import end_user_limits_clean, project_problems
from tenants.services import Refused, api_key_create

from .conftest import make_tenant
from .test_admin import change_url, form_data

# --- the end user and the tags of a request -------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "family", "expected"),
    [
        ({}, {"user": "u-1"}, "openai", "u-1"),
        ({}, {"user": "u-1"}, "responses", "u-1"),
        ({}, {"metadata": {"user_id": "user_ab12_account_3f"}}, "anthropic", "user_ab12_account_3f"),
        ({}, {"user": "not-anthropic's"}, "anthropic", ""),
        ({"x-end-user-id": "header-wins"}, {"user": "u-1"}, "openai", "header-wins"),
        ({"x-end-user-id": "h"}, {"metadata": {"user_id": "m"}}, "anthropic", "h"),
        ({}, {}, "openai", ""),
        ({}, {"user": None}, "openai", ""),
        ({}, {"user": "mail+tag@example.com"}, "openai", "mail+tag@example.com"),
        # Claude Code's own metadata.user_id is a small JSON object: accepted as is.
        (
            {},
            {"metadata": {"user_id": '{"device_id":"ab12","session_id":"5e"}'}},
            "anthropic",
            '{"device_id":"ab12","session_id":"5e"}',
        ),
        ({}, {"user": "Zoë {x}"}, "openai", "Zoë {x}"),
        # Empty is none (the providers accept `"user": ""`); an empty header leaves it to the body.
        ({}, {"user": ""}, "openai", ""),
        ({}, {"user": "   "}, "openai", ""),
        ({}, {"metadata": {"user_id": ""}}, "anthropic", ""),
        ({"x-end-user-id": ""}, {"user": "fine"}, "openai", "fine"),
    ],
)
def test_the_end_user_comes_from_the_header_else_the_body(headers, body, family, expected):
    assert end_user_of(headers, body, family) == expected


@pytest.mark.parametrize(
    ("headers", "body", "family", "where"),
    [
        ({}, {"user": "tab\there"}, "openai", "user"),
        ({}, {"user": "x" * 257}, "openai", "user"),
        ({}, {"user": 5}, "responses", "user"),
        ({}, {"metadata": {"user_id": "nul\x00"}}, "anthropic", "metadata.user_id"),
        ({"x-end-user-id": "x" * 257}, {}, "openai", "x-end-user-id"),
    ],
)
def test_a_bad_end_user_id_is_a_400_naming_where_it_came_from(headers, body, family, where):
    with pytest.raises(GatewayError) as caught:
        end_user_of(headers, body, family)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_end_user", where)
    assert where in caught.value.message


def test_a_hashed_end_user_is_stable_per_tenant_and_not_the_id(settings):
    settings.GATEWAY_END_USER_HASH_KEY = "k1"
    one = end_user_recorded("u-1", tenant_id=7, hashed=True)
    assert one == end_user_recorded("u-1", tenant_id=7, hashed=True)
    assert one != end_user_recorded("u-1", tenant_id=8, hashed=True)
    assert one != end_user_recorded("u-2", tenant_id=7, hashed=True)
    assert len(one) == 64
    assert "u-1" not in one
    assert end_user_recorded("u-1", tenant_id=7, hashed=False) == "u-1"
    settings.GATEWAY_END_USER_HASH_KEY = "k2"
    assert end_user_recorded("u-1", tenant_id=7, hashed=True) != one  # keyed


def test_tags_are_key_value_pairs():
    assert tags_of({}) == {}
    assert tags_of({"x-request-tags": " "}) == {}
    assert tags_of({"x-request-tags": "feature=chat, env=prod"}) == {"feature": "chat", "env": "prod"}
    assert tags_of({"x-request-tags": ",".join(f"k{i}=v{i}" for i in range(10))})["k9"] == "v9"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("feature", "is not a key=value pair"),
        ("feature=", "is not a key=value pair"),
        ("=chat", "is not a key=value pair"),
        ("a=1,,b=2", "is not a key=value pair"),
        ("fe ature=chat", "the key `fe ature`"),
        ("feature=ch at", "the value of `feature`"),
        ("k=" + "v" * 65, "the value of `k`"),
        ("k" * 65 + "=v", "must be 1 to 64"),
        ("a=1,a=2", "appears twice"),
        (",".join(f"k{i}=v" for i in range(11)), "at most 10 tags"),
    ],
)
def test_bad_tags_are_a_400_naming_the_header(header, words):
    with pytest.raises(GatewayError) as caught:
        tags_of({"x-request-tags": header})
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_tags", "x-request-tags")
    assert words in caught.value.message


# --- what a project and end-user limits may be ------------------------------------------------


def test_project_and_end_user_limit_checks():
    assert project_problems(name="search", requests_per_minute=5, monthly_budget=Decimal("50.00")) == []
    assert {p.field for p in project_problems(name="no spaces", max_concurrent=0, monthly_budget=Decimal(0))} == {
        "name",
        "max_concurrent",
        "monthly_budget",
    }
    cleaned, problems = end_user_limits_clean(
        {"requests_per_minute": 20, "monthly_budget": "1.00", "daily_budget": None}
    )
    assert (cleaned, problems) == ({"requests_per_minute": 20, "monthly_budget": "1.00"}, [])
    _, problems = end_user_limits_clean({"rpm": 1, "max_concurrent": -1, "daily_budget": "0.001"})
    assert {p.path for p in problems} == {
        ("end_user_limits", "rpm"),
        ("end_user_limits", "max_concurrent"),
        ("end_user_limits", "daily_budget"),
    }
    assert end_user_limits_clean([1])[1][0].message == "must be an object (or {} for none)"


# --- the configuration file -------------------------------------------------------------------


def errors_of(document) -> set[str]:
    with pytest.raises(ConfigInvalid) as caught:
        config_apply(document=document)
    return {str(error) for error in caught.value.errors}


def test_projects_end_user_limits_and_the_keys_project_are_imported_upserted_and_exported(db):
    document = {
        "tenants": {
            "acme": {
                "billing_plan": "starter",
                "api_key": {"key": "acme_secret_key_1", "project": "search", "daily_budget": "5.00"},
                "projects": {
                    "search": {"monthly_budget": "50.00", "rate_limit": {"requests_per_minute": 60}},
                    "chat": {},
                },
                "end_user_limits": {"requests_per_minute": 20, "monthly_budget": "1.00"},
                "hash_end_user_ids": True,
            }
        }
    }
    changes = config_apply(document=document)
    assert "create project acme.projects.search" in changes
    assert "set acme.projects.search.monthly_budget: 50.00" in changes
    assert "set acme.projects.search.rate_limit.requests_per_minute: 60" in changes
    acme = Tenant.objects.get(slug="acme")
    assert acme.end_user_limits == {"requests_per_minute": 20, "monthly_budget": "1.00"}
    assert acme.hash_end_user_ids is True
    key = ApiKey.objects.get(tenant=acme, name="config")
    assert (key.project.name, key.daily_budget) == ("search", Decimal("5.00"))

    # Upsert: what an entry leaves out is kept; a project left out is kept.
    changes = config_apply(
        document={"tenants": {"acme": {"projects": {"search": {"rate_limit": {"max_concurrent": 2}}}}}}
    )
    assert changes == ["update acme.projects.search.rate_limit.max_concurrent: null → 2"]
    search = Project.objects.get(tenant=acme, name="search")
    assert (search.monthly_budget, search.requests_per_minute, search.max_concurrent) == (Decimal("50.00"), 60, 2)
    assert Project.objects.filter(tenant=acme).count() == 2

    exported = config_export()["tenants"]["acme"]
    assert exported["projects"]["search"] == {
        "monthly_budget": "50.00",
        "rate_limit": {"max_concurrent": 2, "requests_per_minute": 60, "tokens_per_minute": None},
    }
    assert exported["end_user_limits"] == {"monthly_budget": "1.00", "requests_per_minute": 20}
    assert exported["hash_end_user_ids"] is True
    assert config_apply(document={"tenants": {"acme": exported}}) == []


def test_bad_projects_and_end_user_limits_are_refused_with_their_path(db):
    make_tenant("acme")
    errors = errors_of(
        {
            "tenants": {
                "acme": {
                    "projects": {
                        "no spaces": {},
                        "search": {"monthly_budget": "0", "rate_limit": {"requests_per_minute": 0}, "x": 1},
                        "chat": {"monthly_budget": 5},
                    },
                    "end_user_limits": {"rpm": 1, "daily_budget": "-1"},
                    "hash_end_user_ids": "yes",
                    "api_key": {"key": "acme_secret_key_1", "project": "nowhere", "daily_budget": "0.001"},
                }
            }
        }
    )
    assert errors >= {
        "tenants.acme.projects[\"no spaces\"]: is not a project name (letters, digits, '-', '_'), "
        "at most 64 characters",
        "tenants.acme.projects.search.monthly_budget: must be an amount in USD above zero (or null for none)",
        "tenants.acme.projects.search.rate_limit.requests_per_minute: "
        "must be a positive integer (or null for no limit)",
        "tenants.acme.projects.search.x: unknown key (expected one of: monthly_budget, rate_limit)",
        "tenants.acme.end_user_limits.rpm: is not a limit; allowed: requests_per_minute, tokens_per_minute, "
        "max_concurrent, monthly_budget, daily_budget",
        "tenants.acme.hash_end_user_ids: must be true or false",
        'tenants.acme.api_key.project: unknown project "nowhere" (neither in the file nor in the tenant)',
        "tenants.acme.api_key.daily_budget: has more than 2 decimal places",
    }, errors
    assert any(e.startswith("tenants.acme.projects.chat.monthly_budget: must be a decimal string") for e in errors)
    assert any(e.startswith("tenants.acme.end_user_limits.daily_budget:") for e in errors)
    assert not Project.objects.exists()


# --- the staff admin -----------------------------------------------------------------------------


def test_the_admin_edits_projects_under_the_tenant_and_gives_a_key_only_its_tenants_projects(admin_client, db):
    acme, other = make_tenant("acme"), make_tenant("other")
    theirs = Project.objects.create(tenant=other, name="theirs")
    page = admin_client.get(change_url(acme))
    assert page.status_code == 200
    data = form_data(page)
    data.update(
        {
            "projects-TOTAL_FORMS": ["2"],
            "projects-0-name": ["search"],
            "projects-0-monthly_budget": ["50.00"],
            "projects-0-requests_per_minute": ["60"],
            "projects-1-name": ["bad name"],
            "end_user_limits": ['{"requests_per_minute": 20, "daily_budget": "0.10"}'],
        }
    )
    response = admin_client.post(change_url(acme), data)
    assert response.status_code == 200  # the bad project name is refused, nothing saved
    assert "slug" in response.content.decode()  # Django's SlugField says it first
    assert not Project.objects.filter(tenant=acme).exists()
    data["projects-TOTAL_FORMS"] = ["1"]
    response = admin_client.post(change_url(acme), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    search = Project.objects.get(tenant=acme)
    assert (search.name, search.monthly_budget, search.requests_per_minute) == ("search", Decimal("50.00"), 60)
    acme.refresh_from_db()
    assert acme.end_user_limits == {"requests_per_minute": 20, "daily_budget": "0.10"}

    data["end_user_limits"] = ['{"monthly_budget": 0.5}']  # a float: money never is one
    assert "end_user_limits" in admin_client.post(change_url(acme), data).context["adminform"].form.errors

    key, _ = api_key_create(tenant=acme, name="app")
    page = admin_client.get(change_url(key))
    choices = [str(p) for p in page.context["adminform"].form.fields["project"].queryset]
    assert choices == ["acme/search"]
    data = form_data(page)
    data.update(project=[str(theirs.pk)], daily_budget=["1.00"])
    assert "project" in admin_client.post(change_url(key), data).context["adminform"].form.errors
    data.update(project=[str(search.pk)])
    assert admin_client.post(change_url(key), data).status_code == 302
    key.refresh_from_db()
    assert (key.project, key.daily_budget) == (search, Decimal("1.00"))
    with pytest.raises(Refused):
        api_key_create(tenant=acme, project=theirs)
    assert admin_client.get(reverse("admin:tenants_project_changelist")).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_beat_task_resets_project_and_key_day_counters_from_the_records(alice):
    import asyncio
    import uuid

    from django.utils import timezone

    from billing.models import UsageRecord
    from gateway import limits
    from gateway.tasks import reconcile_budget_counters

    search = Project.objects.create(tenant=alice, name="search", monthly_budget=Decimal("10"))
    Project.objects.create(tenant=alice, name="free")
    key, _ = api_key_create(tenant=alice, name="daily", project=search, daily_budget=Decimal("2"))
    now = timezone.now()
    earlier = now - timedelta(days=1) if now.day > 1 else now  # yesterday, unless the month began today
    for cost, at in (("0.25", now), ("0.5", earlier)):
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex,
            created_at=at,
            tenant=alice,
            api_key=key,
            project=search,
            model="gpt-test",
            endpoint="chat",
            status_code=200,
            cost=Decimal(cost),
        )
    month, day = now.strftime("%Y-%m"), now.strftime("%Y-%m-%d")

    async def drift_then_read(drift: bool):
        try:
            if drift:
                await limits.reconcile_level(alice.id, "project", search.id, Decimal("9"), period=month)
                await limits.reconcile_level(alice.id, "key", key.id, Decimal("9"), period=day)
                return None
            store = limits._store()
            return [
                limits.from_units(await store.spend(limits.keys.budget_keys(alice.id, *where).spend))
                for where in (("project", search.id, month), ("key", key.id, day))
            ]
        finally:
            await limits.aclose()

    asyncio.run(drift_then_read(True))
    assert reconcile_budget_counters.apply().get() == 2  # the budgeted project and the key's day
    key_day = Decimal("0.25") if now.day > 1 else Decimal("0.75")
    assert asyncio.run(drift_then_read(False)) == [Decimal("0.75"), key_day]
