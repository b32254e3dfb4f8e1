"""Shared fixtures: named tenants (alice, bob), a small catalog with prices, and key helpers.

Service tests use the ordinary `db` fixture. Tests that talk to a live gateway process use
`transactional_db`, so that what they write is committed and visible to that process.
"""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import ModelPrice, Plan, Subscription
from tenants.models import CatalogModel, Deployment, Tenant
from tenants.services import api_key_create

PRICE_FROM = datetime(2024, 1, 1, tzinfo=UTC)


def make_model(name, provider, upstream, *, input_per_1m, output_per_1m, cached=None, cache_write=None, region=""):
    model = CatalogModel.objects.create(name=name, provider=provider)
    Deployment.objects.create(model=model, provider=provider, upstream=upstream, region=region)
    ModelPrice.objects.create(
        model=model,
        effective_from=PRICE_FROM,
        input_per_1m=Decimal(input_per_1m),
        output_per_1m=Decimal(output_per_1m),
        cached_input_per_1m=None if cached is None else Decimal(cached),
        cache_write_per_1m=None if cache_write is None else Decimal(cache_write),
    )
    return model


def make_tenant(slug, *, plan=None, **fields):
    tenant = Tenant.objects.create(slug=slug, name=slug.title(), **fields)
    plan = plan or Plan.objects.get_or_create(name="standard")[0]
    Subscription.objects.create(tenant=tenant, plan=plan)
    return tenant


@pytest.fixture
def catalog(db):
    """Three models, one per provider, with prices that make exact costs easy to check."""
    return {
        "gpt": make_model(
            "gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", input_per_1m="0.15", output_per_1m="0.60", cached="0.075"
        ),
        "claude": make_model(
            "claude-haiku",
            "anthropic",
            "claude-haiku-4-5",
            input_per_1m="1.00",
            output_per_1m="5.00",
            cached="0.10",
            cache_write="1.25",
        ),
        "azure": make_model("gpt-4o-azure", "azure", "gpt4o-prod-deployment", input_per_1m="2.50", output_per_1m="10.00"),
    }


@pytest.fixture
def alice(db):
    return make_tenant("alice")


@pytest.fixture
def bob(db):
    return make_tenant("bob")


@pytest.fixture
def alice_key(alice):
    return api_key_create(tenant=alice, name="test")[1]


@pytest.fixture
def bob_key(bob):
    return api_key_create(tenant=bob, name="test")[1]
