"""What routing adds to one request: plan + take + answered, as `_first_that_answers` runs them.

Runs `gateway.routing` as the gateway does (one event loop, real Redis at REDIS_URL, default
redis://127.0.0.1:6379/3), in the same run, sequentially (c=1):
  - single:    one deployment, `priority`, no quota (not engaged: no Redis call),
  - redis:     a bare Redis PING round trip, the floor of any shared state,
  - priority:  two deployments, `priority` (take + report: two round trips),
  - weighted:  two deployments, `weighted`, both with a requests/min quota,
  - least_busy: two deployments (one more round trip to read the in-flight counts),
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
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        await body()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:<11} {wall / requests * 1e6:8.1f} µs wall {cpu / requests * 1e6:8.1f} µs CPU per request")


async def main(requests: int) -> None:
    redis = shared_redis()
    single = [deployment()]
    two = [deployment(), deployment()]
    quota = [deployment(weight=1, requests_per_minute=10**9), deployment(weight=3, requests_per_minute=10**9)]
    await measure("single", requests, lambda: one("priority", single))
    await measure("redis", requests, redis.ping)
    await measure("priority", requests, lambda: one("priority", two))
    await measure("weighted", requests, lambda: one("weighted", quota))
    await measure("least_busy", requests, lambda: one("least_busy", two))
    await limits.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
