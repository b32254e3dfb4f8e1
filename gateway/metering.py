"""Metering of one request: tokens from the provider's own usage, or a flagged estimate.

OpenAI's `prompt_tokens` includes cached tokens; Anthropic's `input_tokens` excludes cache reads and
writes (docs/design.md#wire-facts-billing-depends-on). Both are normalised to billing's `Tokens`, whose `input`
is the whole prompt. Anthropic's `cache_creation` splits the writes by lifetime
(`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`): the one-hour part becomes
`Tokens.cache_write_1h`. A provider-reported count always wins over an estimate, zero included.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from billing.pricing import Tokens
from billing.services import budget_alerts_check, usage_record_kept, usage_upsert_statement
from tenants.models import ApiKey, RequestLog

from . import journal, observability
from .db import (
    DATABASE_UNAVAILABLE,
    DirectBusy,
    db_call,
    db_fetchone_direct,
    direct_available,
    direct_close_all,
    direct_free,
    prep_connection,
)
from .lru import LRU
from .metered import Metered
from .tokenizer import count_message_tokens, count_tokens

log = logging.getLogger(__name__)


def _int(value) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def tokens_from_openai(usage: dict) -> Tokens:
    details = usage.get("prompt_tokens_details") or {}
    prompt = _int(usage.get("prompt_tokens"))
    return Tokens(
        input=prompt,
        cached_input=min(_int(details.get("cached_tokens")), prompt),
        output=_int(usage.get("completion_tokens")),
    )


def tokens_from_anthropic(usage: dict) -> Tokens:
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    lifetimes = usage.get("cache_creation")
    lifetimes = lifetimes if isinstance(lifetimes, dict) else {}
    one_hour = _int(lifetimes.get("ephemeral_1h_input_tokens"))
    if "cache_creation_input_tokens" not in usage and lifetimes:
        cache_write = _int(lifetimes.get("ephemeral_5m_input_tokens")) + one_hour
    return Tokens(
        input=_int(usage.get("input_tokens")) + cache_read + cache_write,
        cached_input=cache_read,
        cache_write=cache_write,
        # Part of the writes: a split that does not add up never bills more one-hour writes than writes.
        cache_write_1h=min(one_hour, cache_write),
        output=_int(usage.get("output_tokens")),
    )


def tokens_from_responses(usage: dict) -> Tokens:
    """The Responses API's usage: `input_tokens` includes `input_tokens_details.cached_tokens` (cache
    reads) and `.cache_write_tokens` (cache writes), and `output_tokens` includes
    `output_tokens_details.reasoning_tokens` (billed as output)."""
    details = usage.get("input_tokens_details") or {}
    prompt = _int(usage.get("input_tokens"))
    cached = min(_int(details.get("cached_tokens")), prompt)
    return Tokens(
        input=prompt,
        cached_input=cached,
        cache_write=min(_int(details.get("cache_write_tokens")), prompt - cached),
        output=_int(usage.get("output_tokens")),
    )


def tokens_from_usage(family: str, usage: dict) -> Tokens:
    return tokens_from_openai(usage) if family == "openai" else tokens_from_anthropic(usage)


def estimate_prompt_tokens(body: dict) -> int:
    """Local estimate of a request's prompt, in any of the three wire formats (a Responses API
    request: its `input` items and `instructions`; an earlier turn held upstream is not counted)."""
    total = count_message_tokens(body.get("messages") or [])
    if "input" in body:
        total += count_message_tokens(responses_messages(body["input"])) + count_tokens(
            body.get("instructions") if isinstance(body.get("instructions"), str) else ""
        )
    system = body.get("system")
    if isinstance(system, str):
        total += count_tokens(system)
    elif isinstance(system, list):
        total += sum(count_tokens(b.get("text", "")) for b in system if isinstance(b, dict))
    return total


def responses_messages(value: object) -> list[dict]:
    """A Responses API `input` as chat-like messages, for counting: a message's text parts, a
    function call's name and arguments, a function call output's text."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "function_call":
            messages.append({"content": f"{item.get('name', '')} {item.get('arguments', '')}"})
        elif kind == "function_call_output":
            messages.append({"content": item.get("output")})  # text_of: a string, or text parts
        elif kind != "reasoning":
            messages.append({"content": item.get("content")})
    return messages


def estimate_output_tokens(text: str) -> int:
    return count_tokens(text)


# Writes that must outlive a cancelled request (client gone) are kept here until done.
_pending: set[asyncio.Task] = set()
# key id -> when this process last wrote its last_used_at (monotonic seconds). Bounded like the
# key cache (gateway/lru.py): a key dropped here only has its last_used_at written once more.
_key_touched = LRU(lambda: settings.GATEWAY_KEY_CACHE_SIZE)
KEY_TOUCH_INTERVAL = 60.0
# tenant id -> when this process last checked its budget alerts (monotonic seconds); bounded
# like the tenant cache: a tenant dropped here is only checked once more.
_budget_checked = LRU(lambda: settings.GATEWAY_TENANT_CACHE_SIZE)
BUDGET_CHECK_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class LogEntry:
    """Prompt and response of a request, for tenants that keep request logs."""

    request: dict
    response: dict | None


