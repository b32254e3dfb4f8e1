"""`/v1/usage?group_by=project|end_user|key|tag:<name>` (issue 14 part 6): each grouping's groups are
exactly what the raw records give, add up to the answer's totals, stay inside the caller's tenant,
show keys by their display form only, and a bad `group_by` is a 400 naming it.
"""

import asyncio
from decimal import Decimal
from urllib.parse import urlencode

import orjson
import pytest

from billing.models import UsageRecord, UsageRollupDay
from billing.selectors import UsageGrouping, UsageGroupingUnavailable, usage_summary
from tests.asgi import asgi_request
from tests.attribution_fixtures import MARCH, attribution_world, raw_groups

PERIOD = {"start": MARCH[0], "end": MARCH[4]}

GROUPINGS = {
    "project": (UsageGrouping("project"), lambda r: r.project.name if r.project else None),
    "end_user": (UsageGrouping("end_user"), lambda r: r.end_user or None),
    "key": (UsageGrouping("key"), lambda r: r.api_key.display if r.api_key else None),
    "tag:feature": (UsageGrouping("tag", "feature"), lambda r: r.tags.get("feature")),
    "tag:env": (UsageGrouping("tag", "env"), lambda r: r.tags.get("env")),
}


@pytest.fixture
def world(catalog):
    return attribution_world(catalog)


def _as_tuples(groups: list[dict]) -> dict:
    return {g["group"]: (g["requests"], g["input_tokens"], g["output_tokens"], Decimal(g["cost"])) for g in groups}


@pytest.mark.parametrize("name", GROUPINGS)
def test_each_grouping_gives_what_the_raw_records_give_and_adds_up_to_the_totals(world, name):
    grouping, key = GROUPINGS[name]
    alice = world["alice"]
    summary = usage_summary(tenant_id=alice.id, **PERIOD, grouping=grouping)
    groups = summary["groups"]
    assert summary["group_by"] == name
    assert len({g["group"] for g in groups}) == len(groups)  # one group per value, null once
    assert _as_tuples(groups) == raw_groups(alice, key)
    totals = summary["totals"]
    assert sum(g["requests"] for g in groups) == totals["requests"] == UsageRecord.objects.filter(tenant=alice).count()
    assert sum(g["input_tokens"] for g in groups) == totals["input_tokens"]
    assert sum(g["output_tokens"] for g in groups) == totals["output_tokens"]
    assert sum(Decimal(g["cost"]) for g in groups) == Decimal(totals["cost"])
    # The rest of the answer is the answer without a grouping.
    plain = usage_summary(tenant_id=alice.id, **PERIOD)
    assert {k: v for k, v in summary.items() if k not in ("groups", "group_by")} == plain


def test_records_without_a_project_end_user_or_tag_form_one_null_group(world):
    alice = world["alice"]
    for grouping in (UsageGrouping("project"), UsageGrouping("end_user"), UsageGrouping("tag", "env")):
        groups = usage_summary(tenant_id=alice.id, **PERIOD, grouping=grouping)["groups"]
        assert [g["group"] for g in groups].count(None) == 1, grouping
    projects = _as_tuples(usage_summary(tenant_id=alice.id, **PERIOD, grouping=UsageGrouping("project"))["groups"])
    assert set(projects) == {"search", "chat", None}
    assert projects[None][0] == 10  # two a day over five days


def test_project_groups_of_rolled_up_days_come_from_the_rollups(world):
    alice = world["alice"]
    expected = usage_summary(tenant_id=alice.id, start=MARCH[0], end=MARCH[2], grouping=UsageGrouping("project"))
    # The raw records of the rolled-up days are gone (as the retention job leaves them): same answer.
    UsageRecord.objects.filter(created_at__date__lte=MARCH[2]).delete()
    UsageRollupDay.objects.filter(day__lte=MARCH[2]).update(pruned=True)
    again = usage_summary(tenant_id=alice.id, start=MARCH[0], end=MARCH[2], grouping=UsageGrouping("project"))
    assert again == expected
    assert {g["group"] for g in again["groups"]} == {"search", "chat", None}


def test_a_deleted_project_counts_as_no_project_in_rollups_and_raw_records_alike(world):
    alice = world["alice"]
    before = _as_tuples(usage_summary(tenant_id=alice.id, **PERIOD, grouping=UsageGrouping("project"))["groups"])
    world["chat"].delete()
    after = _as_tuples(usage_summary(tenant_id=alice.id, **PERIOD, grouping=UsageGrouping("project"))["groups"])
    assert set(after) == {"search", None}
    assert after[None][0] == before[None][0] + before["chat"][0]
    assert after[None][3] == before[None][3] + before["chat"][3]


