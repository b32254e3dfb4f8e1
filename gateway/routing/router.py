"""One request's route: the order of its deployments, and each attempt's account (docs/routing.md).

`plan()` orders the deployments by the model's strategy, the prompt's affine deployment first when
the model has `affinity: "prefix"` (affinity.py). `Plan.take(deployment)` asks the shared
state whether the deployment may be tried now (its breaker, its provider account's quota) and, if
so, counts the attempt in flight; the attempt then says how it went (`answered`, `failed`) and
ends once (`release`): a stream ends when its body is closed (`tracked`).

A model with a single deployment, no quota and the `priority` strategy costs no round trip: its
plan is not engaged (nothing to choose, nowhere else to go). Routing is advice: when Redis cannot
be reached, deployments are tried in the strategy's order without breaker or quota (fail open;
the provider's own limits still answer 429).
"""

import asyncio
import logging
import math
import random
import time

from django.conf import settings

from gateway import observability
from gateway.errors import GatewayError
from gateway.limits.redis_store import UNREACHABLE, background
from gateway.providers import ProviderError
from gateway.registry import DeploymentView, ModelView

from . import affinity, config, strategies
from .store import Ask, Breaker, Health, store

log = logging.getLogger(__name__)

# Failures that count towards a deployment's breaker: it may be down or overloaded. A 400 and its
# kin are the request's fault: the deployment answered (for a probe, that closes the breaker).
BREAKER_KINDS = frozenset({"timeout", "connection", "server", "overloaded", "rate_limit"})

# GATEWAY_ROUTING_SEED: repeatable draws (tests); unset, the system's randomness.
_rng = random.Random(getattr(settings, "GATEWAY_ROUTING_SEED", None))
_last_warning = -3600.0


