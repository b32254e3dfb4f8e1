"""Soak: the whole stack under a mixed load for minutes, then checks that no money went astray.

Self-contained (issue 15, part 6). It creates a PostgreSQL database of its own (dropped and
created again at the start of every run), uses one Redis db of its own (emptied at the start),
sets up two catalog models and a mix of tenants, and starts:

    the mock provider   the project's mock (gateway/mock/server.py, as `manage.py mockllm` builds it)
                        wrapped in a ledger that notes every model call it served: the gateway's
                        `x-gateway-request-id`, the status, whether the body was sent to its end,
                        and the usage the body carried; with latency and a rate of injected 503s
    two gateways        uvicorn `--workers 2` each, production settings (DEBUG off), retries on
    two Celery workers  and beat, the rollup every 60 s instead of every 10 minutes

then runs closed-loop clients (the real async openai and anthropic SDKs, each call to one of the
two gateways) for `--minutes`: JSON and streams on both APIs, translation both ways (OpenAI SDK
on a Claude model, Anthropic SDK on a GPT model), tenants whose requests/min, tokens/min and
concurrency refuse, tenant and key budgets that run out (a fresh key with a small budget every
30 s), upstream faults (injected 503s, 500s, streams cut or ending in an error event) and client
hang-ups (a stream closed after a few chunks, a JSON call given up before the answer).

At the end it waits for the last records, has the workers run the rollup and the invoices of the
month, and CHECKS (exit status 1 when one fails):

- every model call the provider received has its usage record (by the gateway's request id),
  no id was served twice, no record bills tokens of a call the provider never received, no
  refused request (429/402) reached the provider, the tokens of every record the provider's
  usage settled equal that usage, every request id a client saw has its record;
- no tenant's and no key's spend of the month exceeds its budget (Decimal); Redis holds no
  concurrency slot, no budget hold and no journal entry any more, and every budget counter equals
  its records' spend (the workers reset the counters every 15 s during the run, beside live holds);
- the rollups and the draft invoices equal the records (requests, tokens, cost per tenant);
- the RSS of every process (gateway masters and workers, Celery workers, beat) does not grow:
  the mean of the run's last third is within 5% (or 5 MB) of its middle third's;

and prints p50/p99 latency, outcomes and RSS per minute.

    nice -n 10 .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 8]
        [--database-url postgres://postgres@127.0.0.1:5432/soak_db] [--redis-url redis://127.0.0.1:6379/14]

The processes' logs go to a directory printed at the start (kept after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

from benchdb import setup_django
from gateway_overhead import Processes, free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/soak_db"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
UPSTREAM_KEY = "sk-soak-upstream"
SECRET = secrets.token_urlsafe(32)  # the run's own Django secret and key pepper, in every process
GPT, CLAUDE = "soak-gpt", "soak-claude"
KEY_PERIOD_S = 30.0  # a budgeted key of its own for every this many seconds of the run
KEY_BUDGET = Decimal("0.03")
RECONCILE_EVERY_S = 15.0
MB = 1024
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()


# --- the mock's ledger (runs in the mock's own process: `soak.py --serve-mock`) ---

MODEL_PATH = re.compile(r"/v1/chat/completions|/v1/messages|/openai/deployments/[^/]+/chat/completions")


class Ledger:
    """ASGI middleware around the mock: one entry per model call, kept compact (no bodies)."""

    def __init__(self, app) -> None:
        self.app = app
        self.calls: list[list] = []  # [gateway id, status, sent to its end, input tokens, output tokens]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/_soak/served":
            body = json.dumps(self.calls).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        if not MODEL_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        entry = [headers.get(b"x-gateway-request-id", b"").decode(), 0, False, None, None]
        chunks: list[bytes] = []

        async def noting(message) -> None:
            if message["type"] == "http.response.start":
                entry[1] = message["status"]
            elif message["type"] == "http.response.body":
                if entry[1] == 200:
                    chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    entry[2] = True
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            if entry[1] == 200 and entry[2]:
                usage = usage_in(b"".join(chunks))
                if usage is not None:
                    entry[3], entry[4] = usage
            self.calls.append(entry)


def usage_in(body: bytes) -> tuple[int, int] | None:
    """(total input tokens, output tokens) that a JSON answer or an SSE stream reported; None: none."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            return _usage(json.loads(text))
        except ValueError:
            return None
    found = None
    for line in text.splitlines():
        if not line.startswith("data:") or line.endswith("[DONE]"):
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        if event.get("type") == "message_start":
            found = _usage(event["message"])
        elif event.get("type") == "message_delta" and found is not None:
            found = (found[0], event["usage"]["output_tokens"])  # cumulative: replace
        elif event.get("usage"):
            found = _usage(event)
    return found


