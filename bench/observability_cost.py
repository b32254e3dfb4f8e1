"""What monitoring adds to one gateway request: the metrics and the JSON request line, against nothing.

For each request the gateway runs, besides its own work: the in-flight gauge (up, re-labelled to
the tenant, down: `InFlight` / `request_attributed`) and, once the usage record is written,
`request_finished()` (counters, tokens, cost, latency histogram, and the JSON line). This runs
exactly that, in one process, on pre-built usage outcomes of 20 tenants × 5 models with a mix of
successes and errors, in the same run:
  - nothing:          the loop alone,
  - metrics:          gauge + request_finished() with the request line switched off,
  - metrics + line:   the same with the line formatted (JSON) and written to /dev/null,
  - Redis PING:       one round trip to Redis (REDIS_URL, default redis://127.0.0.1:6379/3), for scale,
each with prometheus_client in process memory (one process) and in multiprocess mode (mmap'ed
files, PROMETHEUS_MULTIPROC_DIR in a temporary directory): every mode runs in a child process of
its own because prometheus_client picks its mode when it is imported. Medians of 5 rounds.

usage: python bench/observability_cost.py [--requests N]
"""

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(n: int) -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
    import django

    django.setup()
    import redis

    from billing.pricing import Tokens
    from gateway import observability
    from gateway.metered import Metered
    from proxy_platform.jsonlog import JsonFormatter

    rng = random.Random(7)
    outcomes = []
    for i in range(1000):
        status, error = rng.choice([(200, "")] * 8 + [(429, "rate_limit_requests"), (502, "upstream_error")])
        outcomes.append(
            (
                Metered(
                    request_id=os.urandom(16).hex(),
                    created_at=datetime.now(tz=UTC),
                    tenant_id=i % 20,
                    api_key_id=i % 40,
                    model=f"model-{i % 5}",
                    provider="openai",
                    upstream_model="gpt-4o-mini",
                    endpoint=rng.choice(["chat", "messages"]),
                    status_code=status,
                    error_type=error,
                    tokens=Tokens(input=rng.randrange(10, 2000), cached_input=0, output=rng.randrange(0, 500))
                    if status == 200
                    else Tokens(),
                    price_id=1,
                    price=None,
                    latency_ms=rng.randrange(20, 3000),
                    streamed=rng.random() < 0.5,
                    estimated=False,
                    tenant_slug=f"tenant-{i % 20}",
                    deployment_id=i % 5,
                ),
                Decimal("0.000123456789") if status == 200 else Decimal(0),
            )
        )

    class Request:  # what request_attributed() reads: the ASGI scope
        def __init__(self, scope):
            self.scope = scope

    def nothing(metered, cost):
        pass

    def observed(metered, cost):
        scope = {}
        scope[observability._FLIGHT] = flight = observability._Flight(metered.endpoint)
        observability.request_attributed(Request(scope), tenant=metered.tenant_slug)
        observability.request_finished(metered, cost=cost)
        flight.land()

    line_log = logging.getLogger("gateway.request")
    line_log.propagate = False
    handler = logging.StreamHandler(open(os.devnull, "w"))  # lives as long as the process
    handler.setFormatter(JsonFormatter())
    line_log.handlers = [handler]

    def run(work) -> float:
        for metered, cost in outcomes[:200]:
            work(metered, cost)
        started = time.perf_counter()
        for i in range(n):
            metered, cost = outcomes[i % len(outcomes)]
            work(metered, cost)
        return (time.perf_counter() - started) / n * 1e6

    ping = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3"))

    def redis_ping() -> float:
        ping.ping()
        started = time.perf_counter()
        for _ in range(n // 10):
            ping.ping()
        return (time.perf_counter() - started) / (n // 10) * 1e6

    rounds = {"nothing": [], "metrics": [], "metrics + line": [], "Redis PING": []}
    for _ in range(5):
        rounds["nothing"].append(run(nothing))
        line_log.setLevel(logging.CRITICAL)
        rounds["metrics"].append(run(observed))
        line_log.setLevel(logging.INFO)
        rounds["metrics + line"].append(run(observed))
        rounds["Redis PING"].append(redis_ping())
    return {k: statistics.median(v) for k, v in rounds.items()}


def main(n: int) -> None:
    results = {}
    for mode in ("one process (memory)", "multiprocess (mmap files)"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as directory:
            if mode.startswith("multiprocess"):
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--requests", str(n)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        results[mode] = json.loads(out.splitlines()[-1])
    print(f"monitoring cost per request, {n} requests per cell, median of 5 (µs of CPU-bound wall time)")
    print("| prometheus_client | nothing | metrics | metrics + line | added | Redis PING | added / PING |")
    print("|---|---|---|---|---|---|---|")
    for mode, m in results.items():
        added = m["metrics + line"] - m["nothing"]
        print(
            f"| {mode} | {m['nothing']:.2f} | {m['metrics']:.2f} | {m['metrics + line']:.2f} | {added:.2f} "
            f"| {m['Redis PING']:.1f} | {added / m['Redis PING']:.2f}× |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.requests)))
    else:
        main(args.requests)
