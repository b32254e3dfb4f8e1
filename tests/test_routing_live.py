"""Routing against a live gateway process (gateway/routing/, docs/routing.md): mock providers on
their own ports as deployments of one model (through `base_url`), the unchanged `openai` SDK as
the client, and the state read afterwards (usage records, what each mock received, the shared
in-flight counters, /metrics).
"""

import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx2
import openai
import pytest

from billing.models import ModelPrice, UsageRecord
from proxy_platform import redis_clients
from tenants.models import CatalogModel, Deployment
from tenants.services import api_key_create

from .conftest import PRICE_FROM, ROOT, free_port, make_tenant, start_gateway, stop, wait_until_up

METRICS_TOKEN = "routing-metrics-token"


def start_mock(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "manage.py", "mockllm", "--port", str(port), *args], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", process)
    except BaseException:
        stop(process)
        raise
    return process, url


@pytest.fixture(scope="module")
def mocks():
    """Two healthy mock providers and one that answers 500 to every model request."""
    started = [start_mock(), start_mock(), start_mock("--fault-rate", "1", "--fault-status", "500")]
    try:
        yield {name: url for name, (_, url) in zip(("a", "b", "failing"), started, strict=True)}
    finally:
        for process, _ in started:
            stop(process)


@pytest.fixture(scope="module")
def routed_gateway(mock_llm, mocks, django_db_setup):
    process, url = start_gateway(
        mock_llm,
        GATEWAY_AUTH_CACHE_SECONDS="0",
        GATEWAY_BREAKER_FAILURES="3",
        GATEWAY_BREAKER_COOLDOWN_SECONDS="600",
        GATEWAY_ROUTING_SEED="13",
        GATEWAY_METRICS_TOKEN=METRICS_TOKEN,
    )
    try:
        yield url
    finally:
        stop(process)


def make_routed_model(name: str, routing: str, *deployments: dict) -> tuple[CatalogModel, list[Deployment]]:
    model = CatalogModel.objects.create(name=name, provider="openai", routing=routing)
    ModelPrice.objects.create(
        model=model, effective_from=PRICE_FROM, input_per_1m=Decimal("0.15"), output_per_1m=Decimal("0.60")
    )
    made = [Deployment.objects.create(model=model, provider="openai", **fields) for fields in deployments]
    return model, made


@pytest.fixture
def client(transactional_db, routed_gateway):
    tenant = make_tenant("router")
    key = api_key_create(tenant=tenant, name="routing")[1]
    return openai.OpenAI(base_url=f"{routed_gateway}/v1", api_key=key, max_retries=0, timeout=30)


def received(mock_url: str, upstream: str) -> int:
    """How many model requests for `upstream` a mock provider received."""
    seen = json.loads(urllib.request.urlopen(f"{mock_url}/_mock/requests").read())
    return sum(1 for r in seen if isinstance(r.get("body"), dict) and r["body"].get("model") == upstream)


def ask(client, model: str, **options):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **options)


def in_flight(*deployments: Deployment) -> list[int]:
    shared = redis_clients.sync_client()  # plain, Cluster or Sentinel: tests/redis_topology.py
    try:
        return [shared.zcard(f"gw:route:{{{d.id}}}:busy") for d in deployments]
    finally:
        shared.close()


def check_records(model: str, answers: list) -> dict[str, int]:
    """Every answer has its record, tokens as the mock reported them and the cost exact; returns
    the records per upstream (deployment)."""
    records = UsageRecord.objects.filter(model=model)
    assert records.count() == len(answers)
    price_in, price_out = Decimal("0.15") / 10**6, Decimal("0.60") / 10**6
    assert all(r.status_code == 200 for r in records)
    assert sum(r.input_tokens for r in records) == sum(a.usage.prompt_tokens for a in answers)
    assert sum(r.output_tokens for r in records) == sum(a.usage.completion_tokens for a in answers)
    for record in records:
        assert record.cost == record.input_tokens * price_in + record.output_tokens * price_out
    counts: dict[str, int] = {}
    for record in records:
        counts[record.upstream_model] = counts.get(record.upstream_model, 0) + 1
    return counts


def test_weighted_one_to_three_over_400_requests(client, mocks):
    _, (a, b) = make_routed_model(
        "gpt-weighted",
        "weighted",
        {"upstream": "gpt-w-a", "base_url": f"{mocks['a']}/v1", "weight": 1},
        {"upstream": "gpt-w-b", "base_url": f"{mocks['b']}/v1", "weight": 3},
    )
    answers = [ask(client, "gpt-weighted") for _ in range(400)]
    counts = check_records("gpt-weighted", answers)
    assert counts["gpt-w-a"] + counts["gpt-w-b"] == 400
    assert abs(counts["gpt-w-a"] / 400 - 0.25) <= 0.05, counts
    # What the providers received is what was recorded: no attempt was lost or doubled.
    assert (received(mocks["a"], "gpt-w-a"), received(mocks["b"], "gpt-w-b")) == (counts["gpt-w-a"], counts["gpt-w-b"])
    assert in_flight(a, b) == [0, 0]