def _write(metered: Metered, log_entry: LogEntry | None, touch_key: bool, check_budget: bool) -> Decimal:
    cost = journal.usage_record_write(metered=metered).cost
    if log_entry is not None:
        # Separately, after the usage record: a log that cannot be stored must never cost a record.
        try:
            with transaction.atomic():
                RequestLog.objects.create(
                    tenant_id=metered.tenant_id,
                    request_id=metered.request_id,
                    api_key_id=metered.api_key_id,
                    model=metered.model[:100],
                    endpoint=metered.endpoint,
                    status_code=metered.status_code,
                    request=_without_nul(log_entry.request),
                    response=_without_nul(log_entry.response),
                    created_at=metered.created_at,
                )
        except Exception:
            log.exception("request log %s could not be written", metered.request_id)
    if touch_key:
        # Outside the transaction: a lost race on last_used_at must never cost a usage record.
        ApiKey.objects.filter(id=metered.api_key_id).update(last_used_at=metered.created_at)
    if check_budget:
        try:
            # Exactly once per threshold and month is the database's job (a unique constraint).
            budget_alerts_check(tenant_id=metered.tenant_id, now=metered.created_at)
        except Exception:
            log.exception("budget alerts of tenant %s could not be checked", metered.tenant_id)
    return cost


async def _write_direct(metered: Metered, *args) -> Decimal:
    """`_write` for a record that goes alone (no request log, no key touch, no budget check: most
    requests): the same statement (`journal.usage_record_write`'s upsert) on the event loop's own
    connection, without a worker thread. Every direct connection busy: `_write` through `db_call`."""
    sql, params, cost = usage_upsert_statement(
        metered=metered, replaceable=journal.INTERRUPTED, connection=prep_connection()
    )
    try:
        row = await db_fetchone_direct(sql, params)
    except DirectBusy:
        return await db_call(_write, metered, *args)
    if row is not None:
        return cost
    kept = await db_call(usage_record_kept, request_id=metered.request_id, created_at=metered.created_at)
    return kept.cost  # a record already there


def _without_nul(value):
    """PostgreSQL's jsonb refuses U+0000, which JSON allows; the log keeps the rest of the text."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _due_for_budget_check(tenant_id: int, cost_bearing: bool) -> bool:
    """Budget thresholds are checked at most every BUDGET_CHECK_INTERVAL per tenant and process
    (and every 15 minutes by beat), so an alert lags a crossing by seconds, not requests."""
    if not cost_bearing:
        return False
    now = time.monotonic()
    if now - _budget_checked.get(tenant_id, -BUDGET_CHECK_INTERVAL) < BUDGET_CHECK_INTERVAL:
        return False
    _budget_checked[tenant_id] = now
    return True


def _due_for_touch(key_id: int | None) -> bool:
    """last_used_at is written at most once a minute per key and process, not on every request."""
    if key_id is None:
        return False
    now = time.monotonic()
    if now - _key_touched.get(key_id, -KEY_TOUCH_INTERVAL) < KEY_TOUCH_INTERVAL:
        return False
    _key_touched[key_id] = now
    return True


async def record(metered: Metered, log_entry: LogEntry | None = None, *, budgeted: bool = False) -> Decimal:
    """Commit the usage record (and request log) and return its cost. Awaited before the response
    ends (docs/design.md#the-hot-path, step 6). Only `gateway.lifecycle.Owner` calls it, and then settles the limits.
    `budgeted`: the request counts against its tenant's budget, whose alert thresholds it may cross.
    """
    check_budget = _due_for_budget_check(metered.tenant_id, budgeted)
    touch_key = _due_for_touch(metered.api_key_id)
    try:
        if log_entry is None and not touch_key and not check_budget and direct_available() and direct_free():
            cost = await _write_direct(metered, log_entry, touch_key, check_budget)
        else:
            cost = await db_call(_write, metered, log_entry, touch_key, check_budget)
    except DATABASE_UNAVAILABLE:
        # The database is down or hangs: the record waits in the journal (its request log is
        # dropped), and the request ends as if it had been committed (gateway/journal.py).
        cost = await journal.spool(metered=metered)
        if cost is None:
            observability.request_finished(metered, cost=None)
            raise
    except BaseException:
        observability.request_finished(metered, cost=None)  # the request still gets its line, without a cost
        raise
    else:
        if metered.deployment_id is not None:  # a provider was called: there is a trace to close
            journal.trace_done_soon(request_id=metered.request_id)
        if flush := journal.after_commit():
            keep_alive(flush)
    observability.request_finished(metered, cost=cost)
    return cost


def keep_alive(task: asyncio.Future) -> None:
    """Hold a task that no request awaits any more until it is done (`drain_pending` waits for it)."""
    _pending.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future) -> None:
    _pending.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: whoever needed the error has handled or logged it


async def drain_pending() -> None:
    if _pending:
        await asyncio.gather(*_pending, return_exceptions=True)
    await journal.flush()
    direct_close_all()
