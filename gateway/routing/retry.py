"""Retries and the request's deadline (docs/routing.md#retries-and-fallbacks).

A request goes through its chain: the deployments of the asked-for model in routing order, then
those of each of its fallback models (gateway/proxy.py). Going through the chain once is a
round; moving on to another deployment or model does not wait (another provider account does not
share the failure). When the whole round failed, the deployments whose failure may pass
(`RETRY_KINDS`: timeouts, connection errors, 5xx, the provider's 429 and 529; never a 400 or 401)
are tried again, up to GATEWAY_RETRIES more rounds, each after a backoff with full jitter:
uniform(0, min(GATEWAY_RETRY_BACKOFF_MAX_SECONDS, GATEWAY_RETRY_BACKOFF_SECONDS * 2 ** (round - 1))).

A provider's `retry-after` is honoured: the wait is at least the soonest `retry-after` among
the deployments retried, and a deployment is not sent the request again before its own. One
whose `retry-after` is longer than GATEWAY_RETRY_AFTER_MAX_SECONDS is not retried within this
request at all (the provider asked for more than a caller should wait).

Everything happens within GATEWAY_REQUEST_DEADLINE_SECONDS of the first attempt: an attempt gets
at most the time left, and no round starts that its wait would take past the deadline; the
caller then gets the last upstream error. The clock (`monotonic()`, `sleep()`) is injectable
(`use_clock`), so that tests move time rather than wait.
"""

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

from django.conf import settings

from gateway.providers import ProviderError
from gateway.registry import DeploymentView

# Failures that may pass if the same deployment is asked again a little later.
RETRY_KINDS = frozenset({"timeout", "connection", "server", "overloaded", "rate_limit"})


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when slept on or told to (tests): a backoff costs no real time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


_clock: Clock = SystemClock()


def clock() -> Clock:
    return _clock


def use_clock(new: Clock | None) -> Clock:
    """Replace the retry clock (None: the system's); returns the one it replaces."""
    global _clock
    previous, _clock = _clock, new or SystemClock()
    return previous


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt of the current round: where, and what the provider said."""

    leg: int  # index in the request's chain (0: the asked-for model)
    deployment: DeploymentView
    error: ProviderError


@dataclass(frozen=True, slots=True)
class Policy:
    retries: int  # rounds after the first
    backoff_seconds: float
    backoff_max_seconds: float
    retry_after_max_seconds: float
    deadline_seconds: float

    def backoff(self, round_: int, rng: random.Random) -> float:
        """Full jitter (AWS' "Exponential Backoff and Jitter"): uniform over [0, the capped exponential)."""
        ceiling = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** max(0, round_ - 1))
        return rng.uniform(0, max(0.0, ceiling))

    def next_round(
        self, round_: int, failures: list[Failure], rng: random.Random
    ) -> tuple[float, list[Failure]] | None:
        """Round `round_` (1 for the first retry) after `failures`: how long to wait and which
        failed attempts to try again, in the order they were tried; None: nothing to retry."""
        if round_ > self.retries:
            return None
        candidates = []
        for failure in failures:
            if failure.error.kind not in RETRY_KINDS:
                continue
            after = retry_after_seconds(failure.error.retry_after)
            if after is not None and after > self.retry_after_max_seconds:
                continue  # the provider asked for longer than we wait: not within this request
            candidates.append((failure, after or 0.0))
        if not candidates:
            return None
        wait = max(self.backoff(round_, rng), min(after for _, after in candidates))
        return wait, [failure for failure, after in candidates if after <= wait]


def policy() -> Policy:
    """The settings, read per request (tests and operators change them at run time)."""
    return Policy(
        retries=max(0, int(getattr(settings, "GATEWAY_RETRIES", 1))),
        backoff_seconds=max(0.0, float(getattr(settings, "GATEWAY_RETRY_BACKOFF_SECONDS", 0.25))),
        backoff_max_seconds=max(0.0, float(getattr(settings, "GATEWAY_RETRY_BACKOFF_MAX_SECONDS", 4.0))),
        retry_after_max_seconds=max(0.0, float(getattr(settings, "GATEWAY_RETRY_AFTER_MAX_SECONDS", 10.0))),
        deadline_seconds=max(0.001, float(getattr(settings, "GATEWAY_REQUEST_DEADLINE_SECONDS", 180.0))),
    )


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A `retry-after` header's delay in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
