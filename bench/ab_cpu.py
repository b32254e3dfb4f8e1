"""Gateway CPU per request of several checkouts of the gateway, side by side in one run.

On a shared machine a difference of 0.1-0.2 ms per request is below what separates two runs of
bench/gateway_overhead.py. This starts each checkout's gateway at once (its own
`bench/gateway_overhead.py --serve`: its own tree, venv, database and Redis db) and then runs
wrk against them in turn, cell after cell, so that each cell's figures of every version were
taken within the same minute; the order of the versions is reversed every other round. For each
wrk run it reads the gateway's CPU time (user + system, worker threads included) from
/proc/<pid>/stat and divides by the successful responses. It prints every run, then the medians.

    .venv/bin/python bench/ab_cpu.py [--rounds 3] [--seconds 5] [--cells json1,json50,stream1,stream50]
        [--limits] [--models mock-gpt,...] NAME=TREE:PYTHON:PORT:DATABASE:REDIS_URL ...

For example, the code before issue 10 against this checkout:

    git worktree add /tmp/bench-old 29c5f7d   # and a venv for it from its requirements.txt
    .venv/bin/python bench/ab_cpu.py --limits \\
        old=/tmp/bench-old:/tmp/venv-old/bin/python:42001:bench_old:redis://127.0.0.1:6379/8 \\
        new=.:.venv/bin/python:42002:bench_new:redis://127.0.0.1:6379/9

DATABASE is a PostgreSQL database name on 127.0.0.1:5432 (created when missing, by the
checkout's own bench script). Give versions whose limits counters could meet different Redis
databases: their tenants' ids may be the same. Each gateway's output goes to
$TMPDIR/ab_cpu-NAME.log. Needs wrk, as bench/gateway_overhead.py does.

--models runs every cell against each of these catalog models in turn (default: mock-gpt, one
deployment) and prints each one's median and its difference from the first model's run of the
same round: with bench/gateway_overhead.py's routed models (mock-gpt-w2, -w3, -lb2, -lb3, -lat2,
-lat3: two or three deployments of the same upstream, weighted, least_busy or latency) that is
what routing costs per request on one gateway, in one run:

    .venv/bin/python bench/ab_cpu.py --cells json1 --models mock-gpt,mock-gpt-w2,mock-gpt-lb2,mock-gpt-lat2 \\
        this=.:.venv/bin/python:42002:bench_new:redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Gateway:
    def __init__(self, name: str, spec: str) -> None:
        tree, python, port, database, redis_url = spec.split(":", 4)
        self.name, self.tree, self.url = name, Path(tree).resolve(), f"http://127.0.0.1:{port}"
        work = Path(tempfile.gettempdir())
        self.log, pidfile = work / f"ab_cpu-{name}.log", work / f"ab_cpu-{name}.pid"
        pidfile.unlink(missing_ok=True)
        env = dict(os.environ, BENCH_DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}")
        env["BENCH_REDIS_URL"] = redis_url
        for name_ in ("DATABASE_URL", "REDIS_URL"):
            env.pop(name_, None)
        args = [python, "bench/gateway_overhead.py", "--serve", "--port", port, "--pidfile", str(pidfile)]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [*args, "--serve-seconds", "7200"],
                cwd=self.tree,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.keys: dict[str, str] = {}
        deadline = time.monotonic() + 180
        while len(self.keys) < 2 or not pidfile.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{name} did not start: see {self.log}")
            time.sleep(0.5)
            for line in self.log.read_text(errors="replace").splitlines():
                if match := re.match(r"key, limits (off|on):\s+(\S+)", line):
                    self.keys[match.group(1)] = match.group(2)
        self.pid = int(pidfile.read_text())

    def wrk(
        self, *, limits: str, stream: bool, concurrency: int, seconds: int, model: str = "mock-gpt"
    ) -> tuple[float, float, int]:
        """(CPU ms per successful response, successful responses per second, failed requests)"""
        env = dict(os.environ, BENCH_MODEL=model, BENCH_KEY=self.keys[limits], BENCH_STREAM=str(int(stream)))
        before = cpu_seconds(self.pid)
        result = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s"]
            + ["-s", str(self.tree / "bench" / "wrk_chat.lua"), f"{self.url}/v1/chat/completions"],
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        used = cpu_seconds(self.pid) - before
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed against {self.name}: {result.stdout[-300:]} {result.stderr[-300:]}")
        figures = json.loads(lines[-1])
        return used * 1000 / max(figures["ok"], 1), figures["ok_rps"], figures["requests"] - figures["ok"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (default 5)")
    parser.add_argument("--cells", default="json1,json50,stream1,stream50")
    parser.add_argument("--limits", action="store_true", help="the limited tenant too")
    parser.add_argument("--models", default="mock-gpt", help="catalog models, each in turn (default mock-gpt)")
    parser.add_argument("versions", nargs="+", metavar="NAME=TREE:PYTHON:PORT:DATABASE:REDIS_URL")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cells = [(cell, cell.startswith("stream"), int(re.sub(r"\D", "", cell))) for cell in args.cells.split(",")]
    gateways: list[Gateway] = []
    try:
        for version in args.versions:
            name, spec = version.split("=", 1)
            gateways.append(Gateway(name, spec))
        models = args.models.split(",")
        limits_on = ["off", "on"] if args.limits else ["off"]
        targets = [(g, limits, m) for limits in limits_on for g in gateways for m in models]
        for gateway, limits, model in targets:  # connections, caches, the budget counters: not measured
            for stream in (False, True):
                gateway.wrk(limits=limits, stream=stream, concurrency=10, seconds=2, model=model)
        runs: dict[tuple[str, str, str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for cell, stream, concurrency in cells:
                for gateway, limits, model in targets if round_ % 2 == 0 else targets[::-1]:
                    cpu, rps, errors = gateway.wrk(limits=limits, stream=stream, concurrency=concurrency,
                                                   seconds=args.seconds, model=model)  # fmt: skip
                    runs.setdefault((cell, gateway.name, limits, model), []).append(cpu)
                    load = Path("/proc/loadavg").read_text().split()[0]
                    label = gateway.name if len(models) == 1 else f"{gateway.name}/{model}"
                    print(f"round {round_} {cell:9} {label:8} limits {limits:3} {cpu:6.3f} ms CPU/req "
                          f"{rps:7.1f} req/s  errors {errors}  load {load}", flush=True)  # fmt: skip
        print("\nmedian gateway CPU per request, ms (each run):")
        for cell, _, _ in cells:
            row = [f"{cell:9}"]
            for gateway, limits, model in targets:
                values = runs[(cell, gateway.name, limits, model)]
                each = " ".join(f"{v:.2f}" for v in values)
                label = gateway.name if len(models) == 1 else f"{gateway.name}/{model}"
                row.append(f"{label}/limits {limits}: {statistics.median(values):.3f} ({each})")
            print("  ".join(row))
        if len(models) > 1:
            print(f"\nminus {models[0]} in the same round, ms CPU per request: median (each round)")
            for cell, _, _ in cells:
                for gateway, limits, model in targets:
                    if model == models[0]:
                        continue
                    base = runs[(cell, gateway.name, limits, models[0])]
                    diffs = [v - b for v, b in zip(runs[(cell, gateway.name, limits, model)], base, strict=True)]
                    each = " ".join(f"{d:+.3f}" for d in diffs)
                    median = statistics.median(diffs)
                    print(f"{cell:9} {gateway.name}/limits {limits} {model:16} {median:+.3f} ({each})")
    finally:
        for gateway in gateways:
            gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