def _usage(payload: dict) -> tuple[int, int] | None:
    usage = payload.get("usage")
    if not usage:
        return None
    if "prompt_tokens" in usage:
        return usage["prompt_tokens"], usage["completion_tokens"]
    total = usage["input_tokens"] + (usage.get("cache_creation_input_tokens") or 0)
    return total + (usage.get("cache_read_input_tokens") or 0), usage["output_tokens"]


def serve_mock(args: argparse.Namespace) -> None:
    import uvicorn

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
    import django

    django.setup()
    from gateway.management.commands.mockllm import _listen, _QuietDroppedStreams
    from gateway.mock.server import MockSettings, build_app

    settings = MockSettings(
        latency_ms=args.latency_ms, fault_rate=args.fault_rate, fault_status=503, seed=args.seed, history=50
    )
    config = uvicorn.Config(
        Ledger(build_app(settings)),
        log_level="error",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=120,
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietDroppedStreams())  # break_after cuts on purpose
    sock = _listen("127.0.0.1", 0, backlog=config.backlog)
    print(f"mockllm listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


# --- setup ---


@dataclass
class Fixture:
    keys: dict[str, list[str]]  # tenant slug -> its keys (budget: one per KEY_PERIOD_S)
    budgets: dict[str, Decimal]  # tenant slug -> monthly budget
    key_budgets: dict[int, Decimal] = field(default_factory=dict)  # key id -> budget


TENANTS = {
    # slug: (tenant limits, monthly budget)
    "open-a": ({}, None),
    "open-b": ({}, None),
    "open-c": ({}, None),
    "rpm": ({"requests_per_minute": 40}, None),
    "tpm": ({"tokens_per_minute": 4000}, None),
    "conc": ({"max_concurrent": 2}, None),
    "budget": ({"requests_per_minute": 100_000}, "per-run"),
}


def fresh_database(url: str) -> None:
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def fixture_setup(minutes: float) -> Fixture:
    from django.core.management import call_command

    from billing.models import ModelPrice, Plan, Subscription
    from tenants.models import CatalogModel, Deployment, Tenant
    from tenants.services import api_key_create

    call_command("migrate", verbosity=0)
    for name, provider, upstream, prices in (
        (GPT, "openai", "gpt-4o-mini", ("30.00", "60.00")),
        (CLAUDE, "anthropic", "claude-haiku-4-5", ("15.00", "75.00")),
    ):
        model = CatalogModel.objects.create(name=name, provider=provider)
        Deployment.objects.create(model=model, provider=provider, upstream=upstream, region="")
        ModelPrice.objects.create(
            model=model,
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            input_per_1m=Decimal(prices[0]),
            output_per_1m=Decimal(prices[1]),
        )
    plan = Plan.objects.create(name="soak")
    periods = max(1, int(minutes * 60 / KEY_PERIOD_S) + 1)
    fixture = Fixture(keys={}, budgets={})
    for slug, (limits, budget) in TENANTS.items():
        tenant = Tenant.objects.create(slug=slug, name=slug, **limits)
        if budget:
            # The tenant's budget runs out at about two thirds of the run; its keys' each within its period.
            budget = (KEY_BUDGET * periods * 2 / 3).quantize(Decimal("0.01"))
            fixture.budgets[slug] = budget
        Subscription.objects.create(tenant=tenant, plan=plan, monthly_budget=budget)
        if slug == "budget":
            keys = []
            for n in range(periods):
                key, raw = api_key_create(tenant=tenant, name=f"period {n}", monthly_budget=KEY_BUDGET)
                fixture.key_budgets[key.id] = KEY_BUDGET
                keys.append(raw)
            fixture.keys[slug] = keys
        else:
            fixture.keys[slug] = [api_key_create(tenant=tenant, name="soak")[1]]
    return fixture


# --- processes ---

# Processes, free_port and wait_until_up: bench/gateway_overhead.py's.
WAIT_UP_S = 90.0  # six processes start at once here (ten with uvicorn's workers): longer than the default 60 s


def base_env(db_url: str, redis_url: str) -> dict:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="proxy_platform.settings",
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        CELERY_TASK_ALWAYS_EAGER="0",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=SECRET,
        API_KEY_PEPPER=SECRET,
        LOG_LEVEL="WARNING",
        BILLING_ROLLUP_INTERVAL_SECONDS="60",
        GATEWAY_RECONCILE_INTERVAL_SECONDS="15",  # the request reconciler, beside live requests
    )
    return env