def test_key_groups_show_the_display_form_and_name_never_a_secret(world):
    alice = world["alice"]
    summary = usage_summary(tenant_id=alice.id, **PERIOD, grouping=UsageGrouping("key"))
    named = {g["group"]: g for g in summary["groups"] if g["group"]}
    assert set(named) == {world["search_key"].display, world["plain_key"].display}
    assert named[world["search_key"].display]["name"] == "search-backend"
    assert named[world["search_key"].display]["key_id"] == world["search_key"].id
    text = orjson.dumps(summary, default=str).decode()
    for secret in world["secrets"]:
        assert secret not in text
        assert secret[-12:] not in text


def test_a_grouping_of_raw_records_is_refused_over_pruned_days(world):
    UsageRollupDay.objects.filter(day=MARCH[1]).update(pruned=True)
    alice = world["alice"]
    with pytest.raises(UsageGroupingUnavailable, match="start after 2025-03-02"):
        usage_summary(tenant_id=alice.id, **PERIOD, grouping=UsageGrouping("end_user"))
    # By project, rollups keep it; after the pruned day, raw records are all there.
    assert usage_summary(tenant_id=alice.id, **PERIOD, grouping=UsageGrouping("project"))["groups"]
    assert usage_summary(tenant_id=alice.id, start=MARCH[2], end=MARCH[4], grouping=UsageGrouping("key"))["groups"]


# --- over HTTP ----------------------------------------------------------------------------------


def _get(secret: str, **params) -> tuple[int, dict]:
    status, _, body = asyncio.run(asgi_request("/v1/usage", method="GET", key=secret, query=urlencode(params).encode()))
    return status, orjson.loads(body)


HTTP_PERIOD = {"start": "2025-03-01", "end": "2025-03-05"}


@pytest.mark.django_db(transaction=True)
def test_the_endpoint_answers_groups_of_the_callers_tenant_only(catalog):
    world = _world(catalog)
    status, alice = _get(world["alice_secret"], **HTTP_PERIOD, group_by="project")
    assert status == 200, alice
    assert alice["tenant"] == "alice"
    assert {g["group"] for g in alice["groups"]} == {"search", "chat", None}
    assert sum(g["requests"] for g in alice["groups"]) == alice["totals"]["requests"] == 35
    status, bob = _get(world["bob_secret"], **HTTP_PERIOD, group_by="project")
    assert status == 200, bob
    # bob's project is called "search" too: only his five records are in it.
    assert [(g["group"], g["requests"]) for g in bob["groups"]] == [("search", 5)]
    for grouping in ("end_user", "key", "tag:feature"):
        status, bob = _get(world["bob_secret"], **HTTP_PERIOD, group_by=grouping)
        assert status == 200, bob
        assert sum(g["requests"] for g in bob["groups"]) == bob["totals"]["requests"] == 5
        assert "search-backend" not in orjson.dumps(bob).decode()
        assert world["alice_display"] not in orjson.dumps(bob).decode()
    # Without group_by, the answer is as before: no groups.
    status, plain = _get(world["alice_secret"], **HTTP_PERIOD)
    assert status == 200
    assert "groups" not in plain
    assert "group_by" not in plain


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", ["team", "", "tag:", "tag:a b", "tag:1", "tag:" + "x" * 65, "project,key"])
def test_a_bad_group_by_is_a_400_naming_it(catalog, value):
    world = _world(catalog)
    status, body = _get(world["alice_secret"], **HTTP_PERIOD, group_by=value)
    assert status == 400, body
    assert body["error"]["param"] == "group_by"
    assert "group_by" in body["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_a_grouping_over_pruned_days_is_a_400_naming_group_by(catalog):
    world = _world(catalog)
    UsageRollupDay.objects.filter(day=MARCH[0]).update(pruned=True)
    status, body = _get(world["alice_secret"], **HTTP_PERIOD, group_by="tag:feature")
    assert status == 400, body
    assert body["error"]["param"] == "group_by"
    assert "start after 2025-03-01" in body["error"]["message"]


def _world(catalog) -> dict:
    world = attribution_world(catalog)
    world["alice_display"] = world["search_key"].display
    return world
