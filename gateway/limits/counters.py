"""The counters seen from outside a request: budget reconcile, spend, the admin's live look,
and freeing what a request id still holds (the request reconciler, for dead processes)."""

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from . import config
from .admission import MonthToDate, initialise
from .backend import month, store
from .keys import BudgetKeys, budget_keys, from_units, scope_keys, to_units
from .redis_store import aclose

T = TypeVar("T")


async def _spend_of(budget: BudgetKeys, month_to_date: MonthToDate | None) -> Decimal | None:
    current = store()
    units = await current.spend(budget.spend)
    if units is None and month_to_date is not None:
        await initialise(current, budget, month_to_date)
        units = await current.spend(budget.spend)
    return None if units is None else from_units(units)


async def spend_this_month(tenant_id: int, *, month_to_date: MonthToDate | None = None) -> Decimal | None:
    """Month-to-date spend of a tenant, reservations of requests in flight included.

    The counter exists once a request of a tenant with a budget has been admitted this month;
    without it, None, unless `month_to_date` is given to initialise it from the database.
    Raises redis' ConnectionError/TimeoutError when Redis is unreachable.
    """
    return await _spend_of(budget_keys(tenant_id, "tenant", None, month()), month_to_date)


async def key_spend_this_month(
    tenant_id: int, key_id: int, *, month_to_date: MonthToDate | None = None
) -> Decimal | None:
    """`spend_this_month()` of one API key's own budget counter (its usage records only)."""
    return await _spend_of(budget_keys(tenant_id, "key", key_id, month()), month_to_date)


async def reconcile(tenant_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """Reset a tenant's month-to-date counter to the database's total plus the reservations of
    requests in flight; returns the new value. Reservations older than the concurrency horizon
    are dropped: their process died, or their settlement will add the full actual cost.

    Tolerated race: a request whose usage record is committed (so in `db_total`) but not yet
    settled is counted twice, its cost and its reservation, until the next reconcile. The gap
    is one await in the proxy, and the error refuses early rather than overspending. A request
    recorded after `db_total` was summed but settled before this call is missed until the next
    reconcile, in the other direction; run the sum just before calling.
    """
    keys = budget_keys(tenant_id, "tenant", None, month or _month())
    return from_units(await store().reconcile(keys, max(0, to_units(db_total))))


async def reconcile_key(tenant_id: int, key_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """`reconcile()` of one API key's budget counter, `db_total` being the cost of its own usage
    records this month. The same races are tolerated, for the same reasons."""
    return await reconcile_level(tenant_id, "key", key_id, db_total, period=month or _month())


async def reconcile_level(
    tenant_id: int, level: str, ident: int | str | None, db_total: Decimal, *, period: str
) -> Decimal:
    """`reconcile()` of any level's budget counter of `period` (YYYY-MM or YYYY-MM-DD):
    a project's (`ident` its id), a key's, an end user's (its recorded id)."""
    keys = budget_keys(tenant_id, level, ident, period)
    return from_units(await store().reconcile(keys, max(0, to_units(db_total))))


def _month() -> str:
    return month()


def run_sync(coroutine: Awaitable[T]) -> T:
    """Run on a loop of its own and close that loop's Redis client (Celery tasks, the admin)."""

    async def run() -> T:
        try:
            return await coroutine
        finally:
            await aclose()

    return asyncio.run(run())


def reconcile_sync(tenant_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """`reconcile()` for synchronous code (a Celery task): runs on its own event loop."""
    return run_sync(reconcile(tenant_id, db_total, month=month))


def reconcile_key_sync(tenant_id: int, key_id: int, db_total: Decimal, *, month: str | None = None) -> Decimal:
    """`reconcile_key()` for synchronous code (a Celery task): runs on its own event loop."""
    return run_sync(reconcile_key(tenant_id, key_id, db_total, month=month))


def reconcile_level_sync(
    tenant_id: int, level: str, ident: int | str | None, db_total: Decimal, *, period: str
) -> Decimal:
    """`reconcile_level()` for synchronous code (a Celery task): runs on its own event loop."""
    return run_sync(reconcile_level(tenant_id, level, ident, db_total, period=period))


async def release_request(
    *,
    tenant_id: int,
    key_id: int,
    request_id: str,
    month: str,
    day: str | None = None,
    project_id: int | None = None,
    end_user: str | None = None,
) -> int:
    """Free what a request id still holds: its concurrency slots (tenant's, key's, project's, end
    user's) and its budget holds on their counters of `month` (YYYY-MM) and `day` (YYYY-MM-DD,
    the daily budgets of the key and the end user), the held units given back. For the request
    reconciler, when the process that admitted the request died before settling it. Idempotent,
    and safe when nothing is held (or the slot already expired). Its tokens-per-minute
    reservation is left to expire with its window. Returns how many slots and holds were freed.
    Raises redis' ConnectionError/TimeoutError when Redis is unreachable, so that the caller
    can retry."""
    levels: list[tuple[str, int | str | None]] = [("tenant", None), ("key", key_id)]
    if project_id is not None:
        levels.append(("project", project_id))
    if end_user:
        levels.append(("end_user", end_user))
    concurrency = [scope_keys(tenant_id, level, ident).concurrency for level, ident in levels]
    budgets = [budget_keys(tenant_id, level, ident, month) for level, ident in levels]
    if day:
        budgets.extend(
            budget_keys(tenant_id, level, ident, day) for level, ident in levels if level in ("key", "end_user")
        )
    return await store().release(concurrency, budgets, request_id)


def release_request_sync(
    *,
    tenant_id: int,
    key_id: int,
    request_id: str,
    month: str,
    day: str | None = None,
    project_id: int | None = None,
    end_user: str | None = None,
) -> int:
    """`release_request()` for synchronous code: runs on its own event loop."""
    return run_sync(
        release_request(
            tenant_id=tenant_id,
            key_id=key_id,
            request_id=request_id,
            month=month,
            day=day,
            project_id=project_id,
            end_user=end_user,
        )
    )


# --- A read-only look at a tenant's counters, for the staff admin ---


@dataclass(frozen=True, slots=True)
class LiveUsage:
    """What the limits store holds for a tenant now. Counted only for the limits the tenant has:
    tokens when it has a tokens/min limit, requests in flight when it has a concurrency limit,
    requests this minute when it has a requests/min limit, the spend counter once a request with
    a budget was admitted this month (None before)."""

    tokens_this_window: int
    window_seconds: int
    in_flight: int
    month_spend: Decimal | None
    requests_this_minute: int = 0


async def live_usage(tenant_id: int) -> LiveUsage:
    """Read, never write, in one round trip: the current tokens window, requests in flight, the
    requests of the current minute, the month's spend counter (reservations included).
    Raises redis' ConnectionError/TimeoutError when Redis is unreachable."""
    peek = await store().peek(scope_keys(tenant_id, "tenant"), budget_keys(tenant_id, "tenant", None, month()))
    return LiveUsage(
        tokens_this_window=peek.tokens,
        window_seconds=config.window_ms() // 1000,
        in_flight=peek.in_flight,
        month_spend=None if peek.spend is None else from_units(peek.spend),
        requests_this_minute=peek.requests,
    )


def live_usage_sync(tenant_id: int) -> LiveUsage:
    """`live_usage()` for synchronous code (the admin): in process without Redis, else its own loop."""
    if not config.redis_url():
        return asyncio.run(live_usage(tenant_id))
    return run_sync(live_usage(tenant_id))
