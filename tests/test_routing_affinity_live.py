"""What prompt-cache affinity buys, measured live (docs/routing.md#prompt-cache-affinity).

Two mock providers with their prompt cache on (`--prompt-cache-seconds`: a prefix seen by THIS
process within the TTL is reported as cached input) are the two deployments, weighted 1:1, of two
models: one with `affinity: "prefix"`, one without. Two gateway processes take the requests in
turn, through the unchanged `openai` SDK. Each of many long documents is sent twice (two
questions): the second request is a cache hit only if it reaches the deployment that saw the
first. The hit rate of the second requests, read from the usage records' cached_input_tokens, is
100% with affinity (one deployment per prefix, in every process) and about 50% without.
"""

import json
import random
import subprocess
import sys
import urllib.request
from decimal import Decimal

import openai
import pytest

from billing.models import ModelPrice, UsageRecord
from proxy_platform import redis_clients
from tenants.models import CatalogModel, Deployment
from tenants.services import api_key_create

from .conftest import PRICE_FROM, ROOT, free_port, make_tenant, start_gateway, stop, wait_until_up

DOCUMENTS = 40
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
PRICE_IN, PRICE_CACHED, PRICE_OUT = Decimal("0.15"), Decimal("0.075"), Decimal("0.60")


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
def caching_mocks():
    started = [start_mock("--prompt-cache-seconds", "600") for _ in range(2)]
    try:
        yield [url for _, url in started]
    finally:
        for process, _ in started:
            stop(process)


@pytest.fixture(scope="module")
def gateways(mock_llm, caching_mocks, django_db_setup):
    started = []
    try:
        for _ in range(2):
            started.append(
                start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_AFFINITY_PREFIX_TOKENS="1024")
            )
        yield [url for _, url in started]
    finally:
        for process, _ in started:
            stop(process)


def make_model(name: str, mocks: list[str], *, affinity: str) -> list[Deployment]:
    model = CatalogModel.objects.create(name=name, provider="openai", routing="weighted", affinity=affinity)
    ModelPrice.objects.create(
        model=model,
        effective_from=PRICE_FROM,
        input_per_1m=PRICE_IN,
        cached_input_per_1m=PRICE_CACHED,
        output_per_1m=PRICE_OUT,
    )
    return [
        Deployment.objects.create(
            model=model, provider="openai", upstream=f"{name}-{side}", base_url=f"{url}/v1", weight=1
        )
        for side, url in zip("ab", mocks, strict=True)
    ]


def document(name: str, seed: int) -> str:
    draw = random.Random(f"{name}-{seed}")
    return f"{name} document {seed}. " + " ".join(draw.choice(WORDS) for _ in range(1500))


def received(mock_url: str, upstream: str) -> int:
    seen = json.loads(urllib.request.urlopen(f"{mock_url}/_mock/requests").read())
    return sum(1 for r in seen if isinstance(r.get("body"), dict) and r["body"].get("model") == upstream)


def in_flight(*deployments: Deployment) -> list[int]:
    shared = redis_clients.sync_client()  # plain, Cluster or Sentinel: tests/redis_topology.py
    try:
        return [shared.zcard(f"gw:route:{{{d.id}}}:busy") for d in deployments]
    finally:
        shared.close()


def measure(name: str, clients: list[openai.OpenAI], mocks: list[str], deployments: list[Deployment]) -> float:
    """Ask each document two questions (through the gateways in turn); check the usage records
    exactly; return the cache hit rate of the second questions."""
    answers = []
    for seed in range(DOCUMENTS):
        doc = document(name, seed)
        for turn, question in enumerate(("What is it about?", "Which word comes first?")):
            client = clients[(seed + turn) % len(clients)]
            answers.append(
                client.chat.completions.create(
                    model=name,
                    messages=[{"role": "system", "content": doc}, {"role": "user", "content": question}],
                    max_tokens=20,
                )
            )
    cached = [a.usage.prompt_tokens_details.cached_tokens for a in answers]
    assert all(c == 0 for c in cached[0::2])  # a first question is never cached anywhere
    records = list(UsageRecord.objects.filter(model=name))
    assert len(records) == len(answers) == 2 * DOCUMENTS
    assert all(r.status_code == 200 and not r.estimated for r in records)
    assert sorted(r.input_tokens for r in records) == sorted(a.usage.prompt_tokens for a in answers)
    assert sorted(r.cached_input_tokens for r in records) == sorted(cached)
    assert sum(r.output_tokens for r in records) == sum(a.usage.completion_tokens for a in answers)
    for r in records:
        expected = (
            (r.input_tokens - r.cached_input_tokens) * PRICE_IN + r.cached_input_tokens * PRICE_CACHED
        ) / 10**6 + r.output_tokens * PRICE_OUT / 10**6
        assert r.cost == expected
    # What the providers received is what was recorded: nothing lost or doubled, none still in flight.
    per_upstream = {d.upstream: sum(1 for r in records if r.upstream_model == d.upstream) for d in deployments}
    assert [received(url, d.upstream) for url, d in zip(mocks, deployments, strict=True)] == [
        per_upstream[d.upstream] for d in deployments
    ]
    assert in_flight(*deployments) == [0, 0]
    # Hits: second questions with cached input (the whole document, at the cached price).
    hits = sum(1 for r in records if r.cached_input_tokens > 0)
    assert all(r.cached_input_tokens >= 1024 for r in records if r.cached_input_tokens > 0)
    assert min(per_upstream.values()) >= DOCUMENTS * 2 // 4, per_upstream  # both deployments serve
    return hits / DOCUMENTS


@pytest.mark.django_db(transaction=True)
def test_affinity_keeps_each_prefix_on_one_deployment_and_its_cache_warm(gateways, caching_mocks):
    tenant = make_tenant("affine")
    key = api_key_create(tenant=tenant, name="affinity")[1]
    clients = [openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) for url in gateways]
    affine = make_model("gpt-affine", caching_mocks, affinity="prefix")
    spread = make_model("gpt-spread", caching_mocks, affinity="")
    with_affinity = measure("gpt-affine", clients, caching_mocks, affine)
    without = measure("gpt-spread", clients, caching_mocks, spread)
    print(f"\nprompt cache hit rate of repeated prefixes: with affinity {with_affinity:.0%}, without {without:.0%}")
    assert with_affinity >= 0.95
    assert 0.25 <= without <= 0.75