def start_all(processes: Processes, args: argparse.Namespace) -> tuple[str, list[str]]:
    env = base_env(args.database_url, args.redis_url)
    mock = processes.start(
        [sys.executable, __file__, "--serve-mock", "--latency-ms", "15", "--fault-rate", "0.02", "--seed", "15"],
        env,
        name="mock",
        stdout=subprocess.PIPE,
        text=True,
    )
    line = mock.stdout.readline()
    if "listening on " not in line:
        raise RuntimeError(f"the mock did not start: {line!r}")
    mock_url = line.strip().rsplit(" ", 1)[-1]
    wait_until_up(f"{mock_url}/health", mock, timeout=WAIT_UP_S)
    gateway_env = dict(
        env,
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=f"{mock_url}/v1",
        ANTHROPIC_API_KEY=UPSTREAM_KEY,
        ANTHROPIC_BASE_URL=mock_url,
        GATEWAY_UPSTREAM_MAX_RETRIES="0",
    )
    gateways = []
    for n in (1, 2):
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "proxy_platform.asgi:application", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "2", "--log-config", "proxy_platform/uvicorn_logging.json"]
        command += ["--no-access-log", "--log-level", "warning"]
        process = processes.start(command, gateway_env, name=f"gateway-{n}")
        gateways.append((f"http://127.0.0.1:{port}", process))
    celery = [sys.executable, "-m", "celery", "-A", "proxy_platform"]
    for name in ("a", "b"):
        processes.start(
            [*celery, "worker", "--pool=solo", "-n", f"soak-{name}@localhost", "--loglevel=WARNING"],
            env,
            name=f"celery-{name}",
            stdout=subprocess.DEVNULL,
        )
    schedule = processes.log_dir / "beat-schedule"
    processes.start(
        [*celery, "beat", "--loglevel=WARNING", "-s", str(schedule)], env, name="beat", stdout=subprocess.DEVNULL
    )
    for url, process in gateways:
        wait_until_up(f"{url}/healthz", process, timeout=WAIT_UP_S)
    return mock_url, [url for url, _ in gateways]


# --- RSS ---


class RssSampler(threading.Thread):
    def __init__(self, processes: Processes, every: float, started: float) -> None:
        super().__init__(daemon=True)
        self.processes, self.every, self.started = processes, every, started
        self.samples: list[tuple[float, str, int]] = []  # (seconds into the run, label, RSS kB)
        self.halt = threading.Event()

    def sample(self) -> None:
        at = time.monotonic() - self.started
        for label, pid in self.processes.members():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss = re.search(r"VmRSS:\s+(\d+)", status)
            if rss:
                self.samples.append((at, label, int(rss.group(1))))

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.sample()


# --- load ---


@dataclass
class Call:
    started: float  # seconds into the run
    scenario: str
    outcome: str  # an HTTP status, "hangup", "gave_up", "stream_error", "connection_error"
    latency: float
    request_id: str = ""
    error_code: str = ""  # the error body's code (OpenAI) or type (Anthropic)


def prompt(rng: random.Random, *directives: str) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "".join(f" [[mock:{d}]]" for d in directives)


