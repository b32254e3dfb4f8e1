"""What writing one usage record costs the gateway's process: through a worker thread and the pool
(`db_call`, as every record was written before) against the event loop's own connection
(`db_fetchone_direct`, gateway/db.py), one record at a time as at concurrency 1.

Runs `gateway.metering.record()` as the request's owner does (uvloop, the bench database of
bench/gateway_overhead.py: BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/bench_gateway),
alternating the two ways in blocks so that a drift of a shared machine touches both alike, and
prints the process's CPU (every thread, the worker's included) and wall time per record, each
block and the medians. Its records (request ids `usage-bench-*`) are deleted again.

usage: python bench/usage_write_cost.py [--records 500] [--blocks 6]
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal

from benchdb import ensure_database, setup_django


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=500, help="per block (default 500)")
    parser.add_argument("--blocks", type=int, default=6, help="blocks of each way (default 6)")
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_gateway")
    ensure_database(url)
    setup_django(url, DJANGO_DEBUG="0")
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from billing.models import UsageRecord
    from billing.pricing import Price, Tokens
    from gateway import metering
    from gateway.metered import Metered
    from tenants.models import Tenant

    call_command("migrate", verbosity=0)
    tenant, _ = Tenant.objects.get_or_create(slug="bench-usage-write", defaults={"name": "bench-usage-write"})
    price = Price(input_per_1m=Decimal("0.15"), output_per_1m=Decimal("0.60"))
    prefix = f"usage-bench-{uuid.uuid4().hex[:8]}"

    def metered(i: int) -> Metered:
        return Metered(
            request_id=f"{prefix}-{i}",
            created_at=timezone.now(),
            tenant_id=tenant.id,
            api_key_id=None,
            model="mock-gpt",
            provider="openai",
            upstream_model="mock-gpt",
            endpoint="chat",
            status_code=200,
            error_type="",
            tokens=Tokens(input=13, output=32),
            price_id=None,
            price=price,
            latency_ms=3,
            streamed=False,
            estimated=False,
            cache_hit=False,
            tenant_slug=tenant.slug,
        )

    async def block(direct: bool, start: int) -> tuple[float, float]:
        settings.GATEWAY_DB_DIRECT = direct
        records = [metered(start + i) for i in range(args.records)]
        cpu, wall = time.process_time(), time.perf_counter()
        for record in records:
            await metering.record(record)
        n = args.records
        return (time.process_time() - cpu) * 1e6 / n, (time.perf_counter() - wall) * 1e6 / n

    async def run() -> dict[bool, list[tuple[float, float]]]:
        await block(True, 10**8)  # connections, caches: not measured
        await block(False, 2 * 10**8)
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for i in range(args.blocks):
            for direct in (True, False) if i % 2 == 0 else (False, True):
                results[direct].append(await block(direct, (i * 2 + direct) * args.records))
                cpu, wall = results[direct][-1]
                print(
                    f"block {i} {'direct' if direct else 'thread'}: {cpu:6.1f} µs CPU {wall:6.1f} µs wall", flush=True
                )
        return results

    import uvloop

    try:
        results = uvloop.run(run())
    finally:
        UsageRecord.objects.filter(request_id__startswith="usage-bench-").delete()
    load = open("/proc/loadavg").read().split()[0]
    print(f"\nmedians per record ({args.blocks} blocks × {args.records}, load {load}):")
    for direct, label in ((False, "worker thread + pool (db_call)"), (True, "event loop's own connection")):
        cpus, walls = zip(*results[direct], strict=True)
        print(f"  {label:32} {statistics.median(cpus):6.1f} µs CPU  {statistics.median(walls):6.1f} µs wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
