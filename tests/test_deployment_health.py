"""The staff's deployment health list (console/deployment_health.py, issue 13 part 4): the routing
store driven through the router with failures on a ManualClock (Redis and memory, as
tests/test_routing.py), then the admin page read: the broken deployment cooling down until when,
the other in rotation, and /metrics' `gateway_breaker_state` saying the same. Staff only; one query
and one routing store round trip however many deployments.
"""

import asyncio
import os
import random
import re
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gateway import limits, routing
from gateway.providers import ProviderError
from gateway.registry import DeploymentView, ModelView
from gateway.routing.store import RedisRouting
from tenants.models import CatalogModel, Deployment

pytestmark = pytest.mark.django_db

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/12"
START_MS = 1_800_000_000_000 - 1_800_000_000_000 % 60_000 + 5000
URL = reverse("admin:deployment_health")
METRICS_TOKEN = "metrics-token-for-health-tests"


@pytest.fixture(autouse=True)
def routing_settings(settings):
    settings.REDIS_URL = REDIS_URL
    settings.GATEWAY_BREAKER_FAILURES = 3
    settings.GATEWAY_BREAKER_WINDOW_SECONDS = 10
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 30
    settings.GATEWAY_METRICS_TOKEN = METRICS_TOKEN
    routing.memory_routing.clear()


@pytest.fixture(params=["redis", "memory"])
def backend(request, settings):
    if request.param == "memory":
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def clock():
    with limits.use_clock(limits.ManualClock(START_MS)) as manual:
        yield manual


def run(coroutine):
    async def and_close():
        try:
            return await coroutine
        finally:
            await limits.aclose()

    return asyncio.run(and_close())


def fresh_id() -> int:
    # Random ids (explicit primary keys): the Redis database outlives test runs.
    return random.randrange(10**9, 2 * 10**9)


def routed_model(name: str, *deployments: dict) -> tuple[CatalogModel, list[Deployment]]:
    model = CatalogModel.objects.create(name=name, provider="openai", routing="weighted")
    rows = [
        Deployment.objects.create(id=fresh_id(), model=model, provider="openai", upstream="gpt-4o", **fields)
        for fields in deployments
    ]
    return model, rows


def view(row: Deployment) -> DeploymentView:
    return DeploymentView(
        id=row.pk, provider=row.provider, upstream=row.upstream, region=row.region, base_url=row.base_url
    )


def call_for(model: CatalogModel, views: list[DeploymentView]):
    from types import SimpleNamespace

    model_view = ModelView(
        id=model.pk, name=model.name, provider="openai", deployments=tuple(views), prices=(), routing="priority"
    )
    return SimpleNamespace(
        request_id=f"req-{fresh_id()}",
        model=model_view,
        model_name=model.name,
        requested_model=model.name,
        body={},
        prompt_estimate=10,
    )


async def attempt(model: CatalogModel, target: DeploymentView, views: list[DeploymentView], *, fail: bool):
    """One attempt through the router, as gateway/proxy.py makes it: taken, then failed or answered."""
    plan = await routing.plan(call_for(model, views), views)
    taken = await plan.take(target)
    assert taken is not None, "the deployment was skipped"
    if fail:
        await taken.failed(ProviderError("openai", 500, "server", "boom", True))
    else:
        task = await taken.answered()
        await task
    return taken


def rows_of(html: str) -> dict[int, str]:
    """Each table row's text (tags dropped, spaces folded), by deployment id."""
    rows = {}
    for pk, body in re.findall(r'<tr data-deployment="(\d+)"[^>]*>(.*?)</tr>', html, re.S):
        rows[int(pk)] = " ".join(re.sub(r"<[^>]+>", " ", body).split())
    return rows


def hms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S")


