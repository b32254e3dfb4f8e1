"""Routing's shared state: per deployment, its circuit breaker, its provider account's quota of
the minute, its attempts in flight and its latency EWMA.

`RedisRouting` keeps it in Redis for every gateway process, behind a view of it in this process
(`RoutingView`, docs/routing.md#the-routing-view) so that the success path of a routed request
makes no awaited round trip: a deployment whose breaker the view knows to be closed, with no
failure known within its window and no account quota, is taken in the process; its attempt in
flight and its latency go out batched, one script call per GATEWAY_ROUTING_SYNC_SECONDS (sync.lua)
that also brings back what every process left. What must be exact still goes to Redis at once, one
Lua script (scripts/*.lua, with the limits' clock prelude) and one round trip, atomic across every
process: an account quota's count (take.lua), a half-open breaker's single probe (take.lua), a
counted failure and a probe's answer (done.lua, which also publishes a breaker's opening and
closing: gateway/routing/events.py). `MemoryRouting` makes the same decisions on dicts for one
process (no REDIS_URL). Both read the limits' clock (`gateway.limits.use_clock` moves them too).
tests/test_routing.py holds both to one contract.
"""

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from redis.crc import key_slot

from gateway.limits import backend as limits_backend
from gateway.limits import redis_store as limits_redis
from gateway.limits.clock import SYSTEM_CLOCK
from proxy_platform import redis_clients

from . import config

log = logging.getLogger(__name__)

_SCRIPTS = Path(__file__).resolve().parent / "scripts"
_CLOCK = (limits_redis._SCRIPTS / "clock.lua").read_text()
SOURCES = {name: _CLOCK + (_SCRIPTS / f"{name}.lua").read_text() for name in ("take", "done", "peek", "sync")}


@dataclass(frozen=True, slots=True)
class Ask:
    """One attempt on one deployment."""

    deployment_id: int
    member: str  # unique per attempt: the request id and the deployment
    requests_per_minute: int | None
    tokens_per_minute: int | None
    tokens: int  # counted on the account's tokens per minute (the admission's estimate)
    cooldown_ms: int | None = None  # the deployment's own breaker cooldown (None: the settings')
    window_ms: int | None = None  # the deployment's own breaker window (None: the settings')


@dataclass(frozen=True, slots=True)
class Taken:
    verdict: str  # ok | probe | open | quota
    ms: int = 0  # open: until a probe may go; quota: until the minute ends
    failed_ms: int | None = None  # the newest failure within the breaker's window, when read (Redis)


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


def channel() -> str:
    """Where done.lua publishes a breaker's opening ("<id> <until ms>") and its closing by a probe
    ("<id>"): the channel of REDIS_URL's database (Pub/Sub is server-wide; under Cluster: 0)."""
    return f"{CHANNEL}:{redis_clients.database()}"


CHANNEL = "gw:route:breaker"


class _Seen:
    """What this process knows of one deployment's shared state."""

    __slots__ = (
        "cooldown_ms",
        "epoch",
        "failures",
        "known",
        "latency",
        "others",
        "suspect_until",
        "synced",
        "until",
        "used_ms",
        "wait_until",
        "window_ms",
    )

    def __init__(self) -> None:
        self.until: int | None = None  # the breaker's `until` as last heard (None: closed)
        self.wait_until = 0  # before it, Redis would answer `open` (breaker open, or a probe under way)
        self.suspect_until = 0  # a failure is known within the window: takes go to Redis until then
        self.known = False  # the breaker's state was heard (take, done, sync, announcement)
        self.synced = False  # latency, failures and other processes' attempts were read
        self.latency: float | None = None
        self.others = 0  # attempts in flight of other processes, as last read
        self.failures = 0  # within the window, as last read
        self.used_ms = 0  # last routed to (the store's clock)
        self.epoch = 0  # moved by every change heard at once: an older sync's reply does not undo it
        self.cooldown_ms: int | None = None
        self.window_ms: int | None = None