def test_a_failing_deployment_leaves_rotation_once_its_breaker_opens(client, mocks, routed_gateway):
    _, (broken, good) = make_routed_model(
        "gpt-breaker",
        "priority",
        {"upstream": "gpt-broken", "base_url": f"{mocks['failing']}/v1", "priority": 0},
        {"upstream": "gpt-good", "base_url": f"{mocks['a']}/v1", "priority": 1},
    )
    answers = [ask(client, "gpt-breaker") for _ in range(20)]  # every one answered 200 (else the SDK raises)
    assert check_records("gpt-breaker", answers) == {"gpt-good": 20}
    # GATEWAY_BREAKER_FAILURES=3: three calls reached the broken deployment, then none (cooldown 600 s).
    assert received(mocks["failing"], "gpt-broken") == 3
    assert in_flight(broken, good) == [0, 0]
    metrics = httpx2.get(
        f"{routed_gateway}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    ).text
    assert f'gateway_breaker_state{{deployment="{broken.id}",model="gpt-breaker"}} 1.0' in metrics
    labels = f'deployment="{broken.id}",model="gpt-breaker",outcome="%s",provider="openai"'
    assert f"gateway_upstream_attempts_total{{{labels % 'server'}}} 3.0" in metrics
    assert f"gateway_upstream_attempts_total{{{labels % 'breaker_open'}}} 17.0" in metrics


def test_account_quotas_move_requests_on_then_429_upstream_capacity(client, mocks):
    _, (first, second) = make_routed_model(
        "gpt-quota",
        "priority",
        {"upstream": "gpt-q-a", "base_url": f"{mocks['a']}/v1", "priority": 0, "requests_per_minute": 10},
        {"upstream": "gpt-q-b", "base_url": f"{mocks['b']}/v1", "priority": 1, "requests_per_minute": 10},
    )
    if time.time() % 60 > 45:  # quotas count in minutes of the epoch: keep the test inside one
        time.sleep(61 - time.time() % 60)
    answers = [ask(client, "gpt-quota") for _ in range(20)]
    assert [a.usage is not None for a in answers] == [True] * 20
    assert check_records("gpt-quota", answers) == {"gpt-q-a": 10, "gpt-q-b": 10}
    assert (received(mocks["a"], "gpt-q-a"), received(mocks["b"], "gpt-q-b")) == (10, 10)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, "gpt-quota")
    error = refused.value
    assert error.body["code"] == "upstream_capacity"
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    record = UsageRecord.objects.get(model="gpt-quota", status_code=429)
    assert (record.error_type, record.input_tokens, record.cost) == ("upstream_capacity", 0, Decimal(0))
    assert (received(mocks["a"], "gpt-q-a"), received(mocks["b"], "gpt-q-b")) == (10, 10)
    assert in_flight(first, second) == [0, 0]


def test_streams_are_in_flight_until_they_end(client, mocks):
    _, (a, b) = make_routed_model(
        "gpt-streamed",
        "least_busy",
        {"upstream": "gpt-s-a", "base_url": f"{mocks['a']}/v1"},
        {"upstream": "gpt-s-b", "base_url": f"{mocks['b']}/v1"},
    )
    for _ in range(4):
        with ask(client, "gpt-streamed", stream=True, stream_options={"include_usage": True}) as events:
            chunks = list(events)
        assert chunks[-1].usage is not None
    deadline = time.monotonic() + 5
    while in_flight(a, b) != [0, 0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(a, b) == [0, 0]
    records = UsageRecord.objects.filter(model="gpt-streamed")
    assert [(r.status_code, r.streamed, r.estimated) for r in records] == [(200, True, False)] * 4


def test_a_deployments_own_timeout_moves_the_request_on(client, mocks):
    slow, slow_url = start_mock("--latency-ms", "3000")
    try:
        _, (first, second) = make_routed_model(
            "gpt-timeout",
            "priority",
            {"upstream": "gpt-slow", "base_url": f"{slow_url}/v1", "priority": 0, "timeout_seconds": 0.5},
            {"upstream": "gpt-fast", "base_url": f"{mocks['b']}/v1", "priority": 1},
        )
        started = time.monotonic()
        answer = ask(client, "gpt-timeout")
        assert time.monotonic() - started < 2.5  # not GATEWAY_UPSTREAM_TIMEOUT, not the mock's 3 s
        assert check_records("gpt-timeout", [answer]) == {"gpt-fast": 1}
        assert received(slow_url, "gpt-slow") == 1
        assert in_flight(first, second) == [0, 0]
    finally:
        stop(slow)


@pytest.mark.parametrize("strategy", ["latency", "least_busy"])
def test_latency_and_least_busy_send_most_traffic_away_from_a_slow_deployment(client, mocks, strategy):
    slow, slow_url = start_mock("--latency-ms", "400")
    try:
        # The slow one first: under `priority` it would take every request.
        _, (first, second) = make_routed_model(
            f"gpt-{strategy}",
            strategy,
            {"upstream": "gpt-slowish", "base_url": f"{slow_url}/v1", "priority": 0},
            {"upstream": "gpt-quick", "base_url": f"{mocks['b']}/v1", "priority": 1},
        )
        name = f"gpt-{strategy}"
        if strategy == "latency":
            answers = [ask(client, name) for _ in range(30)]  # one at a time: latency alone decides
        else:
            # Four at a time: the slow deployment's attempts pile up in flight, the quick one's end.
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: ask(client, name), range(40)))
        counts = check_records(name, answers)
        assert counts.get("gpt-slowish", 0) <= len(answers) // 5, counts
        assert received(slow_url, "gpt-slowish") == counts.get("gpt-slowish", 0)
        assert in_flight(first, second) == [0, 0]
    finally:
        stop(slow)


