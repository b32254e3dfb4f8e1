"""Admit a request against every limit and budget that applies, or refuse it in its wire words.

Five levels may limit a request: the platform's policy (applied before, in gateway/proxy.py),
the tenant, the key's project, the key, and the caller's end user. One store call admits
(requests/min, tokens/min, concurrency, the monthly budgets and the key's and end user's daily
budgets, all at once) and one settles: the strictest wins, and a refusal reserves nothing (a
request refused by the key's budget takes nothing of the tenant's, nor of its requests per
minute). A level without limits is not sent at all: a caller with no limit and no budget costs
nothing, not even a Redis call, and one without project or end user costs what it did before
they existed.
"""

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

from redis.exceptions import ConnectionError as RedisConnectionError

from ..errors import GatewayError
from ..registry import Caller
from .backend import store
from .headers import requests_headers, seconds_until, tokens_headers
from .keys import MAX_UNITS, BudgetKeys, budget_keys, from_units, scope_keys, to_units
from .memory_store import MemoryStore
from .redis_store import UNREACHABLE, RedisStore, background
from .store import Ask, BudgetAsk, Held, Outcome, ScopeAsk, Ticket

log = logging.getLogger("gateway.limits")

# A month's spend from the database (the tenant's and key's: the month is today's).
MonthToDate = Callable[[], Awaitable[Decimal]]
# A period's spend from the database since `since` (the start of the period on the limits' clock).
SpendSince = Callable[[datetime], Awaitable[Decimal]]


@dataclass(frozen=True, slots=True)
class Level:
    """A level with limits of its own beyond the tenant and the key: a project or an end user.

    `ident`: the project's id, the end user's recorded id (counters are named by it);
    `name`: what a refusal calls it (the project's name; unused for the end user, who is the
    request's own). `spend_since` loads a missing budget counter from the usage records."""

    kind: str  # "project" | "end_user"
    ident: int | str
    name: str = ""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    monthly_budget: Decimal | None = None
    daily_budget: Decimal | None = None
    spend_since: SpendSince | None = None

    @property
    def limited(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.max_concurrent is not None
        )


@dataclass(frozen=True, slots=True)
class _Scope:
    kind: str
    name: str
    rpm: int
    tpm: int
    concurrency: int


@dataclass(frozen=True, slots=True)
class _Budget:
    kind: str
    name: str
    period: str  # "month" | "day"
    amount: Decimal
    keys: BudgetKeys
    load: Callable[[], Awaitable[Decimal]]


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
    _tenant_budget: bool = field(default=False, repr=False)

    @property
    def budgeted(self) -> bool:
        """Whether the request counts against its tenant's monthly budget (and so may cross one of
        the subscription's alert thresholds). Other levels' budgets have no alerts."""
        return self._tenant_budget

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


def _now(current) -> datetime:
    ms = current.now_ms()
    return datetime.now(tz=UTC) if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _who(scope: _Scope) -> str:
    match scope.kind:
        case "tenant":
            return "this tenant"
        case "key":
            return "this API key"
        case "project":
            return f'project "{scope.name}"'
    return "end user limit:"


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
    key_daily_budget: Decimal | None = None,
    key_spend_since: SpendSince | None = None,
    levels: Sequence[Level] = (),
) -> Admission:
    """Admit a request or raise GatewayError: 429 (requests, tokens, concurrency), 402 (a
    budget of any level), 503 (limits store unreachable while this caller has limits or a
    budget). `month_to_date` and `key_month_to_date` load the month's spend from the database
    when a counter is missing (`key_month_to_date` is needed with a `key_budget`);
    `key_spend_since` the key's day (needed with a `key_daily_budget`). `levels`: the key's
    project and the end user, when they have limits."""
    if key_budget is not None and key_month_to_date is None:
        raise TypeError("a key budget needs key_month_to_date")
    if key_daily_budget is not None and key_spend_since is None:
        raise TypeError("a key's daily budget needs key_spend_since")
    tenant, key = caller.tenant, caller.key
    scopes = [
        _Scope(
            kind,
            name,
            _limit(owner.requests_per_minute),
            _limit(owner.tokens_per_minute),
            _limit(owner.max_concurrent),
        )
        for kind, name, owner in (
            ("tenant", tenant.slug, tenant),
            ("key", "", key),
            *((lv.kind, lv.name, lv) for lv in levels),
        )
    ]
    ids = [None, key.id, *(lv.ident for lv in levels)]
    # Only levels with a rate limit have counters to touch.
    limited = [(i, s) for i, s in enumerate(scopes) if max(s.rpm, s.tpm, s.concurrency) >= 0]
    budgeted = (
        budget is not None
        or key_budget is not None
        or key_daily_budget is not None
        or any(lv.monthly_budget is not None or lv.daily_budget is not None for lv in levels)
    )
    if not budgeted and not limited:
        return Admission()
    tokens = max(0, prompt_tokens) + max(0, max_output_tokens or 0)
    too_big = [s for _, s in limited if 0 <= s.tpm < tokens]
    if too_big:
        # No window will ever hold it: a retry-after would be a lie, so there is none.
        raise GatewayError(
            429,
            f"Request too large for the tokens-per-minute limit: it may use up to {tokens} tokens and "
            + ", ".join(_allows(s, s.tpm, "tokens") for s in too_big)
            + ". Send a shorter prompt or a lower max_tokens.",
            "rate_limit_tokens",
            level=too_big[0].kind,
        )
    try:
        current = store()
        budgets = _budgets(current, caller, budget, month_to_date, key_budget, key_month_to_date,
                           key_daily_budget, key_spend_since, levels) if budgeted else []  # fmt: skip
        return await _admit(
            current,
            tenant_id=tenant.id,
            request_id=request_id,
            tokens=tokens,
            scopes=[(s, ids[i]) for i, s in limited],
            budgets=budgets,
            worst_case_cost=worst_case_cost,
        )
    except UNREACHABLE as exc:
        log.warning("request %s: limits store unreachable: %s", request_id, exc)
        raise GatewayError(
            503,
            "Rate limits and budgets are unavailable right now, so the request was not admitted. Retry shortly.",
            "limits_unavailable",
            headers={"retry-after": "1"},
        ) from exc


