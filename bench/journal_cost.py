"""What the write-ahead trace adds to one request: trace_open() before the upstream call and
trace_done() after the usage record's commit (gateway/journal.py), against a bare Redis PING.

Runs the journal as the gateway does (one event loop, real Redis at REDIS_URL, default
redis://127.0.0.1:6379/3), sequentially and with 50 requests in flight, and prints wall and
CPU microseconds per request. The traces it writes are removed again.

usage: python bench/journal_cost.py [--requests N]
"""

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")

import django  # noqa: E402

django.setup()

from gateway import journal, limits  # noqa: E402


def call(i: int) -> SimpleNamespace:
    return SimpleNamespace(
        request_id=f"bench-{i:08d}",
        caller=SimpleNamespace(tenant=SimpleNamespace(id=1, slug="bench"), key_id=1),
        model_name="gpt-4o-mini",
        endpoint="chat",
        deployment=SimpleNamespace(id=1, provider="openai", upstream="gpt-4o-mini-2024-07-18"),
        price=SimpleNamespace(id=1),
        created_at=datetime.now(UTC),
        stream=False,
        prompt_estimate=123,
    )


async def one(i: int) -> None:
    await journal.trace_open(call=call(i))
    await journal.trace_done(request_id=f"bench-{i:08d}")


async def ping(_: int) -> None:
    await limits.shared_redis().ping()


async def measure(fn, n: int, concurrency: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, concurrency):
        await asyncio.gather(*(fn(i) for i in range(start, min(n, start + concurrency))))
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def main(n: int) -> None:
    await one(-1)  # scripts loaded, connections open
    for concurrency in (1, 50):
        for name, fn in (("ping x2", ping), ("trace open+done", one)):
            runs = 2 if fn is ping else 1
            wall, cpu = await measure(fn, n, concurrency)
            per = f"{wall * runs:7.1f} us wall, {cpu * runs:6.1f} us CPU per request"
            print(f"{name:16} concurrency {concurrency:2}: {per}")
    await limits.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    asyncio.run(main(parser.parse_args().requests))
