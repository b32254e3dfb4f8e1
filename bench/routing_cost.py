"""What routing adds to one request: plan + take + answered, as `_first_that_answers` runs them.

Runs `gateway.routing` as the gateway does (one event loop, real Redis at REDIS_URL, default
redis://127.0.0.1:6379/3), in the same run, sequentially (c=1), each request yielding to the event
loop once as the upstream call would (so that the routing view's sync task runs on its timer):
  - single:     one deployment, `priority`, no quota (not engaged: no Redis call),
  - redis:      a bare Redis PING round trip, the floor of any shared state,
  - priority, weighted, least_busy, latency: two deployments without quota (the routing view:
    no awaited round trip; its sync every GATEWAY_ROUTING_SYNC_SECONDS is counted in the CPU),
  - quota:      two deployments, `weighted`, both with a requests/min quota (one awaited take each),
  - sync:       one sync of the view alone (two deployments, 20 successes' reports batched): what
    the process pays per GATEWAY_ROUTING_SYNC_SECONDS while it routes, whatever its traffic,
and prints microseconds per request (wall time, this process's CPU time).

usage: python bench/routing_cost.py [--requests N]
"""

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")

import django  # noqa: E402

django.setup()

from gateway import limits, routing  # noqa: E402
from gateway.limits.redis_store import shared_redis  # noqa: E402
from gateway.registry import DeploymentView, ModelView  # noqa: E402


def deployment(**fields) -> DeploymentView:
    ident = random.randrange(10**9, 2 * 10**9)
    return DeploymentView(id=ident, provider="openai", upstream="gpt", region="", base_url="", **fields)


def call(strategy: str, deployments: list[DeploymentView]):
    model = ModelView(
        id=1, name="bench", provider="openai", deployments=tuple(deployments), prices=(), routing=strategy
    )
    return SimpleNamespace(
        request_id=f"bench-{random.random()}", model=model, model_name="bench", requested_model="bench",
        body={}, prompt_estimate=10,
    )  # fmt: skip


async def one(strategy: str, deployments: list[DeploymentView]) -> None:
    plan = await routing.plan(call(strategy, deployments), deployments)
    for d in plan.order:
        attempt = await plan.take(d)
        if attempt is not None:
            await attempt.answered()
            return


async def measure(label: str, requests: int, body) -> None:
    for _ in range(50):
        await body()
        await asyncio.sleep(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        await body()
        await asyncio.sleep(0)  # the upstream call's await: other tasks (the view's sync) run
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:<11} {wall / requests * 1e6:8.1f} µs wall {cpu / requests * 1e6:8.1f} µs CPU per request")


async def main(requests: int) -> None:
    redis = shared_redis()
    single = [deployment()]
    two = [deployment(), deployment()]
    quota = [deployment(weight=1, requests_per_minute=10**9), deployment(weight=3, requests_per_minute=10**9)]
    await measure("single", requests, lambda: one("priority", single))
    await measure("redis", requests, redis.ping)
    for strategy in ("priority", "weighted", "least_busy", "latency"):
        await measure(strategy, requests, lambda strategy=strategy: one(strategy, two))
    await measure("quota", requests, lambda: one("weighted", quota))
    view = getattr(routing.redis_routing, "view", None)
    if view is not None:

        async def sync() -> None:
            for _ in range(20):
                await one("weighted", two)
            await view.sync()

        await measure("sync", max(1, requests // 20), sync)  # less 20 x weighted's
    await limits.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
