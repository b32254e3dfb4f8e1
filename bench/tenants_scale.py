"""Thousands of tenants (issue 15 part 7): 5,000 tenants with 50,000 keys, then the admin pages,
the invoice run and a gateway process's memory, against their targets.

Self-contained, on a database of its own (BENCH_SCALE_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/bench_scale; created, and dropped at the end unless --keep):

1. import   one configuration file (config_apply, as `manage.py import_tenants`): a catalog
            model with its price, a plan, and --tenants tenants with one key each;
2. keys     the other keys (--keys in all) through the keys path (tenants.services.api_key_create,
            what /v1/keys and `manage.py create_api_key` call);
3. usage    --records synthetic records this month (COPY), the closed days rolled up, and real
            traffic: --requests chat completions through one gateway process (uvicorn, Redis
            db --redis-db) and the mock provider, over a random subset of --active keys;
4. memory   the gateway's RSS while every key is seen once (GET /v1/models authenticates the
            key and its tenant, no upstream call), sampled every 10% of the keys: bounded by
            GATEWAY_KEY_CACHE_SIZE / GATEWAY_TENANT_CACHE_SIZE, it levels off;
5. invoices invoices_generate for the month (every tenant's draft), timed: target 2 minutes;
6. admin    the dashboard, the tenant list and a search, the key list, a tenant page, analytics
            and its CSV, through Django's test client as staff: cold, then the median and p95
            of --runs warm renders; target 500 ms (warm p95).

    nice -n 10 .venv/bin/python bench/tenants_scale.py [--tenants 5000] [--keys 50000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path
from urllib.parse import urlparse

from benchdb import ensure_database, setup_django
from gateway_overhead import Processes, free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bench_scale"
MODEL = "mock-gpt"
UPSTREAM_KEY = "sk-bench-upstream"
PAGE_TARGET_MS = 500.0
INVOICE_TARGET_S = 120.0


def timed(label: str, results: dict, fn, *args, **kwargs):
    began = time.perf_counter()
    value = fn(*args, **kwargs)
    results[label] = time.perf_counter() - began
    print(f"{label:<44} {results[label]:8.1f} s", flush=True)
    return value


# --- 1, 2: tenants and keys ---


def import_document(tenants: int) -> tuple[dict, list[str]]:
    from tenants.keys import key_generate

    raws = [key_generate() for _ in range(tenants)]
    document = {
        "models": {MODEL: {"provider": "openai", "upstream": MODEL, "input_per_1m": "2.50", "output_per_1m": "10.00"}},
        "plans": {"scale": {"monthly_base_fee": "49.00", "included_allowance": "10.00", "markup_percent": "20.00"}},
        "tenants": {
            f"scale-{n:05d}": {
                "name": f"Scale tenant {n:05d}",
                "api_key": raws[n],
                "billing_plan": "scale",
                "providers": ["openai"],
                # a tenth of the tenants limited, as a platform's would be
                "rate_limit": {"requests_per_minute": 6000, "tokens_per_minute": None, "max_concurrent": None}
                if n % 10 == 0
                else {},
            }
            for n in range(tenants)
        },
    }
    return document, raws


def keys_create(total: int, tenants: int) -> list[str]:
    from django.db import transaction

    from tenants.models import Tenant
    from tenants.services import api_key_create

    raws = []
    ids = list(Tenant.objects.filter(slug__startswith="scale-").order_by("slug"))
    per_tenant = max(0, total // tenants - 1)
    for tenant in ids:
        with transaction.atomic():
            raws += [api_key_create(tenant=tenant, name=f"key {n}")[1] for n in range(per_tenant)]
    return raws


# --- 3, 4: processes ---


def start_mockllm(processes: Processes) -> str:
    process = processes.start(
        [sys.executable, "manage.py", "mockllm", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    wait_until_up(f"{url}/health", process)
    return url


def start_gateway(processes: Processes, *, upstream: str, db_url: str, redis_url: str) -> tuple[int, str]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        DJANGO_DEBUG="0",
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=upstream.rstrip("/") + "/v1",
        LOG_LEVEL="WARNING",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        GATEWAY_AUTH_CACHE_SECONDS="600",  # nothing expires during the run: only the size bound frees memory
    )
    args = [sys.executable, "-m", "uvicorn", "proxy_platform.asgi:application", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    log = open(ROOT / "bench" / "tenants_scale.gateway.log", "w")  # noqa: SIM115 (closed with the process)
    process = processes.start(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/healthz", process)
    return process.pid, url


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def call(url: str, key: str, body: dict | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def traffic(url: str, keys: list[str], requests: int, concurrency: int) -> dict[int, int]:
    rng = random.Random(15)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    picks = [rng.choice(keys) for _ in range(requests)]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def one(key: str) -> None:
        status = call(f"{url}/v1/chat/completions", key, body)
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, picks))
    return statuses


def see_every_key(url: str, pid: int, keys: list[str], concurrency: int) -> list[tuple[int, float]]:
    samples = [(0, rss_mb(pid))]
    step = max(1, len(keys) // 10)
    statuses: dict[int, int] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for start in range(0, len(keys), step):
            for status in pool.map(lambda k: call(f"{url}/v1/models", k), keys[start : start + step]):
                statuses[status] = statuses.get(status, 0) + 1
            samples.append((min(len(keys), start + step), rss_mb(pid)))
    if set(statuses) != {200}:
        raise SystemExit(f"GET /v1/models answered {statuses}")
    return samples


# --- 6: admin pages ---


def render(client, url: str) -> float:
    began = time.perf_counter()
    response = client.get(url)
    if response.streaming:
        b"".join(response.streaming_content)
    elapsed = (time.perf_counter() - began) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    return elapsed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def admin_pages(runs: int, tenants: int) -> list[tuple[str, float, float, float]]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from tenants.models import Tenant

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench@example.com", "bench-admin-password"
    )
    number = f"{tenants // 2:05d}"
    tenant = Tenant.objects.get(slug=f"scale-{number}")
    changelist = reverse("admin:tenants_tenant_changelist")
    pages = [
        ("dashboard", reverse("admin:index")),
        ("tenant list", changelist),
        ("tenant list, search", changelist + f"?q={number}"),
        ("tenant list, search (many)", changelist + "?q=scale-01"),
        ("key list", reverse("admin:tenants_apikey_changelist")),
        ("key list, search", reverse("admin:tenants_apikey_changelist") + f"?q={number}"),
        ("tenant page", reverse("admin:tenants_tenant_overview", args=[tenant.id])),
        ("tenant change form", reverse("admin:tenants_tenant_change", args=[tenant.id])),
        ("analytics", reverse("admin:analytics")),
        ("analytics CSV", reverse("admin:analytics") + "?format=csv"),
    ]
    client = Client()
    client.force_login(user)
    rows = []
    for name, page in pages:
        cold = render(client, page)
        warm = [render(client, page) for _ in range(runs)]
        rows.append((name, cold, statistics.median(warm), p95(warm)))
    return rows


def print_pages(pages: list[tuple[str, float, float, float]], runs: int) -> bool:
    header = f"{'page':<28} {'cold':>9} {'median':>9} {'p95':>9}"
    print(f"\n{header}   target {PAGE_TARGET_MS:.0f} ms (warm p95), load average {os.getloadavg()[0]:.2f}")
    met = True
    for name, cold, median, high in pages:
        ok = high < PAGE_TARGET_MS
        met &= ok
        print(f"{name:<28} {cold:7.0f}ms {median:7.0f}ms {high:7.0f}ms   {'met' if ok else 'NOT MET'}")
    print(f"({runs} warm renders per page)")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=1_000_000, help="synthetic usage records this month")
    parser.add_argument("--requests", type=int, default=3000, help="chat completions through the gateway")
    parser.add_argument("--active", type=int, default=500, help="keys the traffic is spread over")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--keep", action="store_true", help="keep the database (default: dropped at the end)")
    parser.add_argument("--pages-only", action="store_true", help="only the admin pages, on a database --keep left")
    options = parser.parse_args()

    url = os.environ.get("BENCH_SCALE_DATABASE_URL", DEFAULT_URL)
    redis_url = f"redis://127.0.0.1:6379/{options.redis_db}"
    ensure_database(url)
    setup_django(url, DJANGO_ALLOWED_HOSTS="testserver")

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from billing.models import Invoice, UsageRecord
    from billing.services import invoices_generate, usage_rollup
    from billing.synthetic import synthetic_usage_create
    from config.apply import config_apply
    from tenants.models import ApiKey, Tenant

    call_command("migrate", verbosity=0)
    if options.pages_only:
        print_pages(admin_pages(options.runs, options.tenants), options.runs)
        return 0
    if Tenant.objects.exists():
        raise SystemExit(f"{urlparse(url).path} is not empty: drop it first (or name another database)")
    loads = [os.getloadavg()[0]]
    results: dict[str, float] = {}
    processes = Processes()
    try:
        document, config_keys = import_document(options.tenants)
        size = len(json.dumps(document))
        timed(
            f"import: {options.tenants:,} tenants ({size / 1e6:.1f} MB file)", results, config_apply, document=document
        )
        more = timed(
            f"keys: {options.keys - options.tenants:,} more through api_key_create",
            results,
            keys_create,
            options.keys,
            options.tenants,
        )
        keys = config_keys + more
        print(f"  {Tenant.objects.count():,} tenants, {ApiKey.objects.count():,} keys")

        now = timezone.now()
        month = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        timed(
            f"usage: {options.records:,} synthetic records (COPY)",
            results,
            synthetic_usage_create,
            start=month,
            end=now,
            total=options.records,
            seed=15,
        )
        timed("usage: rollup of the month's closed days", results, usage_rollup, since=month.date(), now=now)

        mock = start_mockllm(processes)
        pid, gateway = start_gateway(processes, upstream=mock, db_url=url, redis_url=redis_url)
        rng = random.Random(7)
        active = rng.sample(keys, min(options.active, len(keys)))
        statuses = timed(
            f"traffic: {options.requests:,} completions over {len(active):,} keys",
            results,
            traffic,
            gateway,
            active,
            options.requests,
            options.concurrency,
        )
        served = UsageRecord.objects.filter(endpoint="chat", created_at__gte=now).count()
        print(f"  statuses {statuses}, {served:,} usage records written by the gateway")

        order = list(keys)
        random.Random(8).shuffle(order)
        samples = timed(
            f"memory: every one of {len(keys):,} keys seen once", results, see_every_key, gateway, pid, order, 16
        )
        loads.append(os.getloadavg()[0])

        run = timed(
            "invoices: the month's run (every tenant)", results, invoices_generate, period=month.date(), now=now
        )
        drafts = Invoice.objects.filter(period=month.date()).count()
        print(f"  {drafts:,} draft invoices ({run!r:.120})")
        pages = admin_pages(options.runs, options.tenants)
        loads.append(os.getloadavg()[0])
    finally:
        processes.stop_all()

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        db_size = cursor.fetchone()[0]

    print(f"\n== {options.tenants:,} tenants, {len(keys):,} keys, {UsageRecord.objects.count():,} usage records")
    load = " / ".join(f"{x:.2f}" for x in loads)
    print(f"database {urlparse(url).path.lstrip('/')} {db_size}; load average (1 min) {load}, {os.cpu_count()} cores")
    print("\ngateway RSS while every key is seen once (GET /v1/models), settings "
          "GATEWAY_KEY_CACHE_SIZE / GATEWAY_TENANT_CACHE_SIZE as configured:")  # fmt: skip
    print("  keys seen  " + " ".join(f"{n:>7,}" for n, _ in samples))
    print("  RSS (MB)   " + " ".join(f"{mb:7.1f}" for _, mb in samples))
    invoice_s = results["invoices: the month's run (every tenant)"]
    met = invoice_s < INVOICE_TARGET_S
    print(f"\ninvoice run {invoice_s:.1f} s, target {INVOICE_TARGET_S:.0f} s: {'met' if met else 'NOT MET'}")
    met &= print_pages(pages, options.runs)

    if not options.keep:
        connection.close()
        import psycopg

        parts = urlparse(url)
        with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{parts.path.lstrip("/")}" WITH (FORCE)')
        print(f"dropped {parts.path.lstrip('/')}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
