"""Admit a request against every limit and budget that applies, or refuse it in its wire words.

One store call admits (requests/min, tokens/min, concurrency, the tenant's and the key's
budget, all at once) and one settles. A caller with no limit and no budget costs nothing, not
even a Redis call. A refusal reserves nothing: a request refused by the key's budget takes
nothing of the tenant's, nor of its requests per minute.
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal

from redis.exceptions import ConnectionError as RedisConnectionError

from ..errors import GatewayError
from ..registry import Caller
from .backend import month, store
from .headers import requests_headers, seconds_until, tokens_headers
from .keys import MAX_UNITS, from_units, keys_for, to_units
from .memory_store import MemoryStore
from .redis_store import UNREACHABLE, RedisStore, background
from .store import Ask, Outcome, Ticket

log = logging.getLogger("gateway.limits")

SCOPES = ("tenant", "key")
_WHO = {"tenant": "this tenant", "key": "this API key"}
_BUDGET_OF = {"tenant": "this tenant's monthly budget", "key": "this API key's monthly budget"}

MonthToDate = Callable[[], Awaitable[Decimal]]


@dataclass
class Admission:
    """An admitted request. Call `settle()` once it is metered, or `release()` when it produced
    nothing billable; either frees its concurrency slot. Both are idempotent and never raise:
    a settlement that cannot reach Redis is logged and left to expire (slots after the
    concurrency horizon, tokens with their window, budget holds at the next reconcile)."""

    headers: dict[str, str] = field(default_factory=dict)
    _ticket: Ticket | None = field(default=None, repr=False)
    _store: RedisStore | MemoryStore | None = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    @property
    def budgeted(self) -> bool:
        """Whether the request counts against its tenant's monthly budget (and so may cross one of
        the subscription's alert thresholds). A key's own budget has no alerts."""
        return self._ticket is not None and self._ticket.budget[0]

    async def settle(self, *, tokens: int, cost: Decimal) -> None:
        await self._finish(tokens=max(0, tokens), units=max(0, to_units(cost)))

    async def release(self) -> None:
        await self._finish(tokens=0, units=0)

    async def _finish(self, *, tokens: int, units: int) -> None:
        if self._done:
            return
        self._done = True
        if self._ticket is None or self._store is None:
            return
        # Shielded: a cancelled caller (client gone) must not leave the slot taken.
        await asyncio.shield(background(_settle_quietly(self._store, self._ticket, tokens=tokens, units=units)))


async def _settle_quietly(current, ticket: Ticket, *, tokens: int, units: int) -> None:
    try:
        await current.settle(ticket, tokens=tokens, units=units)
    except Exception:  # the response is already decided; settlement must not break it
        log.warning("request %s: settling limits failed", ticket.request_id, exc_info=True)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


async def admit(
    *,
    caller: Caller,
    request_id: str,
    prompt_tokens: int,
    max_output_tokens: int | None,
    worst_case_cost: Decimal | None,
    budget: Decimal | None,
    month_to_date: MonthToDate,
    key_budget: Decimal | None = None,
    key_month_to_date: MonthToDate | None = None,
) -> Admission:
    """Admit a request or raise GatewayError: 429 (requests, tokens, concurrency), 402 (the
    tenant's or the key's budget), 503 (limits store unreachable while this caller has limits or
    a budget). `month_to_date` and `key_month_to_date` load the month's spend from the database
    when a counter is missing; `key_month_to_date` is needed when there is a `key_budget`."""
    if key_budget is not None and key_month_to_date is None:
        raise TypeError("a key budget needs key_month_to_date")
    tenant, key = caller.tenant, caller.key
    rpm = (_limit(tenant.requests_per_minute), _limit(key.requests_per_minute))
    tpm = (_limit(tenant.tokens_per_minute), _limit(key.tokens_per_minute))
    concurrency = (_limit(tenant.max_concurrent), _limit(key.max_concurrent))
    if budget is None and key_budget is None and max(*rpm, *tpm, *concurrency) < 0:
        return Admission()
    tokens = max(0, prompt_tokens) + max(0, max_output_tokens or 0)
    too_big = [i for i in (0, 1) if 0 <= tpm[i] < tokens]
    if too_big:
        # No window will ever hold it: a retry-after would be a lie, so there is none.
        raise GatewayError(
            429,
            f"Request too large for the tokens-per-minute limit: it may use up to {tokens} tokens and "
            + ", ".join(f"{_WHO[SCOPES[i]]} allows {tpm[i]} per minute" for i in too_big)
            + ". Send a shorter prompt or a lower max_tokens.",
            "rate_limit_tokens",
        )
    try:
        return await _admit(
            caller=caller,
            request_id=request_id,
            tokens=tokens,
            limits=(rpm, tpm, concurrency),
            worst_case_cost=worst_case_cost,
            budgets=(budget, key_budget),
            loaders=(month_to_date, key_month_to_date),
        )
    except UNREACHABLE as exc:
        log.warning("request %s: limits store unreachable: %s", request_id, exc)
        raise GatewayError(
            503,
            "Rate limits and budgets are unavailable right now, so the request was not admitted. Retry shortly.",
            "limits_unavailable",
            headers={"retry-after": "1"},
        ) from exc


async def _admit(
    *,
    caller: Caller,
    request_id: str,
    tokens: int,
    limits: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    worst_case_cost: Decimal | None,
    budgets: tuple[Decimal | None, Decimal | None],
    loaders: tuple[MonthToDate | None, MonthToDate | None],
) -> Admission:
    rpm, tpm, concurrency = limits
    units = 0
    if budgets != (None, None):
        units = 0 if worst_case_cost is None else max(0, to_units(worst_case_cost, rounding=ROUND_CEILING))
    thresholds = tuple(
        None if budget is None else min(to_units(budget, rounding=ROUND_CEILING), MAX_UNITS) - max(units, 1)
        for budget in budgets
    )
    current = store()
    ask = Ask(
        keys=keys_for(caller.tenant.id, caller.key.id, month(current)),
        request_id=request_id,
        tokens=tokens,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        thresholds=thresholds,
        units=units,
    )
    outcome = await current.admit(ask)
    if outcome.verdict == "init":
        await asyncio.gather(*(initialise(current, ask.keys.spends[i], loaders[i]) for i in outcome.scopes))
        outcome = await current.admit(ask)
        if outcome.verdict == "init":  # the counter vanished again: Redis is not keeping data
            raise RedisConnectionError("the budget counter cannot be initialised")
    headers = {**requests_headers(rpm, outcome), **tokens_headers(tpm, outcome)}
    if outcome.verdict != "ok":
        raise _refusal(outcome, limits=limits, tokens=tokens, headers=headers, budgets=budgets, units=units,
                       worst_case_cost=worst_case_cost)  # fmt: skip
    if max(*tpm, *concurrency) < 0 and budgets == (None, None):
        return Admission(headers=headers)  # requests/min only: nothing to settle
    ticket = Ticket(
        keys=ask.keys,
        request_id=request_id,
        window=outcome.window,
        tokens=tokens,
        tpm=(tpm[0] >= 0, tpm[1] >= 0),
        concurrency=(concurrency[0] >= 0, concurrency[1] >= 0),
        budget=(budgets[0] is not None, budgets[1] is not None),
    )
    return Admission(headers=headers, _ticket=ticket, _store=current)


def _refusal(
    outcome: Outcome,
    *,
    limits: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    tokens: int,
    headers: dict[str, str],
    budgets: tuple[Decimal | None, Decimal | None],
    units: int,
    worst_case_cost: Decimal | None,
) -> GatewayError:
    rpm, tpm, concurrency = limits
    who = [_WHO[SCOPES[i]] for i in outcome.scopes]
    if outcome.verdict == "requests":
        wait = seconds_until(outcome.requests_ms_left)
        return GatewayError(
            429,
            "Rate limit reached for requests per minute: "
            + ", ".join(f"{name} allows {rpm[i]}" for name, i in zip(who, outcome.scopes, strict=True))
            + f". Retry in {wait} s.",
            "rate_limit_requests",
            headers={"retry-after": str(wait), **headers},
        )
    if outcome.verdict == "budget":
        return _budget_exhausted(outcome, budgets=budgets, worst_case_cost=worst_case_cost if units else None)
    if outcome.verdict == "tokens":
        wait = seconds_until(outcome.ms_left)
        return GatewayError(
            429,
            "Rate limit reached for tokens per minute: "
            + ", ".join(
                f"{name} allows {tpm[i]}, {outcome.used[i]} are used in this window"
                for name, i in zip(who, outcome.scopes, strict=True)
            )
            + f", and this request may use up to {tokens}. Retry in {wait} s.",
            "rate_limit_tokens",
            headers={"retry-after": str(wait), **headers},
        )
    if outcome.verdict == "concurrency":
        return GatewayError(
            429,
            "Too many concurrent requests: "
            + ", ".join(
                f"{name} allows {concurrency[i]} in flight" for name, i in zip(who, outcome.scopes, strict=True)
            )
            + ". Retry when one has finished.",
            "concurrency_limit",
            headers={"retry-after": "1", **headers},
        )
    raise AssertionError(f"unknown verdict {outcome.verdict!r}")


def _budget_exhausted(
    outcome: Outcome, *, budgets: tuple[Decimal | None, Decimal | None], worst_case_cost: Decimal | None
) -> GatewayError:
    """The 402 of a budget refusal. It names only the budgets that refused, and says nothing of
    the tenant's other keys: a key's caller learns its own budget and, when the tenant's refused,
    the tenant's (as before keys had budgets)."""
    refusing = [(i, budgets[i]) for i in outcome.scopes if budgets[i] is not None]
    which = " and ".join(f"{_BUDGET_OF[SCOPES[i]]} of {budget} USD" for i, budget in refusing)
    verb = "are" if len(refusing) > 1 else "is"
    left = min(max(Decimal(0), budget - from_units(outcome.spend[i])) for i, budget in refusing)
    detail = (
        f" This request may cost up to {worst_case_cost.normalize():f} USD; {left.normalize():f} USD remain."
        if worst_case_cost is not None and left > 0
        else ""
    )
    return GatewayError(
        402,
        f"{which[0].upper()}{which[1:]} {verb} exhausted.{detail} Raise the budget or wait for next month.",
        "budget_exhausted",
    )


# --- Budget initialisation, once per counter and process at a time ---

_initialising: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future]]" = (
    weakref.WeakKeyDictionary()
)


async def initialise(current, spend_key: str, month_to_date: MonthToDate) -> None:
    """Load the month's spend from the database into a missing counter. Concurrent admissions
    of this process share one query; another process may race us, and SET NX keeps the first."""
    pending = _initialising.setdefault(asyncio.get_running_loop(), {})
    future = pending.get(spend_key)
    if future is None:

        async def load() -> None:
            try:
                await current.initialise(spend_key, to_units(await month_to_date()))
            finally:
                pending.pop(spend_key, None)

        future = pending[spend_key] = asyncio.ensure_future(load())
    await asyncio.shield(future)