class RoutingView:
    """This process's view of the shared routing state (docs/routing.md#the-routing-view).

    Kept exact for this process's own doings (its attempts in flight, its reports' replies) and
    refreshed for the others' by `sync()`: one script call (per Cluster slot) every
    GATEWAY_ROUTING_SYNC_SECONDS while the process routes, carrying the reports batched since the
    last one, on a task of its own. An attempt that has lasted one sync period is counted in Redis
    (from its start, so it ages out after the horizon with its process); a shorter one never
    leaves the process. Breaker openings and closings come at once by Pub/Sub (`announced`).
    One thread uses it: the event loop's (the admin's health list reads Redis itself)."""

    def __init__(self, store: "RedisRouting") -> None:
        self._store = store
        self._seen: dict[int, _Seen] = {}
        self._members: dict[int, dict[str, list]] = {}  # id -> {member: [start ms, counted in Redis]}
        self._removes: dict[int, list[str]] = {}  # members counted in Redis that ended
        self._latencies: dict[int, list[float]] = {}  # successes' latencies not sent yet
        self._offset = 0  # Redis' clock minus this machine's, as the last sync read it
        self._task: asyncio.Task | None = None
        self._hurry: asyncio.Event | None = None
        self._flushed: asyncio.Future | None = None  # done when the next sync has gone out
        self._last_warning = -3600.0

    def clear(self) -> None:
        """Forget everything (tests)."""
        self._seen.clear()
        self._members.clear()
        self._removes.clear()
        self._latencies.clear()

    def now_ms(self) -> int:
        """The store's clock: the injected one (tests), else Redis' as this machine estimates it."""
        clock = limits_backend.redis_store.clock
        return clock.now_ms() if clock is not None else int(time.time() * 1000) + self._offset

    def _entry(self, deployment_id: int) -> _Seen:
        seen = self._seen.get(deployment_id)
        if seen is None:
            seen = self._seen[deployment_id] = _Seen()
        return seen

    # --- a take ---

    def take_local(self, ask: Ask) -> Taken | None:
        """The verdict when the view may give it (`ok`: counted in flight here), else None: the
        take goes to Redis (an account quota, a breaker not known closed, a failure known within
        its window, a deployment not read yet)."""
        now = self.now_ms()
        seen = self._entry(ask.deployment_id)
        seen.used_ms, seen.cooldown_ms, seen.window_ms = now, ask.cooldown_ms, ask.window_ms
        if seen.wait_until > now:
            return Taken("open", seen.wait_until - now)
        if (
            not seen.known
            or seen.until is not None
            or seen.suspect_until > now
            or ask.requests_per_minute is not None
            or ask.tokens_per_minute is not None
        ):
            return None
        self._begin(ask.deployment_id, ask.member, now)
        return Taken("ok")

    def taken(self, ask: Ask, taken: Taken) -> None:
        """Redis' verdict on a take (take.lua): what it says of the breaker, and the attempt in flight."""
        now = self.now_ms()
        seen = self._entry(ask.deployment_id)
        seen.epoch += 1
        seen.known = True
        window = ask.window_ms or config.window_ms()
        if taken.verdict == "open":
            seen.wait_until = now + taken.ms
            if seen.until is None:
                seen.until = now + taken.ms
            return
        seen.suspect_until = 0 if taken.failed_ms is None else taken.failed_ms + window
        if taken.verdict == "ok":
            seen.until, seen.wait_until = None, 0
        elif taken.verdict == "probe":
            # This process holds the probe: its other requests are turned away until it answers.
            seen.wait_until = now + (ask.cooldown_ms or config.cooldown_ms())
            if seen.until is None:
                seen.until = now
        if taken.verdict in ("ok", "probe"):
            self._begin(ask.deployment_id, ask.member, now)

    def _begin(self, deployment_id: int, member: str, now: int) -> None:
        members = self._members.get(deployment_id)
        if members is None:
            members = self._members[deployment_id] = {}
        members[member] = [now, False]
        self._wake()

    # --- a report ---

    def done_local(self, deployment_id: int, member: str, *, result: str, latency_ms: float, release: bool) -> str:
        """A report the view takes itself (a success, a failure that does not count, an end):
        batched for the next sync. Returns the breaker's state as the view knows it."""
        if release:
            self.forget(deployment_id, member)
        seen = self._seen.get(deployment_id)
        if result == "ok":
            latencies = self._latencies.get(deployment_id)
            if latencies is None:
                latencies = self._latencies[deployment_id] = []
            latencies.append(latency_ms)
            if seen is not None:
                before = seen.latency
                alpha = float(config.EWMA_ALPHA)
                seen.latency = latency_ms if before is None else alpha * latency_ms + (1 - alpha) * before
            self._wake()
        return "open" if seen is not None and seen.until is not None else "closed"

    def forget(self, deployment_id: int, member: str, *, removed: bool = False) -> None:
        """The attempt ended: no longer in flight here; if it was counted in Redis, removed there
        by the next sync, which comes at once (unless the caller's script removes it: `removed`)."""
        members = self._members.get(deployment_id)
        entry = None if members is None else members.pop(member, None)
        if members is not None and not members:
            del self._members[deployment_id]
        if entry is not None and entry[1] and not removed:
            self._removes.setdefault(deployment_id, []).append(member)
            self._wake(soon=True)

    def reported(self, deployment_id: int, reply: list, window_ms: int) -> str:
        """done.lua's reply: the breaker's state after the report."""
        state, until, failed = _text(reply[0]), _text(reply[1]), _text(reply[2])
        seen = self._entry(deployment_id)
        seen.epoch += 1
        seen.known = True
        if state == "open":
            seen.until = int(until)
            seen.wait_until = max(seen.wait_until, seen.until)
        else:
            seen.until, seen.wait_until = None, 0
            seen.suspect_until = int(failed) + window_ms if failed else 0
        return state

    def announced(self, message: str) -> None:
        """An announcement on `channel()`: "<id> <until>" opened, "<id>" closed by a probe."""
        parts = message.split()
        if not parts or not parts[0].isdigit():
            return
        seen = self._seen.get(int(parts[0]))
        if seen is None:
            return  # not routed to lately: it is read before it is used
        seen.epoch += 1
        seen.known = True
        if len(parts) > 1 and parts[1].isdigit():
            seen.until = int(parts[1])
            seen.wait_until = max(seen.wait_until, seen.until)
        else:
            seen.until, seen.wait_until, seen.suspect_until = None, 0, 0

    def unknown(self) -> None:
        """Announcements may have been missed (the listener subscribed again): every breaker is
        asked of Redis again before it is trusted."""
        for seen in self._seen.values():
            seen.epoch += 1
            seen.known = False

    # --- reading ---

    async def health(self, deployment_ids: list[int]) -> list[Health]:
        """What ordering reads: the view, after one read of the deployments it has not read yet."""
        now = self.now_ms()
        cold = [i for i in deployment_ids if i not in self._seen or not self._seen[i].synced]
        if cold:
            await self._sync(cold)  # with what this process has for them, so nothing read is older than it knows
        out = []
        for deployment_id in deployment_ids:
            seen = self._entry(deployment_id)
            seen.used_ms = now
            out.append(
                Health(
                    in_flight=seen.others + len(self._members.get(deployment_id, ())),
                    latency_ms=seen.latency,
                    open_until_ms=seen.until,
                    recent_failures=seen.failures,
                )
            )
        return out

    # --- the sync ---

    def _wake(self, *, soon: bool = False) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._hurry = asyncio.Event()
            self._task = loop.create_task(self._run(self._hurry), name="routing-view-sync")
        if soon:
            self._hurry.set()

    def _busy(self) -> bool:
        now = self.now_ms()
        return bool(
            self._members
            or self._removes
            or self._latencies
            or any(now - seen.used_ms < config.VIEW_IDLE_MS for seen in self._seen.values())
        )

    async def _run(self, hurry: asyncio.Event) -> None:
        while True:
            if not hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(config.sync_ms() / 1000):
                        await hurry.wait()
            hurry.clear()
            if not self._busy():
                return
            try:
                await self.sync()
            except limits_redis.UNREACHABLE as exc:
                now = time.monotonic()
                if now - self._last_warning >= 60:
                    self._last_warning = now
                    log.warning("routing view not synced (Redis unreachable; tried again): %s", exc)
            except Exception:
                log.exception("routing view sync failed")

    def flushed(self) -> asyncio.Future:
        """Done once the reports made so far have gone out (tests; nothing on the hot path waits)."""
        loop = asyncio.get_running_loop()
        if not (self._removes or self._latencies):
            done = loop.create_future()
            done.set_result(None)
            return done
        if self._flushed is None or self._flushed.done() or self._flushed.get_loop() is not loop:
            self._flushed = loop.create_future()
        self._wake()
        return self._flushed

    async def sync(self) -> None:
        """Send the batched reports and read back every deployment routed to lately."""
        now = self.now_ms()
        flushed, self._flushed = self._flushed, None
        for deployment_id in [i for i, seen in self._seen.items() if now - seen.used_ms >= config.VIEW_IDLE_MS]:
            if deployment_id not in self._members:
                del self._seen[deployment_id]  # idle: read again before its next use
        ids = list(self._seen.keys() | self._members.keys() | self._removes.keys() | self._latencies.keys())
        try:
            if ids:
                await self._sync(ids)
        finally:
            if flushed is not None and not flushed.done():
                flushed.set_result(None)  # sent, or not (Redis unreachable: logged)

    async def _sync(self, deployment_ids: list[int]) -> None:
        if limits_redis.cluster() and len(deployment_ids) > 1:
            slots: dict[int, list[int]] = {}
            for deployment_id in deployment_ids:
                slots.setdefault(key_slot(_keys(deployment_id)[0].encode()), []).append(deployment_id)
            if len(slots) > 1:
                await asyncio.gather(*(self._sync(group) for group in slots.values()))
                return
        now, threshold = self.now_ms(), config.sync_ms()
        keys, args = [], [config.horizon_ms(), config.EWMA_ALPHA]
        sent: list[tuple[int, int, int]] = []  # id, its members counted in Redis, its epoch
        removed: dict[int, list[str]] = {}
        for deployment_id in deployment_ids:
            state, _, busy, fail = _keys(deployment_id)
            keys += [state, busy, fail]
            seen = self._entry(deployment_id)
            adds = []
            members = self._members.get(deployment_id, {})
            for member, entry in members.items():
                if not entry[1] and now - entry[0] >= threshold:
                    entry[1] = True
                    adds += [member, now - entry[0]]
            removes = removed[deployment_id] = self._removes.pop(deployment_id, [])
            latencies = [f"{ms:.3f}" for ms in self._latencies.pop(deployment_id, [])]
            args += [seen.window_ms or config.window_ms(), len(adds) // 2, len(removes), len(latencies)]
            args += [*adds, *removes, *latencies]
            sent.append((deployment_id, sum(1 for entry in members.values() if entry[1]), seen.epoch))
        local_ms = time.time() * 1000
        try:
            reply = await self._store._run("sync", keys, args)
        except BaseException:
            for deployment_id, members in removed.items():  # tried again with the next sync
                self._removes.setdefault(deployment_id, [])[:0] = members
            raise
        read_at = int(_text(reply[-1]))
        if limits_backend.redis_store.clock is None:
            self._offset = int(read_at - (local_ms + time.time() * 1000) / 2)
        for n, (deployment_id, counted, epoch) in enumerate(sent):
            in_flight, latency, until, probe, failures, failed = (_text(v) for v in reply[n * 6 : n * 6 + 6])
            seen = self._entry(deployment_id)
            seen.synced = True
            seen.others = max(0, int(in_flight) - counted)
            seen.latency = float(latency) if latency else None
            seen.failures = int(failures)
            if seen.epoch != epoch:
                continue  # heard of since the sync went out: newer than what it read
            seen.known = True
            seen.suspect_until = int(failed) + (seen.window_ms or config.window_ms()) if failed else 0
            if until:
                seen.until = seen.wait_until = int(until)
                if probe:
                    seen.wait_until = max(seen.until, int(probe) + (seen.cooldown_ms or config.cooldown_ms()))
            else:
                seen.until, seen.wait_until = None, 0

    async def stop(self) -> None:
        """The process stops (ASGI lifespan): the last reports go out."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.sync()


class RedisRouting:
    def __init__(self) -> None:
        self.view = RoutingView(self)

    def _now_arg(self) -> int | str:
        return limits_backend.redis_store._now_arg()

    async def _run(self, name: str, keys: list[str], args: list):
        client = limits_redis._client()
        script = client.scripts.get(f"routing:{name}")
        if script is None:
            script = client.scripts[f"routing:{name}"] = client.client.register_script(SOURCES[name])
        return await script(keys=keys, args=[self._now_arg(), *args])

    def take_local(self, ask: Ask) -> Taken | None:
        """The take without a round trip when the view can decide it (see RoutingView)."""
        return self.view.take_local(ask)

    async def take(self, ask: Ask) -> Taken:
        taken = self.view.take_local(ask)
        if taken is not None:
            return taken
        state, quota, _, fail = _keys(ask.deployment_id)
        verdict, ms, failed = await self._run(
            "take",
            [state, quota, fail],
            [
                ask.cooldown_ms or config.cooldown_ms(),
                -1 if ask.requests_per_minute is None else ask.requests_per_minute,
                -1 if ask.tokens_per_minute is None else ask.tokens_per_minute,
                ask.tokens,
                ask.window_ms or config.window_ms(),
            ],
        )
        failed = _text(failed)
        taken = Taken(_text(verdict), int(ms), int(failed) if failed else None)
        self.view.taken(ask, taken)
        return taken

    def done_local(
        self, deployment_id: int, member: str, *, result: str, probe: bool, latency_ms: float, release: bool
    ) -> str | None:
        """The report without a round trip (batched), or None when it must be told at once: a
        counted failure (the breaker must open after N across processes), a probe's answer."""
        if probe or result == "fail":
            return None
        return self.view.done_local(deployment_id, member, result=result, latency_ms=latency_ms, release=release)

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
        local = self.done_local(
            deployment_id, member, result=result, probe=probe, latency_ms=latency_ms, release=release
        )
        if local is not None:
            return local
        if release:
            self.view.forget(deployment_id, member, removed=True)  # done.lua removes it from Redis
        breaker = breaker or Breaker.default()
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
                *breaker,
                "1" if release else "0",
                channel(),
                deployment_id,
            ],
        )
        return self.view.reported(deployment_id, reply, breaker.window_ms)

    async def health(self, deployment_ids: list[int]) -> list[Health]:
        """What ordering reads, from the view (no round trip once the deployments were read)."""
        return await self.view.health(deployment_ids)

    def flushed(self) -> asyncio.Future:
        """Done once the reports made so far are in Redis (the view's next sync)."""
        return self.view.flushed()

    async def sync(self) -> None:
        await self.view.sync()

    async def snapshot(self, deployment_ids: list[int], windows_ms: list[int] | None = None) -> Snapshot:
        """Redis itself, not the view (the admin's health list; any thread). `windows_ms`: each
        deployment's breaker window (default: the settings')."""
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

    def take_local(self, ask: Ask) -> Taken:
        return self._take(ask)

    async def take(self, ask: Ask) -> Taken:
        return self._take(ask)

    def _take(self, ask: Ask) -> Taken:
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

    def done_local(
        self, deployment_id: int, member: str, *, result: str, probe: bool, latency_ms: float, release: bool
    ) -> str | None:
        """In one process every report is local, except a counted failure or a probe's answer,
        which needs the deployment's breaker settings (`done`)."""
        if probe or result == "fail":
            return None
        return self._done(deployment_id, member, result=result, probe=probe, latency_ms=latency_ms, release=release)

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
        return self._done(
            deployment_id, member, result=result, probe=probe, latency_ms=latency_ms, release=release, breaker=breaker
        )

    async def sync(self) -> None:
        """Nothing to send: this process's memory is the state."""

    def flushed(self) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def _done(
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
