"""What the limiter adds to one request: admit + settle with every limit on, against none.

Runs `gateway.limits` as the gateway does (one event loop, real Redis at REDIS_URL, default
redis://127.0.0.1:6379/3), in the same run:
  - off:      a caller with no limits and no budget (the limiter makes no Redis call at all),
  - redis:    a bare Redis PING round trip, the floor of any shared counter,
  - on:       requests/min, tokens/min, concurrency and a monthly budget,
sequentially and with 50 requests in flight, and prints microseconds per request and ratios:
wall time, and this process's CPU time (every thread, worker threads included; Redis' own CPU
is not in it).

usage: python bench/limiter_cost.py [--requests N]
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")

import django  # noqa: E402

django.setup()

from redis.asyncio import Redis  # noqa: E402

from gateway import limits  # noqa: E402
from gateway.registry import Caller, KeyView, TenantView  # noqa: E402


def caller(*, limited: bool) -> Caller:
    ident = random.randrange(10**9, 2 * 10**9)
    big = 10**9 if limited else None
    tenant = TenantView(
        id=ident, slug=f"bench{ident}", active=True, region="", allowed_providers=frozenset(),
        allowed_model_ids=frozenset(), requests_per_minute=big, tokens_per_minute=big,
        max_concurrent=10**6 if limited else None,
        model_aliases={}, default_params={}, max_tokens_cap=None, log_requests=False,
        monthly_budget=Decimal("1000000") if limited else None, credentials={},
    )  # fmt: skip
    key = KeyView(
        id=ident, tenant_id=ident, allowed_model_ids=frozenset(),
        requests_per_minute=None, tokens_per_minute=None, max_concurrent=None,
    )  # fmt: skip
    return Caller(key=key, tenant=tenant)


async def one_request(who: Caller, budget: Decimal | None) -> None:
    async def month_to_date() -> Decimal:
        return Decimal(0)

    admission = await limits.admit(
        caller=who,
        request_id=os.urandom(8).hex(),
        prompt_tokens=20,
        max_output_tokens=100,
        worst_case_cost=Decimal("0.0001"),
        budget=budget,
        month_to_date=month_to_date,
    )
    await admission.settle(tokens=80, cost=Decimal("0.00005"))


async def measure(label: str, work, n: int, concurrency: int) -> tuple[float, float]:
    """Microseconds of wall time and of this process's CPU time per request."""
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded():
        async with semaphore:
            await work()

    for _ in range(min(200, n)):  # warm-up: connections, scripts loaded
        await work()
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(guarded() for _ in range(n)))
    return (time.perf_counter() - started) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def main(n: int) -> None:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    limited, unlimited = caller(limited=True), caller(limited=False)
    rows = []
    for concurrency in (1, 50):
        runs = {"off": [], "redis": [], "on": []}
        for _ in range(3):  # alternate, take medians
            runs["off"].append(await measure("off", lambda: one_request(unlimited, None), n, concurrency))
            runs["redis"].append(await measure("redis", redis.ping, n, concurrency))
            runs["on"].append(
                await measure("on", lambda: one_request(limited, limited.tenant.monthly_budget), n, concurrency)
            )
        rows.append((concurrency, {k: tuple(map(statistics.median, zip(*v, strict=True))) for k, v in runs.items()}))
    await redis.aclose()
    await limits.aclose()
    print(f"limiter cost per request, {n} requests per cell, median of 3 (µs per request: wall / CPU)")
    print("| in flight | limits off | Redis PING | limits on | on − off | on / PING |")
    print("|---|---|---|---|---|---|")
    for concurrency, m in rows:
        cells = [m["off"], m["redis"], m["on"], (m["on"][0] - m["off"][0], m["on"][1] - m["off"][1])]
        print(
            f"| {concurrency} | "
            + " | ".join(f"{wall:.1f} / {cpu:.1f}" for wall, cpu in cells)
            + f" | {m['on'][0] / m['redis'][0]:.1f}× |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
