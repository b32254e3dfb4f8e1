"""Routing's shared state: per deployment, its circuit breaker, its provider account's quota of
the minute, its attempts in flight and its latency EWMA.

`RedisRouting` runs each step as one Lua script (scripts/*.lua, with the limits' clock prelude),
one round trip, atomic across every gateway process; `MemoryRouting` makes the same decisions on
dicts for one process (no REDIS_URL). Both read the limits' clock (`gateway.limits.use_clock`
moves them too). tests/test_routing.py holds both to one contract.
"""

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.limits import backend as limits_backend
from gateway.limits import redis_store as limits_redis
from gateway.limits.clock import SYSTEM_CLOCK

from . import config

_SCRIPTS = Path(__file__).resolve().parent / "scripts"
_CLOCK = (limits_redis._SCRIPTS / "clock.lua").read_text()
SOURCES = {name: _CLOCK + (_SCRIPTS / f"{name}.lua").read_text() for name in ("take", "done", "peek")}


@dataclass(frozen=True, slots=True)
class Ask:
    """One attempt on one deployment."""

    deployment_id: int
    member: str  # unique per attempt: the request id and the deployment
    requests_per_minute: int | None
    tokens_per_minute: int | None
    tokens: int  # counted on the account's tokens per minute (the admission's estimate)
    cooldown_ms: int | None = None  # the deployment's own breaker cooldown (None: the settings')


@dataclass(frozen=True, slots=True)
class Taken:
    verdict: str  # ok | probe | open | quota
    ms: int = 0  # open: until a probe may go; quota: until the minute ends