class Load:
    def __init__(self, gateways: list[str], fixture: Fixture, seconds: float, started: float, seed: int) -> None:
        self.gateways, self.fixture, self.seconds, self.started = gateways, fixture, seconds, started
        self.rng = random.Random(seed)
        self.calls: list[Call] = []
        self.reconciled = 0
        self.clients: dict[tuple, object] = {}
        self.scenarios = [
            (self.open_openai, 20),
            (self.open_anthropic, 14),
            (self.translated_openai_on_claude, 10),
            (self.translated_anthropic_on_gpt, 10),
            (self.rpm, 8),
            (self.tpm, 6),
            (self.concurrency, 4),
            (self.budget, 10),
            (self.fault, 8),
            (self.hangup, 8),
        ]

    def client(self, sdk: str, slug: str, key: str | None = None):
        import anthropic
        import openai

        key = key or self.fixture.keys[slug][0]
        gateway = self.rng.choice(self.gateways)
        cache_key = (sdk, gateway, key)
        if cache_key not in self.clients:
            if sdk == "openai":
                self.clients[cache_key] = openai.AsyncOpenAI(
                    api_key=key, base_url=f"{gateway}/v1", max_retries=0, timeout=30
                )
            else:
                self.clients[cache_key] = anthropic.AsyncAnthropic(
                    api_key=key, base_url=gateway, max_retries=0, timeout=30
                )
        return self.clients[cache_key]

    async def run(self, concurrency: int, redis_url: str) -> None:
        deadline = self.started + self.seconds
        await asyncio.gather(*(self.worker(deadline) for _ in range(concurrency)), self.reconciles(deadline, redis_url))
        for client in self.clients.values():
            await client.close()

    async def reconciles(self, deadline: float, redis_url: str) -> None:
        """The budget counters reset from the database every RECONCILE_EVERY_S by the workers
        (beat's 5 minutes, much more often): each reset races the holds of requests in flight."""
        from celery import Celery

        client = Celery("soak", broker=redis_url)
        while time.monotonic() + RECONCILE_EVERY_S < deadline:
            await asyncio.sleep(RECONCILE_EVERY_S)
            await asyncio.to_thread(client.send_task, "gateway.tasks.reconcile_budget_counters")
            self.reconciled += 1
        client.close()

    async def worker(self, deadline: float) -> None:
        functions = [function for function, _ in self.scenarios]
        weights = [weight for _, weight in self.scenarios]
        while time.monotonic() < deadline:
            scenario = self.rng.choices(functions, weights)[0]
            await scenario()

    async def call(self, scenario: str, sdk: str, slug: str, model: str, *, stream: bool, text: str, **options):
        """One request; `hang_up_after` closes a stream after that many events, `give_up_after`
        abandons a JSON call after that many seconds."""
        import anthropic
        import openai

        hang_up_after = options.pop("hang_up_after", None)
        give_up_after = options.pop("give_up_after", None)
        client = self.client(sdk, slug, options.pop("key", None))
        if give_up_after:
            client = client.with_options(timeout=give_up_after)
        begun = time.monotonic()
        call = Call(begun - self.started, scenario, "", 0.0)
        try:
            if sdk == "openai":
                body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 48}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                create = client.chat.completions
            else:
                body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 48}
                create = client.messages
            if stream:
                response = await create.create(**body, stream=True)
                call.request_id = response.response.headers.get("x-request-id", "")
                events = 0
                async for _ in response:
                    events += 1
                    if hang_up_after and events >= hang_up_after:
                        await response.close()
                        call.outcome = "hangup"
                        break
                else:
                    call.outcome = "200"
            else:
                raw = await create.with_raw_response.create(**body)
                call.request_id = raw.headers.get("x-request-id", "")
                parsed = raw.parse()  # the anthropic SDK's async raw response parses in a coroutine
                if inspect.isawaitable(parsed):
                    await parsed
                call.outcome = str(raw.status_code)
        except (openai.APITimeoutError, anthropic.APITimeoutError):
            call.outcome = "gave_up"
        except (openai.APIStatusError, anthropic.APIStatusError) as error:
            call.outcome = str(error.status_code)
            call.request_id = error.response.headers.get("x-request-id", "")
            body = error.body if isinstance(error.body, dict) else {}
            inner = body.get("error") if isinstance(body.get("error"), dict) else body
            call.error_code = str(inner.get("code") or inner.get("type") or "")
            if str(inner.get("message", "")).startswith("The service is temporarily unavailable"):
                call.error_code = "database_unavailable"  # the Anthropic shape has no code: its wording
        except (openai.APIConnectionError, anthropic.APIConnectionError):
            call.outcome = "connection_error"
        except (openai.APIError, anthropic.APIError):
            call.outcome = "stream_error"  # an error event after HTTP 200
        except Exception as error:  # noqa: BLE001 - a client-side surprise is an outcome, not the end of the run
            call.outcome = f"client_error:{type(error).__name__}"
        call.latency = time.monotonic() - begun
        self.calls.append(call)

    async def open_openai(self) -> None:
        slug = self.rng.choice(["open-a", "open-b", "open-c"])
        await self.call("openai", "openai", slug, GPT, stream=self.rng.random() < 0.5, text=prompt(self.rng))

    async def open_anthropic(self) -> None:
        slug = self.rng.choice(["open-a", "open-b", "open-c"])
        await self.call("anthropic", "anthropic", slug, CLAUDE, stream=self.rng.random() < 0.5, text=prompt(self.rng))

    async def translated_openai_on_claude(self) -> None:
        slug = self.rng.choice(["open-a", "open-b"])
        await self.call("openai->claude", "openai", slug, CLAUDE, stream=self.rng.random() < 0.5, text=prompt(self.rng))

    async def translated_anthropic_on_gpt(self) -> None:
        slug = self.rng.choice(["open-b", "open-c"])
        await self.call("anthropic->gpt", "anthropic", slug, GPT, stream=self.rng.random() < 0.5, text=prompt(self.rng))

    async def rpm(self) -> None:
        sdk, model = self.rng.choice([("openai", GPT), ("anthropic", CLAUDE)])
        await self.call("rpm", sdk, "rpm", model, stream=self.rng.random() < 0.5, text=prompt(self.rng))

    async def tpm(self) -> None:
        sdk, model = self.rng.choice([("openai", CLAUDE), ("anthropic", GPT)])
        await self.call("tpm", sdk, "tpm", model, stream=self.rng.random() < 0.5, text=prompt(self.rng))

    async def concurrency(self) -> None:
        """Three slow streams at once against a limit of two."""
        slow = ("chunk_delay_ms=20", "words=20")
        await asyncio.gather(
            *(
                self.call("concurrency", "openai", "conc", GPT, stream=True, text=prompt(self.rng, *slow))
                for _ in range(3)
            )
        )

    async def budget(self) -> None:
        keys = self.fixture.keys["budget"]
        period = int((time.monotonic() - self.started) / KEY_PERIOD_S)
        key = keys[min(period, len(keys) - 1)]
        # Now and then four at once: concurrent holds against the last cents of a budget.
        calls = []
        for _ in range(4 if self.rng.random() < 0.3 else 1):
            sdk, model = self.rng.choice([("openai", GPT), ("anthropic", CLAUDE), ("openai", CLAUDE)])
            text = prompt(self.rng)
            calls.append(self.call("budget", sdk, "budget", model, stream=self.rng.random() < 0.5, text=text, key=key))
        await asyncio.gather(*calls)

    async def fault(self) -> None:
        slug = self.rng.choice(["open-a", "open-c", "budget"])
        key = None
        if slug == "budget":
            period = int((time.monotonic() - self.started) / KEY_PERIOD_S)
            key = self.fixture.keys["budget"][min(period, len(self.fixture.keys["budget"]) - 1)]
        sdk, model = self.rng.choice([("openai", GPT), ("anthropic", CLAUDE), ("openai", CLAUDE), ("anthropic", GPT)])
        kind = self.rng.choice(["status=500", "stream_error", "break_after=3", "end_after=2"])
        stream = kind != "status=500"
        await self.call("fault", sdk, slug, model, stream=stream, text=prompt(self.rng, kind), key=key)

    async def hangup(self) -> None:
        slug = self.rng.choice(["open-a", "open-b", "budget"])
        key = None
        if slug == "budget":
            period = int((time.monotonic() - self.started) / KEY_PERIOD_S)
            key = self.fixture.keys["budget"][min(period, len(self.fixture.keys["budget"]) - 1)]
        sdk, model = self.rng.choice([("openai", GPT), ("anthropic", CLAUDE), ("openai", CLAUDE), ("anthropic", GPT)])
        if self.rng.random() < 0.6:
            text = prompt(self.rng, "chunk_delay_ms=15", "words=30")
            await self.call("hangup", sdk, slug, model, stream=True, text=text, hang_up_after=4, key=key)
        else:
            text = prompt(self.rng, "latency_ms=800")
            await self.call("hangup", sdk, slug, model, stream=False, text=text, give_up_after=0.3, key=key)


