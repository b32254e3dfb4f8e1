"""Monitoring and the request log, with real gateway processes (issue 6, items 4 and 5).

The same traffic drives every test: successes and streams on both endpoints and three
providers (the real SDKs), a bad key that looks real, a revoked key, no key, a wrong method,
invalid bodies, an unknown model, upstream errors, a stream broken upstream, a client that hangs
up mid-stream, and the tenants' own limits: requests/min and tokens/min (429), budget (402).

- Two processes sharing PROMETHEUS_MULTIPROC_DIR, traffic split over both: /metrics (from either)
  parses with prometheus_client's parser and its counters equal the usage records.
- A `uvicorn --workers 2` gateway, INFO level, access log on: every line of its stderr is JSON,
  none holds a key or prompt or reply text, and each request has exactly one request line that
  says what its usage record says.
- In flight: a stream counts until its end, for its tenant; a disconnect and a killed process
  give their slot back.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from decimal import Decimal

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.models import UsageRecord
from tenants.keys import key_generate
from tenants.services import api_key_create, api_key_revoke

from .conftest import (
    ROOT,
    UPSTREAM_KEY,
    free_port,
    gateway_env,
    log_problems,
    make_tenant,
    start_gateway,
    stop,
    wait_until_up,
)

pytestmark = pytest.mark.django_db(transaction=True)

METRICS_TOKEN = "metrics-token-for-tests"
PROMPT_MARK = "zebra-quartz-prompt"  # no log line may contain prompt text
REPLY_MARK = "Mock reply from"  # every mock reply starts so; no log line may contain it
UPSTREAM_CODES = {
    "upstream_invalid_request",
    "content_filter",
    "upstream_request_too_large",
    "upstream_rate_limit",
    "upstream_overloaded",
    "upstream_timeout",
    "provider_not_configured",
    "upstream_auth_error",
    "upstream_not_found",
    "upstream_unreachable",
    "upstream_error",
    "upstream_stream_error",
}
LIMITS = {
    "rate_limit_requests": "requests_per_minute",
    "rate_limit_tokens": "tokens_per_minute",
    "concurrency_limit": "concurrency",
    "budget_exhausted": "budget",
}


def observed_env(tmp_path, **extra):
    return {
        "GATEWAY_AUTH_CACHE_SECONDS": "0",
        "GATEWAY_METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        **extra,
    }


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample, keyed by (sample name, labels): what Prometheus would store."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def summed(metrics: dict, name: str, **labels: str) -> float:
    """Sum of a sample over every label not given (PromQL's `sum by`)."""
    wanted = set(labels.items())
    return sum(value for (sample, key), value in metrics.items() if sample == name and wanted <= key)


class Traffic:
    """Sends the test's requests round-robin over the given gateways and remembers what came back."""

    def __init__(self, urls: list[str]):
        self.urls = urls
        self.turn = 0
        self.request_ids: list[str] = []
        self.unattributed = Counter()  # (endpoint, status) of requests refused before a tenant was known
        self.disconnected: list[str] = []

    def url(self) -> str:
        self.turn += 1
        return self.urls[self.turn % len(self.urls)]

    def post(self, path: str, key: str | None, body, *, family: str = "openai") -> httpx.Response:
        headers = {"content-type": "application/json"}
        if family == "anthropic":
            headers["anthropic-version"] = "2023-06-01"
            if key is not None:
                headers["x-api-key"] = key
        elif key is not None:
            headers["authorization"] = f"Bearer {key}"
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = httpx.post(f"{self.url()}{path}", content=content, headers=headers, timeout=30)
        self.request_ids.append(response.headers["x-request-id"])
        return response

    def chat(self, key, content: str, model: str = "gpt-test", **extra) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": f"{content} {PROMPT_MARK}"}], **extra}
        return self.post("/v1/chat/completions", key, body)

    def sdk_calls(self, key: str) -> None:
        """Successes through the real SDKs: JSON and streams, both endpoints, three providers."""
        for model in ("gpt-test", "claude-test", "azure-gpt-test"):
            client = openai.OpenAI(base_url=f"{self.url()}/v1", api_key=key, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": f"hello {PROMPT_MARK}"}], max_tokens=30
            )
            assert raw.http_response.status_code == 200
            self.request_ids.append(raw.headers["x-request-id"])
            with client.chat.completions.with_streaming_response.create(
                model=model,
                messages=[{"role": "user", "content": f"stream please {PROMPT_MARK}"}],
                stream=True,
                stream_options={"include_usage": True},
            ) as streamed:
                assert list(streamed.iter_lines())
                self.request_ids.append(streamed.headers["x-request-id"])
        for model in ("claude-test", "gpt-test"):
            client = anthropic.Anthropic(base_url=self.url(), api_key=key, max_retries=0)
            raw = client.messages.with_raw_response.create(
                model=model, max_tokens=40, messages=[{"role": "user", "content": f"hi {PROMPT_MARK}"}]
            )
            assert raw.http_response.status_code == 200
            self.request_ids.append(raw.headers["x-request-id"])
            with client.messages.with_streaming_response.create(
                model=model, max_tokens=40, stream=True, messages=[{"role": "user", "content": "go"}]
            ) as streamed:
                assert list(streamed.iter_lines())
                self.request_ids.append(streamed.headers["x-request-id"])

    def refused_before_a_tenant(self, revoked_key: str) -> None:
        looks_real = key_generate()  # well formed, checksum right, never issued
        for key, family in (
            (looks_real, "openai"),
            (revoked_key, "openai"),
            (looks_real, "anthropic"),
            (None, "openai"),
        ):
            path = "/v1/chat/completions" if family == "openai" else "/v1/messages"
            body = {"model": "gpt-test", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            response = self.post(path, key, body, family=family)
            assert response.status_code == 401
            self.unattributed["chat" if family == "openai" else "messages", "401"] += 1
        response = httpx.get(f"{self.url()}/v1/chat/completions", timeout=10)
        assert response.status_code == 405
        self.request_ids.append(response.headers["x-request-id"])
        self.unattributed["chat", "405"] += 1

    def errors_of_a_tenant(self, key: str) -> None:
        assert self.post("/v1/chat/completions", key, b"{not json").status_code == 400
        assert self.chat(key, "hi", model="no-such-model").status_code == 404
        assert self.chat(key, "hi", model="gpt-test", max_tokens=-1).status_code == 400
        assert self.chat(key, "[[mock:status=500]]").status_code == 502
        assert self.chat(key, "[[mock:status=429]]", model="claude-test").status_code == 429
        assert self.chat(key, "[[mock:status=503]]", model="azure-gpt-test").status_code == 502
        broken = self.chat(key, "[[mock:words=20]] [[mock:stream_error]]", stream=True)
        assert broken.status_code == 200
        assert b"error" in broken.content

    def hang_up_mid_stream(self, key: str) -> str:
        """A client that goes away after a few chunks; returns the request id."""
        body = orjson.dumps(
            {
                "model": "gpt-test",
                "stream": True,
                "messages": [{"role": "user", "content": "[[mock:words=200]] [[mock:chunk_delay_ms=20]] a story"}],
            }
        )
        host, port = self.url().removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            sock.settimeout(10)
            received = b""
            while received.count(b"data: ") < 3:
                data = sock.recv(65536)
                assert data, received
                received += data
        request_id = next(
            line.split(b":", 1)[1].strip().decode()
            for line in received.split(b"\r\n")
            if line.lower().startswith(b"x-request-id:")
        )
        self.request_ids.append(request_id)
        self.disconnected.append(request_id)
        return request_id

    def limited(self, rpm_key: str, tpm_key: str, broke_key: str) -> None:
        statuses = [self.chat(rpm_key, "hi").status_code for _ in range(5)]
        assert statuses.count(429) >= 3  # one per minute: at most two windows in this second
        assert self.chat(tpm_key, "hi", max_tokens=100).status_code == 429
        assert self.chat(broke_key, "hi").status_code == 402

    def run(self, *, alice_key: str, bob_key: str, revoked_key: str, rpm_key: str, tpm_key: str, broke_key: str):
        self.sdk_calls(alice_key)
        self.sdk_calls(bob_key)
        self.refused_before_a_tenant(revoked_key)
        self.errors_of_a_tenant(alice_key)
        self.limited(rpm_key, tpm_key, broke_key)
        self.hang_up_mid_stream(bob_key)
        wait_for_records(self.disconnected)


def wait_for_records(request_ids: list[str]) -> None:
    """A hung-up stream is recorded on a task of its own, just after the cancel."""
    deadline = time.monotonic() + 15
    while UsageRecord.objects.filter(request_id__in=request_ids).count() < len(request_ids):
        assert time.monotonic() < deadline, "the disconnected streams were never recorded"
        time.sleep(0.1)


@pytest.fixture
def tenants(catalog, alice, alice_key, bob, bob_key):
    """alice and bob without limits; carol 1 request/min, dan 10 tokens/min, erin a spent budget."""
    carol = make_tenant("carol", requests_per_minute=1)
    dan = make_tenant("dan", tokens_per_minute=10)
    erin = make_tenant("erin")
    erin.subscription.monthly_budget = Decimal("0.00")
    erin.subscription.save()
    revoked, revoked_raw = api_key_create(tenant=alice, name="old")
    api_key_revoke(key=revoked)
    return {
        "alice_key": alice_key,
        "bob_key": bob_key,
        "revoked_key": revoked_raw,
        "rpm_key": api_key_create(tenant=carol, name="k")[1],
        "tpm_key": api_key_create(tenant=dan, name="k")[1],
        "broke_key": api_key_create(tenant=erin, name="k")[1],
    }


@pytest.fixture
def two_processes(mock_llm, tmp_path):
    processes = [start_gateway(mock_llm, **observed_env(tmp_path)) for _ in range(2)]
    yield processes
    for process, _ in processes:
        stop(process)


def model_label(record: UsageRecord) -> str:
    return record.model if record.provider else ""  # names outside the catalog are not labels


def test_metrics_of_two_processes_parse_and_equal_the_usage_records(two_processes, tenants, tmp_path):
    urls = [url for _, url in two_processes]
    traffic = Traffic(urls)
    traffic.run(**tenants)

    texts = [scrape(url) for url in urls]
    metrics = samples(texts[0])
    # Either process answers for both: the same counters (the in-flight gauge aside, all zero now).
    assert {k: v for k, v in samples(texts[1]).items() if "in_flight" not in k[0]} == {
        k: v for k, v in metrics.items() if "in_flight" not in k[0]
    }
    # Each process counted its own share in its own file.
    pids = {p.pid for p, _ in two_processes}
    assert {
        int(name.split("_")[-1][:-3]) for name in os.listdir(tmp_path / "metrics") if name.startswith("counter_")
    } == pids

    records = list(UsageRecord.objects.select_related("tenant"))
    assert len(records) == len(traffic.request_ids) - sum(traffic.unattributed.values())
    expected = defaultdict(float)
    costs = defaultdict(Decimal)
    for r in records:
        who = {"tenant": r.tenant.slug, "model": model_label(r)}
        expected["gateway_requests_total", *who.values(), r.endpoint, str(r.status_code)] += 1
        expected["gateway_request_duration_seconds_count", *who.values(), r.endpoint] += 1
        if r.error_type:
            expected["gateway_errors_total", *who.values(), r.endpoint, r.error_type] += 1
        if r.error_type in LIMITS:
            expected["gateway_limit_refusals_total", *who.values(), LIMITS[r.error_type]] += 1
        if r.error_type in UPSTREAM_CODES:
            expected["gateway_upstream_errors_total", *who.values(), r.provider] += 1
        uncached = r.input_tokens - r.cached_input_tokens - r.cache_write_tokens
        for kind, count in (
            ("input", uncached),
            ("cached_input", r.cached_input_tokens),
            ("cache_write", r.cache_write_tokens),
            ("output", r.output_tokens),
        ):
            expected["gateway_tokens_total", *who.values(), kind] += count
        costs[r.tenant.slug, model_label(r)] += r.cost

    label_names = {
        "gateway_requests_total": ("tenant", "model", "endpoint", "status"),
        "gateway_request_duration_seconds_count": ("tenant", "model", "endpoint"),
        "gateway_errors_total": ("tenant", "model", "endpoint", "error_type"),
        "gateway_limit_refusals_total": ("tenant", "model", "limit"),
        "gateway_upstream_errors_total": ("tenant", "model", "provider"),
        "gateway_tokens_total": ("tenant", "model", "type"),
    }
    for (name, *values), count in expected.items():
        labels = dict(zip(label_names[name], values, strict=True))
        assert summed(metrics, name, **labels) == count, (name, labels)
    # ... and nothing more than the records (plus the requests no tenant owns).
    for name in label_names:
        recorded = sum(count for (n, *_), count in expected.items() if n == name)
        assert summed(metrics, name) - summed(metrics, name, tenant="") == recorded, name

    # Cost: a float counter, for monitoring; equal to the exact Decimal sum within float precision.
    assert costs
    for (tenant, model), cost in costs.items():
        assert summed(metrics, "gateway_cost_usd_total", tenant=tenant, model=model) == pytest.approx(
            float(cost), rel=1e-9, abs=1e-15
        ), (tenant, model)
    assert summed(metrics, "gateway_cost_usd_total") == pytest.approx(float(sum(costs.values())), rel=1e-9)

    # Refused before a tenant was known: no record, counted without a tenant.
    for (endpoint, status), count in traffic.unattributed.items():
        assert summed(metrics, "gateway_requests_total", tenant="", endpoint=endpoint, status=status) == count
    assert summed(metrics, "gateway_errors_total", tenant="", error_type="invalid_api_key") == 3
    assert summed(metrics, "gateway_errors_total", tenant="", error_type="missing_api_key") == 1

    # What each outcome looks like, spelled out once.
    assert summed(metrics, "gateway_limit_refusals_total", tenant="carol", limit="requests_per_minute") >= 3
    assert summed(metrics, "gateway_limit_refusals_total", tenant="dan", limit="tokens_per_minute") == 1
    assert summed(metrics, "gateway_limit_refusals_total", tenant="erin", limit="budget") == 1
    assert summed(metrics, "gateway_upstream_errors_total", provider="openai", kind="server") == 1
    assert summed(metrics, "gateway_upstream_errors_total", provider="anthropic", kind="rate_limit") == 1
    assert summed(metrics, "gateway_upstream_errors_total", provider="azure", kind="server") == 1
    assert summed(metrics, "gateway_upstream_errors_total", provider="openai", kind="stream") == 1
    assert summed(metrics, "gateway_errors_total", tenant="bob", error_type="client_disconnected") == 1
    assert summed(metrics, "gateway_requests_total", tenant="alice", model="", status="404") == 1
    # Histograms: a bucket per bound, +Inf equal to the count.
    assert summed(metrics, "gateway_request_duration_seconds_bucket", tenant="alice", le="+Inf") == summed(
        metrics, "gateway_request_duration_seconds_count", tenant="alice"
    )
    # Nothing in flight once everything has ended.
    assert summed(metrics, "gateway_requests_in_flight") == 0
    # Label cardinality: no request ids, no keys.
    labels_seen = {value for (_, key) in metrics for _, value in key}
    assert not labels_seen & set(traffic.request_ids)
    assert not labels_seen & set(tenants.values())


def request_lines(lines: list[dict]) -> dict[str, list[dict]]:
    by_id = defaultdict(list)
    for line in lines:
        if line["logger"] == "gateway.request":
            by_id[line["request_id"]].append(line)
    return by_id


def test_every_line_of_a_gateway_with_two_workers_is_json_keyless_and_one_per_request(mock_llm, tenants, tmp_path):
    process, url = start_gateway(
        mock_llm,
        uvicorn_args=("--workers", "2", "--log-level", "info", "--access-log"),
        **observed_env(tmp_path),
    )
    try:
        traffic = Traffic([url])
        traffic.run(**tenants)
        metrics = samples(scrape(url))  # whichever worker answers, it answers for both
        assert summed(metrics, "gateway_requests_total") == len(traffic.request_ids)
    finally:
        stop(process)

    secrets = (*tenants.values(), UPSTREAM_KEY, METRICS_TOKEN, PROMPT_MARK, REPLY_MARK)
    assert log_problems(process.log_path, secrets) == []
    lines = [orjson.loads(line) for line in process.log_path.read_text().splitlines()]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("Uvicorn running on") for m in messages)
    assert any(m.startswith("Started parent process") for m in messages)  # the --workers parent, no Django
    assert any(line["logger"] == "uvicorn.access" and line["path"] == "/v1/chat/completions" for line in lines)

    by_id = request_lines(lines)
    assert sorted(by_id) == sorted(set(traffic.request_ids))
    assert all(len(found) == 1 for found in by_id.values()), "one line per request"
    assert len({tuple(sorted(found[0])) for found in by_id.values()}) == 1, "the same fields on every request line"
    records = {r.request_id: r for r in UsageRecord.objects.select_related("tenant")}
    for request_id, (line,) in by_id.items():
        record = records.get(request_id)
        if record is None:  # refused before a tenant was known
            assert (line["tenant"], line["key_id"], line["cost"]) == (None, None, None)
            assert line["status"] in (401, 405)
            continue
        assert line["tenant"] == record.tenant.slug
        assert line["key_id"] == record.api_key_id
        assert line["model"] == record.model
        assert line["provider"] == (record.provider or None)
        assert line["status"] == record.status_code
        assert line["error_type"] == (record.error_type or None)
        assert (
            line["input_tokens"],
            line["cached_input_tokens"],
            line["cache_write_tokens"],
            line["output_tokens"],
        ) == (
            record.input_tokens,
            record.cached_input_tokens,
            record.cache_write_tokens,
            record.output_tokens,
        )
        assert Decimal(line["cost"]) == record.cost
        assert line["latency_ms"] == record.latency_ms
        assert line["streamed"] == record.streamed
        assert line["estimated"] == record.estimated
        assert line["cache_hit"] is record.cache_hit
        if record.status_code == 200:
            assert isinstance(line["deployment"], int)
    (hung_up,) = traffic.disconnected
    assert by_id[hung_up][0]["status"] == 499
    assert by_id[hung_up][0]["error_type"] == "client_disconnected"


def in_flight(url: str) -> dict[tuple[str, str], float]:
    return {
        (dict(key)["tenant"], dict(key)["endpoint"]): value
        for (name, key), value in samples(scrape(url)).items()
        if name == "gateway_requests_in_flight"
    }


def slow_stream(url: str, key: str, done: threading.Event) -> None:
    """A 3-second stream (30 chunks, 100 ms apart); `done` once it ended normally."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    try:
        stream = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "[[mock:words=30]] [[mock:chunk_delay_ms=100]] slowly"}],
            stream=True,
        )
        for _ in stream:
            pass
    except openai.APIError:
        return  # its gateway was killed
    done.set()


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_stream_is_in_flight_for_its_tenant_until_it_ends(two_processes, tenants):
    (_, first), (_, second) = two_processes
    done = threading.Event()
    worker = threading.Thread(target=slow_stream, args=(first, tenants["alice_key"], done))
    worker.start()
    # Seen from the other process too: the gauge is the sum over live processes.
    wait_for(lambda: in_flight(second).get(("alice", "chat")) == 1, "the stream is not in flight")
    assert not done.is_set()  # still streaming (30 chunks, 100 ms apart)
    assert in_flight(first).get(("", "chat"), 0) == 0
    worker.join(timeout=30)
    assert done.is_set()
    assert in_flight(second).get(("alice", "chat")) == 0


def test_a_killed_process_and_a_hung_up_client_give_their_in_flight_slot_back(two_processes, tenants):
    (victim, first), (_, second) = two_processes
    wait_for_records([Traffic([first]).hang_up_mid_stream(tenants["bob_key"])])
    wait_for(lambda: in_flight(second).get(("bob", "chat")) == 0, "the hung-up stream stayed in flight")

    threading.Thread(target=slow_stream, args=(first, tenants["alice_key"], threading.Event()), daemon=True).start()
    wait_for(lambda: in_flight(second).get(("alice", "chat")) == 1, "the stream is not in flight")
    victim.send_signal(signal.SIGKILL)  # no atexit, no clean shutdown
    victim.wait(timeout=10)
    # The next scrape drops the dead process's live gauge; its counters stay in the sums.
    assert in_flight(second).get(("alice", "chat"), 0) == 0
    assert summed(samples(scrape(second)), "gateway_errors_total", tenant="bob", error_type="client_disconnected") == 1


def test_a_broken_metrics_directory_never_fails_a_request(mock_llm, tmp_path, catalog, alice_key):
    process, url = start_gateway(mock_llm, **observed_env(tmp_path))
    try:
        shutil.rmtree(tmp_path / "metrics")  # no file can be created for the first series
        response = Traffic([url]).chat(alice_key, "hi")
        assert response.status_code == 200
        assert UsageRecord.objects.filter(request_id=response.headers["x-request-id"]).exists()
    finally:
        stop(process)
    lines = [orjson.loads(line) for line in process.log_path.read_text().splitlines()]
    assert any(line["logger"] == "gateway.observability" and "exception" in line for line in lines)
    assert request_lines(lines)[response.headers["x-request-id"]][0]["status"] == 200  # the line, regardless


def test_metrics_want_the_token(two_processes):
    _, url = two_processes[0]
    assert httpx.get(f"{url}/metrics").status_code == 401
    wrong = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert METRICS_TOKEN not in wrong.text
    assert scrape(url) == ""  # nothing happened yet: no series
    httpx.post(f"{url}/v1/chat/completions", json={})
    assert summed(samples(scrape(url)), "gateway_requests_total", tenant="", status="401") == 1


def test_without_a_token_metrics_are_closed_unless_debug(mock_llm, tmp_path):
    process, url = start_gateway(mock_llm, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"))
    try:
        response = httpx.get(f"{url}/metrics")
        assert response.status_code == 403
        assert "GATEWAY_METRICS_TOKEN" in response.json()["error"]
    finally:
        stop(process)


def test_readyz_checks_postgresql_and_redis_and_answers_in_time_when_one_hangs(mock_llm):
    # A "server" that accepts connections and never says a word: a hung database or Redis.
    silent = socket.socket()
    silent.bind(("127.0.0.1", free_port()))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        for env, failing in (
            ({}, None),
            ({"DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/nothing"}, "database"),
            ({"REDIS_URL": f"redis://127.0.0.1:{port}/0"}, "redis"),
            ({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "redis"),  # refused outright
        ):
            process, url = start_gateway(mock_llm, **env)
            try:
                started = time.monotonic()
                response = httpx.get(f"{url}/readyz", timeout=30)
                elapsed = time.monotonic() - started
            finally:
                process.kill()  # a clean exit would wait for the thread stuck on the silent server
                process.wait()
            checks = response.json()["checks"]
            assert set(checks) == {"database", "redis"}
            if failing is None:
                assert response.status_code == 200
                assert checks == {"database": "ok", "redis": "ok"}
            else:
                assert response.status_code == 503, env
                assert response.json()["status"] == "unavailable"
                assert checks[failing] == "unreachable"
                assert {v for k, v in checks.items() if k != failing} == {"ok"}
                assert elapsed < 6, f"readyz took {elapsed:.1f}s"
    finally:
        silent.close()


def test_gateway_processes_log_json_without_the_log_config_too(mock_llm, tmp_path):
    """Started without --log-config, every line is still JSON: uvicorn logs nothing before Django
    loads, and Django's LOGGING_CONFIG puts our formatter on uvicorn's handlers."""
    port = free_port()
    stderr_path, stdout_path = tmp_path / "stderr.log", tmp_path / "stdout.log"
    command = [sys.executable, "-m", "uvicorn", "proxy_platform.asgi:application", "--port", str(port)]
    with open(stderr_path, "wb") as stderr, open(stdout_path, "wb") as stdout:
        process = subprocess.Popen(
            [*command, "--log-level", "info"], cwd=ROOT, env=gateway_env(mock_llm), stderr=stderr, stdout=stdout
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, headers={"authorization": "Bearer x"})
    finally:
        stop(process)
    assert log_problems(stderr_path) == []
    assert log_problems(stdout_path) == []  # uvicorn's access log stays on stdout, in JSON
    messages = [orjson.loads(line)["message"] for line in stderr_path.read_text().splitlines()]
    assert any(m.startswith("Uvicorn running on") for m in messages)
    assert "chat 401" in messages
    assert any("/healthz" in orjson.loads(line)["message"] for line in stdout_path.read_text().splitlines())
