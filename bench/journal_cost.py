"""What the write-ahead trace adds to one request (gateway/journal.py), against a bare Redis PING:

- "trace sent ahead": what the proxy does, trace_open(ahead=True) before the upstream call,
  trace_confirmed() before the usage record, trace_done_soon() after its commit (removals
  batched every DONE_DELAY_SECONDS, their CPU counted);
- "trace waited": trace_open() and trace_done() each awaiting Redis' reply through redis-py, as
  the proxy did before the trace was sent ahead.

Runs the journal as the gateway does (one uvloop event loop, real Redis at REDIS_URL, default
redis://127.0.0.1:6379/3), sequentially and with 50 requests in flight, and prints wall and
CPU microseconds per request. The traces it writes are removed again.

usage: python bench/journal_cost.py [--requests N] [--reps N]
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
        trace_sent=None,
        fallen_back=False,
    )


async def waited(i: int) -> None:
    await journal.trace_open(call=call(i))
    await journal.trace_done(request_id=f"bench-{i:08d}")


async def ahead(i: int) -> None:
    this = call(i)
    await journal.trace_open(call=this, ahead=True)
    await asyncio.sleep(0)  # the provider call would be made here
    await journal.trace_confirmed(this)
    journal.trace_done_soon(request_id=this.request_id)


async def ping(_: int) -> None:
    await limits.shared_redis().ping()


async def measure(fn, n: int, concurrency: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, concurrency):
        await asyncio.gather(*(fn(i) for i in range(start, min(n, start + concurrency))))
    await asyncio.sleep(journal.DONE_DELAY_SECONDS * 1.5)  # the last batched removals
    await journal.flush()
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall - journal.DONE_DELAY_SECONDS * 1.5
    return wall / n * 1e6, cpu / n * 1e6


async def main(n: int, reps: int) -> None:
    await waited(-1)  # scripts loaded, connections open
    await ahead(-2)
    for concurrency in (1, 50):
        for name, fn in (("ping", ping), ("trace waited", waited), ("trace sent ahead", ahead)) * reps:
            wall, cpu = await measure(fn, n, concurrency)
            print(f"{name:16} concurrency {concurrency:2}: {wall:7.1f} us wall, {cpu:6.1f} us CPU per request")
    await limits.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=1, help="alternate the three this many times")
    args = parser.parse_args()
    try:
        import uvloop  # as the gateway runs (uvicorn picks it when installed)
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop is not None else asyncio.run)(main(args.requests, args.reps))