# --- checks ---


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)


def wait_for_quiet_records(seconds: float = 4.0, limit: float = 60.0) -> int:
    """The records of hung-up requests are written after the client left: wait until none come."""
    from billing.models import UsageRecord

    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = UsageRecord.objects.count()
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= seconds:
            break
        time.sleep(0.5)
    return last


def check_records(report: Report, served: list[list], calls: list[Call]) -> None:
    from billing.models import UsageRecord

    records = {r.request_id: r for r in UsageRecord.objects.all()}
    by_id: dict[str, list[list]] = defaultdict(list)
    for entry in served:
        by_id[entry[0]].append(entry)
    ok_served = [entry for entry in served if entry[1] == 200]
    print(
        f"provider: {len(served)} model calls received ({len(ok_served)} answered 200, "
        f"{len(served) - len(ok_served)} injected or asked-for errors), for {len(by_id)} gateway requests; "
        f"{len(records)} usage records"
    )
    report.check(
        not by_id.get(""), f"every provider call carries a gateway request id ({len(by_id.get('', []))} do not)"
    )
    lost = sorted(set(by_id) - set(records) - {""})
    report.check(not lost, f"every gateway request the provider received has its record (lost: {len(lost)} {lost[:5]})")
    twice = sorted(rid for rid, entries in by_id.items() if sum(e[1] == 200 for e in entries) > 1)
    report.check(not twice, f"no gateway request was answered 200 twice by the provider ({len(twice)} {twice[:5]})")
    phantom = sorted(
        rid
        for rid, record in records.items()
        if rid not in by_id and not record.cache_hit and (record.output_tokens or record.status_code == 200)
    )
    report.check(
        not phantom,
        f"no record bills output or success for a call the provider never received ({len(phantom)} {phantom[:5]})",
    )
    refused_upstream = sorted(
        rid for rid, record in records.items() if record.status_code in (402, 429) and rid in by_id
    )
    report.check(
        not refused_upstream, f"no request refused by a limit or budget reached the provider ({len(refused_upstream)})"
    )
    settled = mismatched = estimated_served = 0
    examples = []
    for rid, entries in by_id.items():
        record = records.get(rid)
        complete = [e for e in entries if e[1] == 200 and e[3] is not None]
        if record is None or not complete:
            continue
        if record.estimated:
            estimated_served += 1
            continue
        settled += 1
        if (record.input_tokens, record.output_tokens) != (complete[-1][3], complete[-1][4]):
            mismatched += 1
            examples.append((rid, record.input_tokens, record.output_tokens, complete[-1][3:]))
    report.check(
        not mismatched,
        f"tokens of the {settled} records settled by the provider's usage equal that usage "
        f"(mismatched: {mismatched} {examples[:3]}; {estimated_served} completed upstream but estimated)",
    )
    seen = [call.request_id for call in calls if call.request_id]
    # A gateway that cannot read the database in time to authenticate knows no tenant to record
    # the request for (records belong to a tenant): its 503 database_unavailable has no record.
    unknown = {call.request_id for call in calls if call.error_code == "database_unavailable"}
    missing = sorted(set(seen) - set(records) - unknown)
    report.check(
        not missing,
        f"every request id the clients saw ({len(seen)}) has its record ({len(missing)} do not: {missing[:5]}; "
        f"{len(unknown - set(records))} 503 database_unavailable before the tenant was known have none)",
    )
    report.check(
        len(seen) == len(set(seen)), f"no request id came back to the clients twice ({len(seen) - len(set(seen))})"
    )
    outcomes = {call.request_id: call.outcome for call in calls if call.request_id}
    unpaid_ok = sorted(
        rid
        for rid, outcome in outcomes.items()
        if outcome == "200" and rid in records and (records[rid].status_code != 200 or not records[rid].output_tokens)
    )
    report.check(not unpaid_ok, f"every 200 a client received is a 200 record with tokens ({len(unpaid_ok)} not)")
    unpaid_hangups = sorted(
        rid
        for rid, outcome in outcomes.items()
        if outcome == "hangup" and rid in records and not (records[rid].input_tokens and records[rid].output_tokens)
    )
    hangups = sum(outcome == "hangup" for outcome in outcomes.values())
    report.check(
        not unpaid_hangups,
        f"each of the {hangups} streams a client hung up on after its first content bills input and output "
        f"({len(unpaid_hangups)} do not: {unpaid_hangups[:5]})",
    )
    statuses = Counter(record.status_code for record in records.values())
    print(f"records by status: {dict(sorted(statuses.items()))}")
    print(f"estimated records: {sum(r.estimated for r in records.values())}")