def breaker_gauges(client, model: str) -> dict[int, float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert response.status_code == 200
    text = response.content.decode()
    assert "# TYPE gateway_breaker_state gauge" in text
    found = re.findall(rf'gateway_breaker_state{{deployment="(\d+)",model="{re.escape(model)}"}} ([\d.]+)', text)
    return {int(pk): float(value) for pk, value in found}


def test_the_page_shows_the_broken_deployment_cooling_down_and_the_other_in_rotation(admin_client, backend, clock):
    model, (broken, healthy) = routed_model(
        f"gpt-health-{backend}",
        {"region": "us", "base_url": "https://account-a.example.com/v1", "weight": 1},
        {"region": "eu", "weight": 3, "requests_per_minute": 500, "tokens_per_minute": 200000},
    )
    views = [view(broken), view(healthy)]

    async def failures():
        for _ in range(3):  # GATEWAY_BREAKER_FAILURES: the third opens the breaker
            await attempt(model, views[0], views, fail=True)
        await attempt(model, views[1], views, fail=True)  # one failure: still in rotation
        clock.advance(0.5)
        await attempt(model, views[1], views, fail=False)

    run(failures())
    opened_at = clock.now_ms()

    response = admin_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    rows = rows_of(html)
    until = hms(opened_at - 500 + 30_000)  # opened by the third failure, before the 0.5 s
    assert f"cooling down until {until} UTC" in rows[broken.pk]
    assert "in rotation" not in rows[broken.pk]
    assert "in rotation" in rows[healthy.pk]
    assert "cooling down" not in rows[healthy.pk]
    # The row's figures: where it runs, its weight and quotas, failures within the window, latency.
    assert "openai: gpt-4o" in rows[broken.pk]
    assert "account-a.example.com" in rows[broken.pk]
    assert "us" in rows[broken.pk]
    assert "platform endpoint" in rows[healthy.pk]
    assert "500 req/min" in rows[healthy.pk]
    assert "200,000 tok/min" in rows[healthy.pk]
    failures_cell = re.search(rf'data-deployment="{healthy.pk}".*?class="num failures">(\d+)<', html, re.S)
    assert failures_cell.group(1) == "1"
    latency = re.search(rf'data-deployment="{healthy.pk}".*?class="num latency">([^<]*)<', html, re.S).group(1)
    assert latency.endswith(" ms")  # measured: the success's latency (real time, not the manual clock)
    assert re.search(rf'data-deployment="{broken.pk}".*?class="num latency">—<', html, re.S)  # never answered
    for pk in (broken.pk, healthy.pk):
        in_flight = re.search(rf'data-deployment="{pk}".*?class="num in-flight">(\d+)<', html, re.S).group(1)
        assert in_flight == "0"  # every attempt ended
    # /metrics agrees: open (1) for the broken one, closed (0) for the other.
    assert breaker_gauges(admin_client, model.name) == {broken.pk: 1.0, healthy.pk: 0.0}

    # The failure window passes: the healthy one's failure is no longer recent.
    clock.advance(10)
    assert re.search(
        rf'data-deployment="{healthy.pk}".*?class="num failures">0<', admin_client.get(URL).content.decode(), re.S
    )
    # The cooldown ends: half-open, the next request probes it; its success brings it back.
    clock.advance(20)
    assert "probing" in rows_of(admin_client.get(URL).content.decode())[broken.pk]

    async def probe():
        taken = await attempt(model, views[0], views, fail=False)
        assert taken.probe

    run(probe())
    assert "in rotation" in rows_of(admin_client.get(URL).content.decode())[broken.pk]
    assert breaker_gauges(admin_client, model.name)[broken.pk] == 0.0


def test_a_catalog_model_s_link_shows_its_deployments_only(admin_client, backend, clock):
    model, (one,) = routed_model("gpt-health-a", {"region": "us"})
    _, (other,) = routed_model("gpt-health-b", {"region": "us"})
    change = admin_client.get(reverse("admin:tenants_catalogmodel_change", args=[model.pk])).content.decode()
    link = f"{URL}?model={model.pk}"
    assert f'href="{link}"' in change
    assert set(rows_of(admin_client.get(link).content.decode())) == {one.pk}
    assert {one.pk, other.pk} <= set(rows_of(admin_client.get(URL).content.decode()))
    assert admin_client.get(URL + "?model=abc").status_code == 400


def test_linked_from_the_dashboard_and_the_catalog_list(admin_client):
    for page in (reverse("admin:index"), reverse("admin:tenants_catalogmodel_changelist")):
        assert f'href="{URL}"' in admin_client.get(page).content.decode(), page


def test_inactive_deployments_and_models_are_not_listed(admin_client, backend):
    model, (active, inactive) = routed_model("gpt-health-c", {"region": "us"}, {"region": "eu", "active": False})
    off, (hidden,) = routed_model("gpt-health-d", {"region": "us"})
    off.active = False
    off.save(update_fields=["active"])
    listed = set(rows_of(admin_client.get(URL).content.decode()))
    assert active.pk in listed
    assert not listed & {inactive.pk, hidden.pk}


def test_staff_only(client):
    user = get_user_model().objects.create_user("someone", password="pw-someone-1")
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    # Staff without the catalog's view permission: refused; with it: the page.
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client.force_login(user)
    assert client.get(URL).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_catalogmodel"))
    user = get_user_model().objects.get(pk=user.pk)
    client.force_login(user)
    assert client.get(URL).status_code == 200


def test_one_query_and_one_store_round_trip_however_many_deployments(admin_client, monkeypatch):
    peeks = []
    original = RedisRouting._run

    async def counted(self, name, keys, args):
        peeks.append((name, len(keys)))
        return await original(self, name, keys, args)

    monkeypatch.setattr(RedisRouting, "_run", counted)

    def read() -> tuple[int, list[str]]:
        peeks.clear()
        with CaptureQueriesContext(connection) as ctx:
            response = admin_client.get(URL)
        assert response.status_code == 200
        deployment_queries = [q["sql"] for q in ctx.captured_queries if '"tenants_deployment"' in q["sql"]]
        assert len(deployment_queries) == 1, deployment_queries
        return len(ctx.captured_queries), list(peeks)

    routed_model("gpt-health-few", {"region": "us"}, {"region": "eu"})
    listed = Deployment.objects.filter(active=True, model__active=True).count()  # the migrations' catalog too
    few, few_peeks = read()
    assert few_peeks == [("peek", listed * 3)]  # three keys a deployment, one script
    for i in range(8):
        routed_model(f"gpt-health-more-{i}", {"region": "us"}, {"region": "eu", "weight": 2})
    many, many_peeks = read()
    assert many == few
    assert many_peeks == [("peek", (listed + 16) * 3)]


def test_an_unreachable_routing_store_is_said_on_the_page(admin_client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: refused at once
    _, (row,) = routed_model("gpt-health-down", {"region": "us"})
    response = admin_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="store-error"' in html
    assert "could not be read" in html
    assert "unknown" in rows_of(html)[row.pk]
