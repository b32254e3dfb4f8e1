"""Attributed usage for the attribution tests (issue 14 part 6): alice's records spread over two
projects and none, three end users and none, tags and none, two keys and none; bob's own records
beside them. March 1-3 are rolled up, March 4-5 stay raw; the oracle groups the raw records alone.
"""

from collections.abc import Callable
from datetime import date
from decimal import Decimal

from billing.models import UsageRecord
from billing.services import usage_rollup
from tenants.models import Project
from tenants.services import api_key_create
from tests.billing_fixtures import at, save, usage
from tests.conftest import make_tenant

MARCH = [date(2025, 3, day) for day in range(1, 32)]
ROLLED_UP = MARCH[:3]


def attribution_world(catalog) -> dict:
    alice, bob = make_tenant("alice"), make_tenant("bob")
    search = Project.objects.create(tenant=alice, name="search")
    chat = Project.objects.create(tenant=alice, name="chat")
    bobs_project = Project.objects.create(tenant=bob, name="search")  # the same name, another tenant
    search_key, search_secret = api_key_create(tenant=alice, name="search-backend")
    search_key.project = search
    search_key.save(update_fields=["project"])
    plain_key, plain_secret = api_key_create(tenant=alice, name="batch")
    bob_key, bob_secret = api_key_create(tenant=bob, name="bobs")
    records = []
    n = 0
    for day in MARCH[:5]:
        for project, key, end_user, tags, model in (
            (search, search_key, "user-1", {"feature": "chat", "env": "prod"}, catalog["gpt"]),
            (search, search_key, "user-2", {"feature": "search"}, catalog["claude"]),
            (chat, None, "user-1", {"env": "dev"}, catalog["gpt"]),
            (None, plain_key, "", {}, catalog["claude"]),
            (None, plain_key, "user-3", {"feature": "=cmd|' /C calc'!A0"}, catalog["gpt"]),
        ):
            n += 1
            record = usage(alice, model, at(day, 1 + n % 20), input_tokens=1000 + 37 * n, output_tokens=200 + 11 * n)
            record.project, record.api_key, record.end_user, record.tags = project, key, end_user, tags
            records.append(record)
        failed = usage(alice, catalog["gpt"], at(day, 22), status_code=502, error_type="upstream_error", priced=False)
        failed.project, failed.end_user = chat, "user-2"
        hit = usage(alice, catalog["gpt"], at(day, 23), input_tokens=500, output_tokens=50, cache_hit=True)
        hit.project, hit.api_key, hit.tags = search, search_key, {"feature": "chat"}
        theirs = usage(bob, catalog["claude"], at(day, 12), input_tokens=4000, output_tokens=900)
        theirs.project, theirs.api_key, theirs.end_user, theirs.tags = bobs_project, bob_key, "user-1", {"feature": "x"}
        records += [failed, hit, theirs]
    save(*records)
    usage_rollup(since=ROLLED_UP[0], until=ROLLED_UP[-1], now=at(MARCH[5]))
    return {
        "alice": alice,
        "bob": bob,
        "search": search,
        "chat": chat,
        "search_key": search_key,
        "plain_key": plain_key,
        "secrets": (search_secret, plain_secret, bob_secret),
        "alice_secret": plain_secret,
        "bob_secret": bob_secret,
    }


def raw_groups(tenant, key: Callable[[UsageRecord], object], *, start=MARCH[0], end=MARCH[4]) -> dict:
    """The oracle: {group: (requests, input_tokens, output_tokens, cost)} over the raw records alone."""
    groups: dict = {}
    for record in UsageRecord.objects.filter(tenant=tenant, created_at__date__gte=start, created_at__date__lte=end):
        requests, input_tokens, output_tokens, cost = groups.get(key(record), (0, 0, 0, Decimal(0)))
        groups[key(record)] = (
            requests + 1,
            input_tokens + record.input_tokens,
            output_tokens + record.output_tokens,
            cost + record.cost,
        )
    return groups