def print_logs(log_dir: Path) -> None:
    """Lines per level of each process's log (JSON lines; the mock's are uvicorn's plain ones)."""
    print("log lines per process and level:")
    for path in sorted(log_dir.glob("*.log")):
        levels = Counter(
            match.group(1) if (match := re.search(r'"level":"(\w+)"', line)) else "other"
            for line in path.read_text(errors="replace").splitlines()
        )
        print(f"  {path.stem:<12} {dict(sorted(levels.items()))}")


def check_budgets(report: Report, fixture: Fixture) -> None:
    from django.db.models import Sum

    from billing.models import UsageRecord
    from tenants.models import Tenant

    for slug, budget in fixture.budgets.items():
        tenant = Tenant.objects.get(slug=slug)
        spent = UsageRecord.objects.filter(tenant=tenant).aggregate(s=Sum("cost"))["s"] or Decimal(0)
        report.check(spent <= budget, f"tenant {slug}: spent {spent} of its budget {budget}")
    spends = dict(
        UsageRecord.objects.filter(api_key_id__in=fixture.key_budgets)
        .values_list("api_key_id")
        .annotate(s=Sum("cost"))
        .values_list("api_key_id", "s")
    )
    over = {key: spends[key] for key in spends if spends[key] > fixture.key_budgets[key]}
    full = sum(1 for key in spends if spends[key] > fixture.key_budgets[key] * Decimal("0.8"))
    top = max(spends.values(), default=Decimal(0))
    report.check(
        not over,
        f"{len(spends)} budgeted keys: none over its budget of {KEY_BUDGET} (highest spend {top}, "
        f"{full} spent past 80%; over: {over})",
    )


def check_redis(report: Report, redis_url: str) -> None:
    """Once every request has settled: nothing is held in Redis any more, and each budget
    counter of the month equals its tenant's (or key's) records to the 1e-12 USD."""
    import redis
    from django.db.models import Sum

    from billing.models import UsageRecord

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    month = datetime.now(UTC).strftime("%Y-%m")
    in_flight, journal = {}, {}
    counters: dict[tuple[str, int], int] = {}
    for name in client.scan_iter(match="gw:*", count=1000):
        plain = name.replace("{", "").replace("}", "")  # hash tags, should the layout get them
        if plain.startswith("gw:journal:"):
            journal[name] = client.zcard(name) if client.type(name) == "zset" else client.hlen(name)
        elif plain.startswith("gw:conc:"):
            in_flight[name] = client.zcard(name)
        elif plain.startswith("gw:spend:") and plain.endswith(":holds"):
            in_flight[name] = client.hlen(name)
        elif match := re.fullmatch(rf"gw:spend:(k:)?(\d+):{month}", plain):
            counters[("key" if match.group(1) else "tenant", int(match.group(2)))] = int(client.get(name) or 0)
    client.close()
    held = {name: count for name, count in in_flight.items() if count}
    report.check(
        not held, f"no concurrency slot or budget hold is left in Redis ({len(in_flight)} such keys; held: {held})"
    )
    left = {name: count for name, count in journal.items() if count}
    report.check(not left, f"the request journal holds no trace and no spooled record ({left})")
    wrong = {}
    for (owner, number), units in sorted(counters.items()):
        records = UsageRecord.objects.filter(**({"api_key_id": number} if owner == "key" else {"tenant_id": number}))
        total = records.aggregate(s=Sum("cost"))["s"] or Decimal(0)
        if units != int(total.scaleb(12)):
            wrong[f"{owner} {number}"] = (Decimal(units).scaleb(-12), total)
    report.check(
        not wrong,
        f"the {len(counters)} budget counters in Redis equal the records' spend (counter, records differ: {wrong})",
    )