@dataclass(frozen=True, slots=True)
class Health:
    in_flight: int
    latency_ms: float | None  # EWMA of successful attempts; None: none yet
    open_until_ms: int | None  # None: in rotation
    recent_failures: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The staff's health list: each deployment's state, read at `now_ms` on the store's clock
    (Redis' for every process), failures counted within the breaker's window only."""

    now_ms: int
    health: list[Health]


@dataclass(frozen=True, slots=True)
class Breaker:
    """A deployment's breaker settings, resolved: failures, window ms, cooldown ms."""

    failures: int
    window_ms: int
    cooldown_ms: int

    def __iter__(self):
        return iter((self.failures, self.window_ms, self.cooldown_ms))

    @classmethod
    def default(cls) -> "Breaker":
        return cls(config.failures(), config.window_ms(), config.cooldown_ms())

    @classmethod
    def of(cls, deployment) -> "Breaker":
        """The deployment's own overrides (DeploymentView.breaker_*), the settings' for the rest."""
        return cls(
            config.failures(deployment.breaker_failures),
            config.window_ms(deployment.breaker_window_seconds),
            config.cooldown_ms(deployment.breaker_cooldown_seconds),
        )


def _windows(deployment_ids: list[int], windows_ms: list[int] | None) -> list[int]:
    return list(windows_ms) if windows_ms is not None else [config.window_ms()] * len(deployment_ids)


def _keys(deployment_id: int) -> tuple[str, str, str, str]:
    # A deployment's keys share a hash tag (one slot under Redis Cluster): take.lua and done.lua
    # touch several of them. peek.lua reads several deployments: under Cluster it runs once per
    # deployment (`RedisRouting._peek`), so that no script spans slots.
    prefix = f"gw:route:{{{deployment_id}}}"
    return f"{prefix}:state", f"{prefix}:quota", f"{prefix}:busy", f"{prefix}:fail"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRouting:
    def _now_arg(self) -> int | str:
        return limits_backend.redis_store._now_arg()

    async def _run(self, name: str, keys: list[str], args: list):
        client = limits_redis._client()
        script = client.scripts.get(f"routing:{name}")
        if script is None:
            script = client.scripts[f"routing:{name}"] = client.client.register_script(SOURCES[name])
        return await script(keys=keys, args=[self._now_arg(), *args])

    async def take(self, ask: Ask) -> Taken:
        state, quota, busy, _ = _keys(ask.deployment_id)
        verdict, ms = await self._run(
            "take",
            [state, quota, busy],
            [
                ask.cooldown_ms or config.cooldown_ms(),
                -1 if ask.requests_per_minute is None else ask.requests_per_minute,
                -1 if ask.tokens_per_minute is None else ask.tokens_per_minute,
                ask.tokens,
                ask.member,
                config.horizon_ms(),
            ],
        )
        return Taken(_text(verdict), int(ms))

    async def done(
        self,
        deployment_id: int,
        member: str,
        *,
        result: str,
        probe: bool,
        latency_ms: float,
        release: bool,
        breaker: "Breaker | None" = None,
    ) -> str:
        state, _, busy, fail = _keys(deployment_id)
        reply = await self._run(
            "done",
            [state, fail, busy],
            [
                member,
                result,
                "1" if probe else "0",
                f"{latency_ms:.3f}",
                config.EWMA_ALPHA,
                *(breaker or Breaker.default()),
                "1" if release else "0",
            ],
        )
        return _text(reply[0])

    async def health(self, deployment_ids: list[int]) -> list[Health]:
        return (await self._peek(deployment_ids)).health

    async def snapshot(self, deployment_ids: list[int], windows_ms: list[int] | None = None) -> Snapshot:
        """`windows_ms`: each deployment's breaker window (default: the settings')."""
        return await self._peek(deployment_ids, windows=_windows(deployment_ids, windows_ms))

    async def _peek(self, deployment_ids: list[int], *, windows: list[int] | None = None) -> Snapshot:
        if limits_redis.cluster() and len(deployment_ids) > 1:
            parts = await asyncio.gather(
                *(
                    self._peek([deployment_id], windows=None if windows is None else [windows[i]])
                    for i, deployment_id in enumerate(deployment_ids)
                )
            )
            # The states were read at (almost) one time; the latest clock is the list's.
            return Snapshot(now_ms=max(p.now_ms for p in parts), health=[p.health[0] for p in parts])
        keys = []
        for deployment_id in deployment_ids:
            state, _, busy, fail = _keys(deployment_id)
            keys += [state, busy, fail]
        args = [config.horizon_ms(), *(windows or [])]
        reply = await self._run("peek", keys, args)
        out = []
        for i in range(0, len(reply) - 1, 4):
            latency, until = _text(reply[i + 1]), _text(reply[i + 2])
            out.append(
                Health(
                    in_flight=int(reply[i]),
                    latency_ms=float(latency) if latency else None,
                    open_until_ms=int(until) if until else None,
                    recent_failures=int(reply[i + 3]),
                )
            )
        return Snapshot(now_ms=int(_text(reply[-1])), health=out)


class MemoryRouting:
    """done.lua, take.lua and peek.lua on dicts, for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[int, dict] = {}  # id -> {"until", "probe", "lat"}
        self._quota: dict[int, tuple[int, int, int]] = {}  # id -> (minute, requests, tokens)
        self._busy: dict[int, dict[str, int]] = {}  # id -> {member: start ms}
        self._fail: dict[int, dict[str, int]] = {}  # id -> {member: ms}

    def clear(self) -> None:
        with self._lock:
            self._state.clear()
            self._quota.clear()
            self._busy.clear()
            self._fail.clear()

    def _now(self) -> int:
        return (limits_backend.memory_store.clock or SYSTEM_CLOCK).now_ms()

    async def take(self, ask: Ask) -> Taken:
        with self._lock:
            now, cooldown = self._now(), ask.cooldown_ms or config.cooldown_ms()
            state = self._state.setdefault(ask.deployment_id, {})
            probe = False
            if "until" in state:
                if now < state["until"]:
                    return Taken("open", state["until"] - now)
                probing = state.get("probe")
                if probing is not None and now - probing < cooldown:
                    return Taken("open", probing + cooldown - now)
                probe = True
            rpm, tpm = ask.requests_per_minute, ask.tokens_per_minute
            if rpm is not None or tpm is not None:
                minute = now // 60000
                stored = self._quota.get(ask.deployment_id)
                requests, used = (stored[1], stored[2]) if stored and stored[0] == minute else (0, 0)
                if (rpm is not None and requests + 1 > rpm) or (
                    tpm is not None and used > 0 and used + ask.tokens > tpm
                ):
                    return Taken("quota", 60000 - now % 60000)
                self._quota[ask.deployment_id] = (minute, requests + 1, used + ask.tokens)
            if probe:
                state["probe"] = now
            busy = self._busy.setdefault(ask.deployment_id, {})
            horizon = config.horizon_ms()
            for member in [m for m, at in busy.items() if at <= now - horizon]:
                del busy[member]
            busy[ask.member] = now
            return Taken("probe" if probe else "ok")

    async def done(
        self,
        deployment_id: int,
        member: str,
        *,
        result: str,
        probe: bool,
        latency_ms: float,
        release: bool,
        breaker: "Breaker | None" = None,
    ) -> str:
        limit, window, cooldown = breaker or Breaker.default()
        with self._lock:
            now = self._now()
            state = self._state.setdefault(deployment_id, {})
            failures = self._fail.setdefault(deployment_id, {})
            if release:
                self._busy.get(deployment_id, {}).pop(member, None)

            def open_() -> str:
                state["until"] = now + cooldown
                state.pop("probe", None)
                failures.clear()
                return "open"

            if result in ("ok", "neutral"):
                if probe:
                    state.pop("until", None)
                    state.pop("probe", None)
                    failures.clear()
                if result == "ok":
                    before = state.get("lat")
                    alpha = float(config.EWMA_ALPHA)
                    state["lat"] = latency_ms if before is None else alpha * latency_ms + (1 - alpha) * before
            elif result == "fail":
                if probe:
                    return open_()
                if "until" in state:
                    return "open"
                for old in [m for m, at in failures.items() if at <= now - window]:
                    del failures[old]
                failures[member] = now
                if len(failures) >= limit:
                    return open_()
            return "open" if "until" in state else "closed"

    async def health(self, deployment_ids: list[int]) -> list[Health]:
        return self._peek(deployment_ids).health

    async def snapshot(self, deployment_ids: list[int], windows_ms: list[int] | None = None) -> Snapshot:
        return self._peek(deployment_ids, windows=_windows(deployment_ids, windows_ms))

    def _peek(self, deployment_ids: list[int], *, windows: list[int] | None = None) -> Snapshot:
        with self._lock:
            now, horizon = self._now(), config.horizon_ms()
            out = []
            for i, deployment_id in enumerate(deployment_ids):
                since = now - windows[i] if windows else None
                state = self._state.get(deployment_id, {})
                busy = self._busy.get(deployment_id, {})
                failures = self._fail.get(deployment_id, {})
                out.append(
                    Health(
                        in_flight=sum(1 for at in busy.values() if at > now - horizon),
                        latency_ms=state.get("lat"),
                        open_until_ms=state.get("until"),
                        recent_failures=sum(1 for at in failures.values() if since is None or at > since),
                    )
                )
            return Snapshot(now_ms=now, health=out)


redis_routing = RedisRouting()
memory_routing = MemoryRouting()


def store() -> RedisRouting | MemoryRouting:
    """Redis when REDIS_URL is set (every process shares it), else this process's memory."""
    return redis_routing if limits_backend.config.redis_url() else memory_routing