def _unreachable(exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 60:
        _last_warning = now
        log.warning("routing state unreachable (deployments tried without breaker or quota): %s", exc)


def engaged(model: ModelView, deployments: list[DeploymentView]) -> bool:
    """Whether this request's route reads or writes shared state."""
    if len(deployments) > 1:
        return True
    return any(d.requests_per_minute is not None or d.tokens_per_minute is not None for d in deployments)


class Attempt:
    __slots__ = ("_released", "deployment", "member", "model", "probe", "shared", "started")

    def __init__(self, model: str, deployment: DeploymentView, member: str, *, probe: bool, shared: bool) -> None:
        self.model = model
        self.deployment = deployment
        self.member = member
        self.probe = probe
        self.shared = shared
        self.started = time.perf_counter()
        self._released = not shared  # nothing was counted in flight

    async def _done(self, result: str, *, release: bool) -> None:
        if release:
            if self._released:
                release = False
            self._released = True
        if self._report_now(result, release=release):
            return
        # Shielded: a request cancelled meanwhile must not leave its attempt counted in flight.
        await asyncio.shield(background(self._report(result, release=release)))

    def _report_now(self, result: str, *, release: bool) -> bool:
        """The report when the store takes it without a round trip (a success, a failure that does
        not count, an end: batched by the Redis store's view); False when it must be awaited (a
        counted failure, a probe's answer: `_report`)."""
        if not self.shared or (result == "none" and not release):
            return True
        state = store().done_local(
            self.deployment.id,
            self.member,
            result=result,
            probe=self.probe,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            release=release,
        )
        if state is None:
            return False
        if result != "none":
            observability.breaker_seen(model=self.model, deployment=self.deployment.id, state=state)
        return True

    async def _report(self, result: str, *, release: bool) -> None:
        if not self.shared or (result == "none" and not release):
            return
        latency_ms = (time.perf_counter() - self.started) * 1000
        try:
            state = await store().done(
                self.deployment.id,
                self.member,
                result=result,
                probe=self.probe,
                latency_ms=latency_ms,
                release=release,
                breaker=Breaker.of(self.deployment),
            )
        except UNREACHABLE as exc:
            _unreachable(exc)
            return
        if result != "none":
            observability.breaker_seen(model=self.model, deployment=self.deployment.id, state=state)

    async def answered(self, *, release: bool = True) -> asyncio.Future | None:
        """The deployment answered (a stream: its first event is on its way; `release=False`).
        Nothing waits on a success's report: batched in the process, or (a probe's) reported on a
        task that runs to completion. Returns what to await to know it reached the shared state
        (tests: the view's next sync)."""
        observability.upstream_attempted(
            model=self.model, deployment=self.deployment.id, provider=self.deployment.provider, outcome="ok"
        )
        if not self.shared:
            return None
        if release:
            self._released = True  # taken now: a later release() must not count it again
        if self._report_now("ok", release=release):
            return store().flushed()
        return background(self._report("ok", release=release))

    async def failed(self, exc: ProviderError) -> None:
        observability.upstream_attempted(
            model=self.model, deployment=self.deployment.id, provider=self.deployment.provider, outcome=exc.kind
        )
        await self._done("fail" if exc.kind in BREAKER_KINDS else "neutral", release=True)

    async def release(self) -> None:
        """The attempt's end (exactly once, whatever the path; later calls do nothing)."""
        await self._done("none", release=True)

    def release_soon(self) -> asyncio.Task | None:
        """`release()` from code that must not wait (a cancelled task): it runs to completion (a
        task, returned, when the store cannot take it at once)."""
        if self._released:
            return None
        self._released = True
        if self._report_now("none", release=True):
            return None
        return background(self._report("none", release=True))


class Plan:
    """The deployments of one request in the order to try them, and why some were skipped."""

    def __init__(self, call, order: list[DeploymentView], *, shared: bool) -> None:
        self.call = call
        self.order = order
        self.shared = shared
        self.quota_ms: int | None = None  # the soonest end of a quota minute among those skipped
        self.open_ms: int | None = None  # the soonest probe among those skipped for their breaker

    async def take(self, deployment: DeploymentView) -> Attempt | None:
        """An attempt on `deployment`, or None when it is skipped (breaker open, account at quota)."""
        call = self.call
        member = f"{call.request_id}:{deployment.id}"
        if not self.shared:
            return Attempt(call.model_name, deployment, member, probe=False, shared=False)
        ask = Ask(
            deployment_id=deployment.id,
            member=member,
            requests_per_minute=deployment.requests_per_minute,
            tokens_per_minute=deployment.tokens_per_minute,
            tokens=_tokens(call),
            cooldown_ms=config.cooldown_ms(deployment.breaker_cooldown_seconds),
            window_ms=config.window_ms(deployment.breaker_window_seconds),
        )
        routes = store()
        taken = routes.take_local(ask)  # the process's view decides, when it may: no round trip
        if taken is None:
            task = background(routes.take(ask))
            try:
                taken = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(_untake(deployment.id, member))  # counted in flight, never attempted
                raise
            except UNREACHABLE as exc:
                _unreachable(exc)
                return Attempt(call.model_name, deployment, member, probe=False, shared=False)
        if taken.verdict in ("ok", "probe"):
            if taken.verdict == "probe":
                observability.breaker_seen(model=call.model_name, deployment=deployment.id, state="half_open")
            return Attempt(call.model_name, deployment, member, probe=taken.verdict == "probe", shared=True)
        outcome = "breaker_open" if taken.verdict == "open" else "quota"
        observability.upstream_attempted(
            model=call.model_name, deployment=deployment.id, provider=deployment.provider, outcome=outcome
        )
        if taken.verdict == "open":
            observability.breaker_seen(model=call.model_name, deployment=deployment.id, state="open")
            self.open_ms = taken.ms if self.open_ms is None else min(self.open_ms, taken.ms)
        else:
            self.quota_ms = taken.ms if self.quota_ms is None else min(self.quota_ms, taken.ms)
        return None

    def nothing_tried(self) -> GatewayError:
        """Every deployment was skipped: 429 `upstream_capacity` when one was at its account's quota
        (not the tenant's own limit), else 503 `upstream_unavailable` (every breaker open)."""
        name = self.call.requested_model
        if self.quota_ms is not None:
            return GatewayError(
                429,
                f"Every deployment of `{name}` is at its provider account's quota; this is not your own "
                "rate limit. Retry later.",
                "upstream_capacity",
                headers={"retry-after": str(max(1, math.ceil(self.quota_ms / 1000)))},
            )
        return GatewayError(
            503,
            f"Every deployment of `{name}` is out of rotation after repeated upstream failures. Retry later.",
            "upstream_unavailable",
            headers={"retry-after": str(max(1, math.ceil((self.open_ms or 1000) / 1000)))},
        )


def _untake(deployment_id: int, member: str):
    def untake(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None or task.result().verdict not in ("ok", "probe"):
            return
        background(store().done(deployment_id, member, result="none", probe=False, latency_ms=0, release=True))

    return untake


def _tokens(call) -> int:
    """What an attempt counts on its account's tokens per minute: the admission's prompt bound
    plus the output the request allows, when it says (not corrected after the answer)."""
    body = call.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    return call.prompt_estimate + (limit if isinstance(limit, int) and not isinstance(limit, bool) else 0)


async def plan(call, deployments: list[DeploymentView]) -> Plan:
    model: ModelView = call.model
    shared = engaged(model, deployments)
    strategy = model.routing
    health: list[Health] | None = None
    if shared and strategy in strategies.READS_HEALTH:
        try:
            health = await store().health([d.id for d in deployments])
        except UNREACHABLE as exc:
            _unreachable(exc)
    ordered = strategies.order(strategy, deployments, health, _rng)
    return Plan(call, affinity.apply(call, deployments, ordered), shared=shared)


class TrackedStream:
    """An upstream stream whose attempt ends (in flight, once) when the stream is closed."""

    __slots__ = ("_attempt", "_events")

    def __init__(self, events, attempt: Attempt) -> None:
        self._events = events
        self._attempt = attempt

    def __aiter__(self):
        return self._events.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            task = self._attempt.release_soon()
            if task is not None:
                await asyncio.shield(task)


def tracked(events, attempt: Attempt):
    return events if attempt._released else TrackedStream(events, attempt)