def _budgets(
    current,
    caller: Caller,
    budget: Decimal | None,
    month_to_date: MonthToDate,
    key_budget: Decimal | None,
    key_month_to_date: MonthToDate | None,
    key_daily_budget: Decimal | None,
    key_spend_since: SpendSince | None,
    levels: Sequence[Level],
) -> list["_Budget"]:
    """Every budget that applies, in level order, named for the period on the store's clock."""
    tenant, key = caller.tenant, caller.key
    now = _now(current)
    month, day = now.strftime("%Y-%m"), now.strftime("%Y-%m-%d")
    since_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    since_day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    budgets: list[_Budget] = []
    if budget is not None:
        budgets.append(
            _Budget(
                "tenant", tenant.slug, "month", budget, budget_keys(tenant.id, "tenant", None, month), month_to_date
            )
        )
    if key_budget is not None:
        budgets.append(
            _Budget("key", "", "month", key_budget, budget_keys(tenant.id, "key", key.id, month), key_month_to_date)
        )
    if key_daily_budget is not None:
        budgets.append(
            _Budget(
                "key", "", "day", key_daily_budget, budget_keys(tenant.id, "key", key.id, day),
                lambda: key_spend_since(since_day),
            )
        )  # fmt: skip
    for lv in levels:
        for period, amount, since, name in (
            ("month", lv.monthly_budget, since_month, month),
            ("day", lv.daily_budget, since_day, day),
        ):
            if amount is not None:
                load = lv.spend_since
                budgets.append(
                    _Budget(
                        lv.kind,
                        lv.name,
                        period,
                        amount,
                        budget_keys(tenant.id, lv.kind, lv.ident, name),
                        (lambda load=load, since=since: load(since)),
                    )
                )  # fmt: skip
    return budgets


async def _admit(
    current,
    *,
    tenant_id: int,
    request_id: str,
    tokens: int,
    scopes: list[tuple[_Scope, int | str | None]],
    budgets: list[_Budget],
    worst_case_cost: Decimal | None,
) -> Admission:
    units = 0
    if budgets:
        units = 0 if worst_case_cost is None else max(0, to_units(worst_case_cost, rounding=ROUND_CEILING))
    ask = Ask(
        request_id=request_id,
        tokens=tokens,
        scopes=tuple(
            ScopeAsk(scope_keys(tenant_id, s.kind, ident), s.rpm, s.tpm, s.concurrency) for s, ident in scopes
        ),
        budgets=tuple(
            BudgetAsk(b.keys, min(to_units(b.amount, rounding=ROUND_CEILING), MAX_UNITS) - max(units, 1))
            for b in budgets
        ),
        units=units,
    )
    outcome = await current.admit(ask)
    if outcome.verdict == "init":
        await asyncio.gather(*(initialise(current, budgets[j].keys, budgets[j].load) for j in outcome.hit))
        outcome = await current.admit(ask)
        if outcome.verdict == "init":  # the counter vanished again: Redis is not keeping data
            raise RedisConnectionError("the budget counter cannot be initialised")
    plain = [s for s, _ in scopes]
    rpm = [s.rpm for s in plain]
    tpm = [s.tpm for s in plain]
    headers = {**requests_headers(rpm, outcome), **tokens_headers(tpm, outcome)}
    if outcome.verdict != "ok":
        raise _refusal(outcome, scopes=plain, tokens=tokens, headers=headers, budgets=budgets,
                       worst_case_cost=worst_case_cost if units else None)  # fmt: skip
    if not budgets and max((max(s.tpm, s.concurrency) for s in plain), default=-1) < 0:
        return Admission(headers=headers)  # requests/min only: nothing to settle
    ticket = Ticket(
        request_id=request_id,
        window=outcome.window,
        tokens=tokens,
        scopes=tuple(
            Held(a.keys, a.tpm >= 0, a.concurrency >= 0) for a in ask.scopes if max(a.tpm, a.concurrency) >= 0
        ),
        budgets=tuple(b.keys for b in budgets),
    )
    # The ticket's scopes are a subset of the ask's, named by keys: settle needs only those.
    return Admission(
        headers=headers,
        _ticket=ticket,
        _store=current,
        _tenant_budget=any(b.kind == "tenant" for b in budgets),
    )