def test_two_gateway_processes_share_the_breaker_and_its_single_probe(transactional_db, mock_llm, mocks):
    """Failures seen by either process open the breaker for both; after the cooldown, of many
    concurrent requests over both processes exactly one probes the broken deployment."""
    env = {
        "GATEWAY_AUTH_CACHE_SECONDS": "0",
        "GATEWAY_BREAKER_FAILURES": "2",
        "GATEWAY_BREAKER_COOLDOWN_SECONDS": "3",
    }
    processes = [start_gateway(mock_llm, **env) for _ in range(2)]
    try:
        tenant = make_tenant("router2")
        key = api_key_create(tenant=tenant, name="routing")[1]
        clients = [openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) for _, url in processes]
        _, (broken, good) = make_routed_model(
            "gpt-shared-breaker",
            "priority",
            {"upstream": "gpt-shared-broken", "base_url": f"{mocks['failing']}/v1", "priority": 0},
            {"upstream": "gpt-shared-good", "base_url": f"{mocks['b']}/v1", "priority": 1},
        )
        answers = [ask(clients[i % 2], "gpt-shared-breaker") for i in range(10)]
        assert received(mocks["failing"], "gpt-shared-broken") == 2  # one failure through each process
        time.sleep(3.2)
        with ThreadPoolExecutor(6) as pool:
            answers += list(pool.map(lambda i: ask(clients[i % 2], "gpt-shared-breaker"), range(12)))
        assert received(mocks["failing"], "gpt-shared-broken") == 3  # one probe, which failed: open again
        assert check_records("gpt-shared-breaker", answers) == {"gpt-shared-good": 22}
        assert in_flight(broken, good) == [0, 0]
    finally:
        for process, _ in processes:
            stop(process)


def test_a_breaker_opened_through_one_process_is_announced_to_the_other(transactional_db, mock_llm, mocks):
    """The second process has read the deployment in rotation and knows no failure of it, and its
    routing view is not synced again for a minute: only the announcement (done.lua's PUBLISH,
    heard by gateway/routing/events.py) can tell it that the first process opened the breaker."""
    env = {
        "GATEWAY_AUTH_CACHE_SECONDS": "0",
        "GATEWAY_BREAKER_FAILURES": "2",
        "GATEWAY_BREAKER_COOLDOWN_SECONDS": "600",
        "GATEWAY_ROUTING_SYNC_SECONDS": "60",
        "GATEWAY_METRICS_TOKEN": METRICS_TOKEN,
    }
    going, going_url = start_mock()
    processes = []
    try:
        processes += [start_gateway(mock_llm, **env) for _ in range(2)]
        tenant = make_tenant("router3")
        key = api_key_create(tenant=tenant, name="routing")[1]
        clients = [openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) for _, url in processes]
        _, (flaky, _good) = make_routed_model(
            "gpt-announced",
            "priority",
            {"upstream": "gpt-going", "base_url": f"{going_url}/v1", "priority": 0},
            {"upstream": "gpt-staying", "base_url": f"{mocks['b']}/v1", "priority": 1},
        )
        answers = [ask(client, "gpt-announced") for client in clients]  # each process: in rotation
        assert received(going_url, "gpt-going") == 2
        stop(going)  # from now on every call to it is a connection error
        answers += [ask(clients[0], "gpt-announced") for _ in range(2)]  # two failures: open
        answers.append(ask(clients[1], "gpt-announced"))
        assert check_records("gpt-announced", answers) == {"gpt-going": 2, "gpt-staying": 3}
        metrics = httpx2.get(
            f"{processes[1][1]}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        ).text
        labels = f'deployment="{flaky.id}",model="gpt-announced",outcome="%s",provider="openai"'
        assert f"gateway_upstream_attempts_total{{{labels % 'breaker_open'}}} 1.0" in metrics
        assert labels % "connection" not in metrics  # the second process never called it again
    finally:
        stop(going)
        for process, _ in processes:
            stop(process)