def run_billing(report: Report, redis_url: str) -> date:
    """Roll up and invoice through the workers, twice; returns the day the records now lie on.

    The rollup never touches today (reports read today raw), and the soak's records are all of
    today: they are moved one day back first (the database is the soak's own), so that the
    workers' rollup covers them and the invoice is built from rollups of a closed day.
    """
    from celery import Celery
    from django.db.models import F

    from billing.models import Invoice, UsageRecord

    day = datetime.now(UTC).date() - timedelta(days=1)
    UsageRecord.objects.update(created_at=F("created_at") - timedelta(days=1))
    client = Celery("soak", broker=redis_url, backend=redis_url)
    period = day.strftime("%Y-%m")
    rounds = []
    for _ in range(2):
        began = time.monotonic()
        rolled = client.send_task("billing.tasks.rollup_usage").get(timeout=300)
        invoiced = client.send_task("billing.tasks.generate_invoices", kwargs={"period": period}).get(timeout=300)
        print(
            f"workers: rollup {rolled['records']} records of {rolled['days']}, invoices of {period} {invoiced} "
            f"({time.monotonic() - began:.1f} s)"
        )
        rounds.append(sorted(Invoice.objects.values_list("number", "total", "provider_cost")))
    client.close()
    report.check(rounds[0] == rounds[1], "rolling up and invoicing a second time changes no invoice")
    return day


def check_billing(report: Report, day: date) -> None:
    from django.db.models import Count, Sum

    from billing.models import Invoice, UsageRecord, UsageRollup
    from tenants.models import Tenant

    period = day.replace(day=1)
    sums = ("input_tokens", "output_tokens", "cost")
    for tenant in Tenant.objects.order_by("slug"):
        records = UsageRecord.objects.filter(tenant=tenant)
        raw = records.aggregate(requests=Count("id"), **{name: Sum(name) for name in sums})
        rolled = UsageRollup.objects.filter(tenant=tenant, day=day).aggregate(
            requests=Sum("requests"), **{name: Sum(name) for name in sums}
        )
        report.check(
            raw == rolled,
            f"rollup of {tenant.slug} equals its records: {raw['requests']} requests, "
            f"{raw['input_tokens']}/{raw['output_tokens']} tokens, {raw['cost']} (rollup: {rolled})",
        )
        billed = records.filter(price__isnull=False, cache_hit=False)
        billed_sums = billed.aggregate(c=Sum("cost"), i=Sum("input_tokens"), o=Sum("output_tokens"))
        invoice = Invoice.objects.filter(tenant=tenant, period=period).first()
        if invoice is None:
            report.check(False, f"{tenant.slug} has an invoice for {period:%Y-%m}")
            continue
        lines = list(invoice.lines.all())
        quantity_in = sum(line.quantity for line in lines if line.line_type in {"input", "cached_input", "cache_write"})
        quantity_out = sum(line.quantity for line in lines if line.line_type == "output")
        report.check(
            invoice.provider_cost == (billed_sums["c"] or 0)
            and quantity_in == (billed_sums["i"] or 0)
            and quantity_out == (billed_sums["o"] or 0)
            and invoice.total == sum(line.amount for line in lines),
            f"invoice of {tenant.slug} equals its records: provider cost {invoice.provider_cost} "
            f"(records {billed_sums['c']}), tokens {quantity_in}/{quantity_out} "
            f"(records {billed_sums['i']}/{billed_sums['o']}), total {invoice.total}",
        )