def _allows(scope: _Scope, limit: int, what: str) -> str:
    if scope.kind == "end_user":
        return f"end user limit: {limit} {what} per minute"
    if scope.kind == "project":
        return f'project "{scope.name}" limit: {limit} {what} per minute'
    return f"{_who(scope)} allows {limit} per minute" if what == "tokens" else f"{_who(scope)} allows {limit}"


def _refusal(
    outcome: Outcome,
    *,
    scopes: list[_Scope],
    tokens: int,
    headers: dict[str, str],
    budgets: list[_Budget],
    worst_case_cost: Decimal | None,
) -> GatewayError:
    if outcome.verdict == "budget":
        return _budget_exhausted(outcome, budgets=budgets, worst_case_cost=worst_case_cost)
    hit = [scopes[i] for i in outcome.hit]
    level = hit[0].kind
    if outcome.verdict == "requests":
        wait = seconds_until(outcome.requests_ms_left)
        return GatewayError(
            429,
            "Rate limit reached for requests per minute: "
            + ", ".join(_allows(s, s.rpm, "requests") for s in hit)
            + f". Retry in {wait} s.",
            "rate_limit_requests",
            headers={"retry-after": str(wait), **headers},
            level=level,
        )
    if outcome.verdict == "tokens":
        wait = seconds_until(outcome.ms_left)
        return GatewayError(
            429,
            "Rate limit reached for tokens per minute: "
            + ", ".join(
                f"{_allows(s, s.tpm, 'tokens').removesuffix(' per minute')}, {outcome.used[i]} are used in this window"
                if s.kind in ("tenant", "key")
                else f"{_allows(s, s.tpm, 'tokens')}, {outcome.used[i]} are used in this window"
                for i, s in zip(outcome.hit, hit, strict=True)
            )
            + f", and this request may use up to {tokens}. Retry in {wait} s.",
            "rate_limit_tokens",
            headers={"retry-after": str(wait), **headers},
            level=level,
        )
    if outcome.verdict == "concurrency":
        return GatewayError(
            429,
            "Too many concurrent requests: "
            + ", ".join(
                f"end user limit: {s.concurrency} in flight"
                if s.kind == "end_user"
                else f'project "{s.name}" limit: {s.concurrency} in flight'
                if s.kind == "project"
                else f"{_who(s)} allows {s.concurrency} in flight"
                for s in hit
            )
            + ". Retry when one has finished.",
            "concurrency_limit",
            headers={"retry-after": "1", **headers},
            level=level,
        )
    raise AssertionError(f"unknown verdict {outcome.verdict!r}")


def _budget_name(budget: _Budget) -> str:
    match budget.kind, budget.period:
        case "tenant", _:
            return "this tenant's monthly budget"
        case "key", "month":
            return "this API key's monthly budget"
        case "key", "day":
            return "this API key's daily budget"
        case "project", period:
            return f'project "{budget.name}" {period}ly budget'
    return f"end user {'daily' if budget.period == 'day' else 'monthly'} budget"


def _budget_exhausted(outcome: Outcome, *, budgets: list[_Budget], worst_case_cost: Decimal | None) -> GatewayError:
    """The 402 of a budget refusal. It names only the budgets that refused, and says nothing of
    the tenant's other keys, projects or end users: a caller learns the budgets of its own
    levels that refused, each with its level and name."""
    refusing = [(j, budgets[j]) for j in outcome.hit]
    which = " and ".join(f"{_budget_name(b)} of {b.amount} USD" for _, b in refusing)
    verb = "are" if len(refusing) > 1 else "is"
    left = min(max(Decimal(0), b.amount - from_units(outcome.spend[j])) for j, b in refusing)
    detail = (
        f" This request may cost up to {worst_case_cost.normalize():f} USD; {left.normalize():f} USD remain."
        if worst_case_cost is not None and left > 0
        else ""
    )
    wait = "tomorrow (00:00 UTC)" if all(b.period == "day" for _, b in refusing) else "next month"
    return GatewayError(
        402,
        f"{which[0].upper()}{which[1:]} {verb} exhausted.{detail} Raise the budget or wait for {wait}.",
        "budget_exhausted",
        level=refusing[0][1].kind,
    )


# --- Budget initialisation, once per counter and process at a time ---

_initialising: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future]]" = (
    weakref.WeakKeyDictionary()
)


async def initialise(current, budget: BudgetKeys, spend: Callable[[], Awaitable[Decimal]]) -> None:
    """Load a period's spend from the database into a missing counter. Concurrent admissions
    of this process share one query; another process may race us, and SET NX keeps the first."""
    pending = _initialising.setdefault(asyncio.get_running_loop(), {})
    future = pending.get(budget.spend)
    if future is None:

        async def load() -> None:
            try:
                await current.initialise(budget, to_units(await spend()))
            finally:
                pending.pop(budget.spend, None)

        future = pending[budget.spend] = asyncio.ensure_future(load())
    await asyncio.shield(future)
