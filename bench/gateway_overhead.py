"""Gateway overhead: the mock provider called directly against the same call through the gateway.

Self-contained. It migrates a PostgreSQL database of its own, sets up a bench catalog model
with a price and two tenants with a key each, starts `manage.py mockllm` (no latency) and ONE
uvicorn gateway process on that database and a real Redis, then measures in the same run,
alternating the targets within every repetition:

    direct          mockllm itself (the floor: what the client and the mock cost)
    gateway         through the gateway: authentication, policy, the durable usage write
    gateway+limits  the same with a tenant that has requests/min, tokens/min,
                    concurrency and a monthly budget, all high enough never to refuse

non-streaming and streaming, at concurrency 1 and 50: requests/s, p50 and p99 latency, the
overhead (gateway - direct, paired per repetition, median) and the throughput ratio, plus the
gateway's CPU time per request. Afterwards it checks that every successful gateway response
has its UsageRecord (status 200) in the database: the write really happened before the
response ended.

Load generator: wrk (Debian package `wrk`), one thread, closed loop, keep-alive. It is C and
costs a few microseconds of CPU per request, so on two cores it leaves the gateway its core;
an asyncio client would need about as much CPU per request as the thing it measures. The
script bench/wrk_chat.lua sends the body of ../shared/bench-kit/wrk_chat.lua.

    .venv/bin/python bench/gateway_overhead.py [--duration 8] [--reps 3] [--concurrency 1,50]
        [--no-limits] [--profile DIR]
    .venv/bin/python bench/gateway_overhead.py --serve [--upstream URL] [--serve-seconds 1800]

--serve sets up, starts only the gateway (in front of --upstream, default: a mockllm of its
own) and prints its URL, model, keys and pid, for ../shared/bench-kit/run_bench.sh with
PROXY_CMD_EXTERNAL=1 or for py-spy; it stops after --serve-seconds or on Ctrl-C.
--profile DIR records a py-spy flame graph of the gateway during each concurrency-50 cell.

Database: BENCH_DATABASE_URL, else DATABASE_URL when it is PostgreSQL, else
postgres://postgres@127.0.0.1:5432/bench_gateway (created when missing). Redis: BENCH_REDIS_URL,
else REDIS_URL, else redis://127.0.0.1:6379/10. The bench tenants' usage records are deleted
at the start of each run; nothing else in the database is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from benchdb import ensure_database, setup_django

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk_chat.lua"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_gateway"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
MODEL = "mock-gpt"  # catalog name and upstream name alike: the mock's reply is the same bytes both ways
UPSTREAM_KEY = "sk-bench-upstream"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "gateway", "gateway+limits")
HUGE = 10**9
# The routing bench's models (bench/ab_cpu.py --models): the same upstream as MODEL, several
# deployments under a strategy (each in a region of its own: the bench tenants have none, so
# every deployment serves them). MODEL itself is the one-deployment reference.
ROUTED = {f"{MODEL}-{tag}{n}": (strategy, n) for tag, strategy in (("w", "weighted"), ("lb", "least_busy"),
          ("lat", "latency")) for n in (2, 3)}  # fmt: skip


def database_url() -> str:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = DEFAULT_DATABASE_URL
    return url


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


@dataclass
class Fixture:
    keys: dict[str, str]  # target -> tenant key
    tenant_ids: list[int]


def fixture_setup() -> Fixture:
    """The bench catalog model with a price, two tenants (limits off / on), a fresh key each."""
    from django.core.management import call_command

    from billing.models import ModelPrice, Plan, Subscription, UsageRecord
    from tenants.models import CatalogModel, Deployment, Tenant
    from tenants.services import api_key_create

    call_command("migrate", verbosity=0)
    model, _ = CatalogModel.objects.get_or_create(name=MODEL, defaults={"provider": "openai"})
    Deployment.objects.get_or_create(model=model, provider="openai", upstream=MODEL, defaults={"region": ""})
    ModelPrice.objects.get_or_create(
        model=model,
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        defaults={"input_per_1m": Decimal("0.15"), "output_per_1m": Decimal("0.60")},
    )
    for name, (strategy, count) in ROUTED.items():
        routed, _ = CatalogModel.objects.update_or_create(
            name=name, defaults={"provider": "openai", "routing": strategy}
        )
        for n in range(count):
            Deployment.objects.get_or_create(model=routed, provider="openai", upstream=MODEL, region=f"r{n + 1}")
        ModelPrice.objects.get_or_create(
            model=routed,
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            defaults={"input_per_1m": Decimal("0.15"), "output_per_1m": Decimal("0.60")},
        )
    plan, _ = Plan.objects.get_or_create(name="bench")
    limits = {"requests_per_minute": HUGE, "tokens_per_minute": HUGE, "max_concurrent": 100_000}
    keys, tenant_ids = {}, []
    for target, slug, fields, budget in (
        ("gateway", "bench-open", dict.fromkeys(limits), None),
        ("gateway+limits", "bench-limited", limits, Decimal("1000000")),
    ):
        tenant, _ = Tenant.objects.update_or_create(slug=slug, defaults={"name": slug, "status": "active", **fields})
        Subscription.objects.update_or_create(tenant=tenant, defaults={"plan": plan, "monthly_budget": budget})
        UsageRecord.objects.filter(tenant=tenant).delete()
        keys[target] = api_key_create(tenant=tenant, name=f"bench {datetime.now(UTC):%Y-%m-%d %H:%M:%S}")[1]
        tenant_ids.append(tenant.id)
    return Fixture(keys=keys, tenant_ids=tenant_ids)


# --- processes ---


@dataclass
class Processes:
    """Processes started here, each in a session of its own. With `log_dir`, a process started
    with a `name` writes its stderr to `log_dir/<name>.log` (bench/soak.py); `members` lists the
    live processes of every session, children included (uvicorn's workers), by label."""

    log_dir: Path | None = None
    stop_timeout: float = 10.0
    started: list[subprocess.Popen] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def start(self, args: list[str], env: dict | None = None, *, name: str = "", **kwargs) -> subprocess.Popen:
        # A session of its own: stopping it stops whatever it started (its children are found by
        # session id), and Ctrl-C here does not reach it.
        if self.log_dir and name:
            with open(self.log_dir / f"{name}.log", "ab") as stderr:
                process = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, stderr=stderr, **kwargs)
        else:
            process = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, **kwargs)
        self.started.append(process)
        self.names[process.pid] = name or Path(args[0]).name
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.started):
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def members(self) -> list[tuple[str, int]]:
        """(label, pid) of every live process of every session started here: a leader by its
        name, a child as `<name>/<pid>`."""
        leaders = {process.pid: self.names[process.pid] for process in self.started if process.poll() is None}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            session = int(fields[3])
            if session in leaders:
                pid = int(entry)
                found.append((leaders[session] + ("" if pid == session else f"/{pid}"), pid))
        return sorted(found)


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until `url` answers 200, at most `timeout` seconds (RuntimeError then, or when `process` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mockllm(processes: Processes) -> str:
    process = processes.start(
        [sys.executable, "manage.py", "mockllm", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    if "listening on " not in line:
        raise RuntimeError(f"mockllm did not start: {line!r}")
    url = line.strip().rsplit(" ", 1)[-1]
    wait_until_up(f"{url}/health", process)
    return url


def start_gateway(processes: Processes, *, upstream: str, db_url: str, port: int = 0) -> tuple[subprocess.Popen, str]:
    """One uvicorn process, production settings (DEBUG off), uvloop and httptools as installed."""
    port = port or free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url(),
        DJANGO_DEBUG="0",
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=upstream.rstrip("/") + "/v1" if not upstream.rstrip("/").endswith("/v1") else upstream,
        LOG_LEVEL="WARNING",
    )
    args = [sys.executable, "-m", "uvicorn", "proxy_platform.asgi:application", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    process = processes.start(args, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/healthz", process)
    return process, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads (the sync_to_async workers included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- load ---


@dataclass
class Run:
    target: str
    stream: bool
    concurrency: int
    rps: float
    p50: float
    p99: float
    ok: int
    errors: int
    cpu_ms: float | None  # gateway CPU per successful request


def wrk(url: str, *, key: str, stream: bool, concurrency: int, seconds: int, ids: Path | None = None) -> dict:
    env = dict(os.environ, BENCH_MODEL=MODEL, BENCH_KEY=key, BENCH_STREAM="1" if stream else "0")
    if ids is not None:
        env["BENCH_IDS"] = str(ids)
    args = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", str(LUA)]
    result = subprocess.run(
        [*args, f"{url}/v1/chat/completions"], env=env, capture_output=True, text=True, timeout=seconds + 60
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    return json.loads(lines[-1])


@dataclass
class Bench:
    urls: dict[str, str]
    keys: dict[str, str]
    gateway_pid: int
    ids_dir: Path
    profile_dir: Path | None
    runs: list[Run] = field(default_factory=list)

    def one(self, target: str, *, stream: bool, concurrency: int, seconds: int) -> Run:
        through_gateway = target != "direct"
        ids = self.ids_dir / f"{target}.ids" if through_gateway else None
        spy = None
        if self.profile_dir is not None and through_gateway and concurrency > 1:
            name = f"{target.replace('+', '-')}-{'stream' if stream else 'json'}-c{concurrency}-{len(self.runs)}"
            spy = subprocess.Popen(
                [_py_spy(), "record", "-p", str(self.gateway_pid), "-r", "200", "-d", str(int(seconds)), "--idle"]
                + ["-f", "speedscope", "-o", str(self.profile_dir / f"{name}.json"), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        before = cpu_seconds(self.gateway_pid)
        figures = wrk(
            self.urls[target],
            key=self.keys.get(target, "sk-direct"),
            stream=stream,
            concurrency=concurrency,
            seconds=seconds,
            ids=ids,
        )
        used = cpu_seconds(self.gateway_pid) - before
        if spy is not None:
            spy.wait(timeout=60)
        ok = figures["ok"]
        run = Run(
            target=target,
            stream=stream,
            concurrency=concurrency,
            rps=figures["ok_rps"],
            p50=figures["p50_ms"],
            p99=figures["p99_ms"],
            ok=ok,
            errors=figures["requests"] - ok,
            cpu_ms=used * 1000 / ok if through_gateway and ok else None,
        )
        self.runs.append(run)
        return run


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("--profile needs py-spy (pip install -r requirements-dev.txt)")
    return found


def warm_up(bench: Bench, targets: tuple[str, ...]) -> None:
    """Connections, lazy imports, the in-process caches, the budget counter: not measured."""
    profile_dir, bench.profile_dir = bench.profile_dir, None
    for target in targets:
        for stream in (False, True):
            bench.one(target, stream=stream, concurrency=10, seconds=2)
    bench.runs.clear()
    bench.profile_dir = profile_dir


def measure(bench: Bench, targets: tuple[str, ...], *, concurrencies: list[int], reps: int, seconds: int) -> None:
    for stream in (False, True):
        for concurrency in concurrencies:
            for rep in range(reps):
                # Alternate the order, so that a drift of the machine does not favour one target.
                order = targets if rep % 2 == 0 else tuple(reversed(targets))
                for target in order:
                    run = bench.one(target, stream=stream, concurrency=concurrency, seconds=seconds)
                    print(
                        f"  {'stream' if stream else 'json':6} c={concurrency:<3} {target:15} {run.rps:8.1f} req/s  "
                        f"p50 {run.p50:7.2f} ms  p99 {run.p99:7.2f} ms  errors {run.errors}",
                        flush=True,
                    )


# --- report ---


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(runs: list[Run], targets: tuple[str, ...]) -> tuple[str, dict]:
    """Medians over repetitions; overheads and ratios are medians of paired differences."""
    lines = [
        "| mode | conc | target | req/s | p50 ms | p99 ms | p50 overhead ms | p99 overhead ms "
        "| req/s vs direct | gateway CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for stream in (False, True):
        for concurrency in sorted({r.concurrency for r in runs}):
            cell = {
                t: [r for r in runs if r.target == t and r.stream == stream and r.concurrency == concurrency]
                for t in targets
            }
            direct = cell["direct"]
            for target in targets:
                mine = cell[target]
                if not mine:
                    continue
                pairs = list(zip(direct, mine, strict=False))
                row = {
                    "rps": _median([r.rps for r in mine]),
                    "p50": _median([r.p50 for r in mine]),
                    "p99": _median([r.p99 for r in mine]),
                    "over50": _median([m.p50 - d.p50 for d, m in pairs]),
                    "over99": _median([m.p99 - d.p99 for d, m in pairs]),
                    "ratio": _median([m.rps / d.rps for d, m in pairs if d.rps]),
                    "cpu": _median([r.cpu_ms for r in mine if r.cpu_ms is not None]),
                    "errors": sum(r.errors for r in mine),
                }
                summary[(stream, concurrency, target)] = row
                if target == "direct":
                    extra = "| — | — | — | — |"
                else:
                    extra = f"| {row['over50']:.2f} | {row['over99']:.2f} | {row['ratio']:.3f} | {row['cpu']:.2f} |"
                lines.append(
                    f"| {'stream' if stream else 'json'} | {concurrency} | {target} | {row['rps']:.1f} "
                    f"| {row['p50']:.2f} | {row['p99']:.2f} {extra} {row['errors']} |"
                )
    return "\n".join(lines), summary


def targets_report(summary: dict) -> list[str]:
    out = []

    def check(label: str, key: tuple, field_name: str, goal: float, below: bool) -> None:
        row = summary.get(key)
        if row is None:
            return
        value = row[field_name]
        met = value < goal if below else value >= goal
        unit = "ms" if field_name.startswith("over") else "req/s"
        sign = "<" if below else "≥"
        out.append(f"  {label}: {value:.2f} {unit} (target {sign} {goal:g}) {'met' if met else 'NOT MET'}")

    for target in ("gateway", "gateway+limits"):
        check(f"{target:15} json   c=1  median overhead", (False, 1, target), "over50", 5.0, True)
        check(f"{target:15} stream c=1  median overhead", (True, 1, target), "over50", 5.0, True)
        check(f"{target:15} json   c=50 throughput     ", (False, 50, target), "rps", 200.0, False)
        check(f"{target:15} stream c=50 throughput     ", (True, 50, target), "rps", 60.0, False)
    return out


def records_count(fixture: Fixture) -> int:
    from billing.models import UsageRecord

    return UsageRecord.objects.filter(tenant_id__in=fixture.tenant_ids).count()


def durable_writes_check(bench: Bench, fixture: Fixture, before: int) -> tuple[bool, str]:
    """Every 200 the load generator received has its committed UsageRecord with status 200."""
    from billing.models import UsageRecord

    ids: list[str] = []
    for path in sorted(bench.ids_dir.glob("*.ids")):
        ids += [line for line in path.read_text().split() if line]
    found = 0
    for start in range(0, len(ids), 5000):
        batch = ids[start : start + 5000]
        found += UsageRecord.objects.filter(request_id__in=batch, status_code=200).count()
    written = records_count(fixture) - before
    gateway_runs = [r for r in bench.runs if r.target != "direct"]
    ok = sum(r.ok for r in gateway_runs)
    in_flight = sum(r.concurrency for r in gateway_runs)
    text = (
        f"usage records: {ok} successful gateway responses counted by wrk, {len(ids)} request ids seen, "
        f"{found} of them with a committed UsageRecord (status 200); {written} records written during the "
        f"runs, {written - len(ids)} more than responses: requests in flight when wrk stopped each run "
        f"(at most {in_flight})"
    )
    return ok == len(ids) == found and 0 <= written - len(ids) <= in_flight, text


# --- entry points ---


def serve(args, fixture: Fixture, db_url: str) -> None:
    processes = Processes()
    try:
        upstream = args.upstream or start_mockllm(processes)
        gateway, url = start_gateway(processes, upstream=upstream, db_url=db_url, port=args.port)
        if args.pidfile:
            Path(args.pidfile).write_text(str(gateway.pid))
        print(f"gateway {url}/v1/chat/completions (pid {gateway.pid}) in front of {upstream}, model {MODEL}")
        print(f"key, limits off: {fixture.keys['gateway']}")
        print(f"key, limits on:  {fixture.keys['gateway+limits']}", flush=True)
        deadline = time.monotonic() + args.serve_seconds
        while time.monotonic() < deadline and gateway.poll() is None:
            time.sleep(1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        processes.stop_all()


def bench_run(args, fixture: Fixture, db_url: str) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("the load generator is wrk: apt-get install -y wrk")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    targets = TARGETS if args.limits else TARGETS[:2]
    processes = Processes()
    ids_dir = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    loads = [load_average()]
    try:
        mock = start_mockllm(processes)
        gateway, url = start_gateway(processes, upstream=mock, db_url=db_url)
        bench = Bench(
            urls={"direct": mock, "gateway": url, "gateway+limits": url},
            keys=fixture.keys,
            gateway_pid=gateway.pid,
            ids_dir=ids_dir,
            profile_dir=profile_dir,
        )
        print(f"mockllm {mock}, gateway {url} (pid {gateway.pid}), {os.cpu_count()} cores, load {loads[0]}")
        warm_up(bench, targets)
        for path in ids_dir.glob("*.ids"):
            path.unlink()
        time.sleep(0.5)
        before = records_count(fixture)
        measure(bench, targets, concurrencies=concurrencies, reps=args.reps, seconds=args.duration)
        loads.append(load_average())
        time.sleep(0.5)  # writes of the requests wrk cut off at the end are still landing
        durable, durable_text = durable_writes_check(bench, fixture, before)
    finally:
        processes.stop_all()
        shutil.rmtree(ids_dir, ignore_errors=True)
    text, summary = table(bench.runs, targets)
    print()
    print(
        f"gateway overhead, {args.reps} × {args.duration:g} s per cell, wrk -t1, medians of paired runs; "
        f"{os.cpu_count()} cores, load average {loads[0]} before, {loads[-1]} after; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    print(text)
    print()
    print("targets (one gateway process, authentication, policy and the durable usage write on):")
    print("\n".join(targets_report(summary)))
    print()
    print(("OK " if durable else "FAILED ") + durable_text)
    return 0 if durable else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per cell (default 3)")
    parser.add_argument("--concurrency", default="1,50", help="comma-separated (default 1,50)")
    parser.add_argument("--no-limits", dest="limits", action="store_false", help="skip the gateway+limits target")
    parser.add_argument("--profile", metavar="DIR", help="py-spy flame graphs of the concurrency>1 gateway runs")
    parser.add_argument("--serve", action="store_true", help="only start the gateway and print its keys")
    parser.add_argument("--upstream", default="", help="--serve: the provider URL (default: a mockllm of its own)")
    parser.add_argument("--port", type=int, default=0, help="--serve: the gateway's port (default: a free one)")
    parser.add_argument("--pidfile", default="", help="--serve: write the gateway's pid there")
    parser.add_argument("--serve-seconds", type=float, default=1800, help="--serve: stop after (default 1800)")
    args = parser.parse_args()
    # SIGTERM (timeout, kill) must run the `finally` that stops mockllm and the gateway: they
    # live in sessions of their own and would otherwise outlive this script.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    db_url = database_url()
    ensure_database(db_url)
    setup_django(db_url)
    fixture = fixture_setup()
    if args.serve:
        serve(args, fixture, db_url)
        return 0
    return bench_run(args, fixture, db_url)


if __name__ == "__main__":
    sys.exit(main())