def check_rss(report: Report, samples: list[tuple[float, str, int]], seconds: float) -> None:
    per: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for at, label, rss in samples:
        per[label].append((at, rss))
    minutes = max(1, int(seconds // 60 + (seconds % 60 > 1)))
    print("RSS (MB) per minute, mean of the samples; then start, end, middle-third and last-third means:")
    print(f"  {'process':<22}" + "".join(f"{m + 1:>7}" for m in range(minutes)) + "   start    end    mid   last")
    for label, points in sorted(per.items()):
        row = []
        for m in range(minutes):
            values = [rss for at, rss in points if m * 60 <= at < (m + 1) * 60]
            row.append(f"{statistics.mean(values) / MB:7.1f}" if values else "      -")
        middle = [rss for at, rss in points if seconds / 3 <= at < 2 * seconds / 3]
        last = [rss for at, rss in points if 2 * seconds / 3 <= at <= seconds]
        mid_mean = statistics.mean(middle) if middle else 0
        last_mean = statistics.mean(last) if last else 0
        print(
            f"  {label:<22}" + "".join(row) + f" {points[0][1] / MB:7.1f}{points[-1][1] / MB:7.1f}"
            f"{mid_mean / MB:7.1f}{last_mean / MB:7.1f}"
        )
        if label == "mock" or not middle or not last:
            continue  # the mock keeps the soak's ledger: it grows by design
        growth = last_mean - mid_mean
        report.check(
            growth <= max(0.05 * mid_mean, 5 * MB),
            f"{label}: no growth (last third {last_mean / MB:.1f} MB vs middle third {mid_mean / MB:.1f} MB)",
        )


def print_latency(calls: list[Call], seconds: float) -> None:
    minutes = max(1, int(seconds // 60 + (seconds % 60 > 1)))
    print("per minute: calls, outcomes, p50/p99 latency (s) of the 200s (JSON: whole answer; streams: to the end)")
    for m in range(minutes):
        inside = [call for call in calls if m * 60 <= call.started < (m + 1) * 60]
        ok = sorted(call.latency for call in inside if call.outcome == "200")
        outcomes = Counter(call.outcome for call in inside)
        p50 = statistics.median(ok) if ok else 0
        p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else 0
        outcomes_text = dict(sorted(outcomes.items()))
        print(f"  minute {m + 1:>2}: {len(inside):>6} calls  p50 {p50:.3f}  p99 {p99:.3f}  {outcomes_text}")
    by_scenario = defaultdict(Counter)
    for call in calls:
        by_scenario[call.scenario][call.outcome] += 1
    print("outcomes by scenario:")
    for scenario, outcomes in sorted(by_scenario.items()):
        print(f"  {scenario:<16} {dict(sorted(outcomes.items()))}")


def check_exercised(report: Report, calls: list[Call]) -> None:
    outcomes = Counter(call.outcome for call in calls)
    for outcome, what in (
        ("200", "successes"),
        ("429", "limit refusals"),
        ("402", "budget refusals"),
        ("hangup", "client hang-ups"),
        ("gave_up", "abandoned JSON calls"),
    ):
        report.check(outcomes[outcome] > 0, f"the run had {what}: {outcomes[outcome]}")
    report.check(
        sum(outcomes[s] for s in outcomes if s.startswith("5")) + outcomes["stream_error"] > 0,
        "the run had upstream failures",
    )


# --- main ---


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8, help="Closed-loop client tasks.")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--rss-every", type=float, default=5.0, help="Seconds between RSS samples.")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--serve-mock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency-ms", type=int, default=15, help=argparse.SUPPRESS)
    parser.add_argument("--fault-rate", type=float, default=0.02, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mock:
        serve_mock(args)
        return 0

    import redis

    seconds = args.minutes * 60
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.minutes:g} min, concurrency {args.concurrency}, logs in {log_dir}")
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    fresh_database(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()  # the soak's own db only
    setup_django(args.database_url, DJANGO_SECRET_KEY=SECRET, API_KEY_PEPPER=SECRET)
    fixture = fixture_setup(args.minutes)
    processes = Processes(log_dir, stop_timeout=20.0)
    report = Report()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        mock_url, gateways = start_all(processes, args)
        print(f"mock {mock_url}, gateways {gateways}, processes: {[label for label, _ in processes.members()]}")
        started = time.monotonic()
        sampler = RssSampler(processes, args.rss_every, started)
        sampler.sample()
        sampler.start()
        load = Load(gateways, fixture, seconds, started, args.seed)
        asyncio.run(load.run(args.concurrency, args.redis_url))
        sampler.halt.set()
        sampler.join()
        sampler.sample()
        ran = time.monotonic() - started
        print(
            f"load: {len(load.calls)} calls in {ran:.0f} s ({len(load.calls) / ran:.1f}/s), "
            f"{load.reconciled} budget counter resets sent to the workers"
        )
        print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        wait_for_quiet_records()
        with urllib.request.urlopen(f"{mock_url}/_soak/served", timeout=30) as response:
            served = json.loads(response.read())
        print_latency(load.calls, seconds)
        print("checks:")
        check_exercised(report, load.calls)
        check_records(report, served, load.calls)
        check_budgets(report, fixture)
        check_redis(report, args.redis_url)
        check_billing(report, run_billing(report, args.redis_url))
        check_rss(report, sampler.samples, seconds)
    finally:
        processes.stop_all()
    print_logs(log_dir)
    if report.failures:
        print(f"SOAK FAILED: {len(report.failures)} check(s)")
        for failure in report.failures:
            print(f"  - {failure}")
        return 1
    print("SOAK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
