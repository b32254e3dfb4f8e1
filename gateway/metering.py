"""Metering of one request: tokens from the provider's own usage, or a flagged estimate.

DESIGN §8: OpenAI's `prompt_tokens` includes cached tokens; Anthropic's `input_tokens`
excludes cache reads and writes. Both are normalised to billing's `Tokens`, whose `input`
is the whole prompt. A provider-reported count always wins over an estimate, zero included.
"""

import asyncio
import logging

from asgiref.sync import sync_to_async

from billing.pricing import Tokens
from billing.services import Metered, usage_record_create

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
    return Tokens(
        input=_int(usage.get("input_tokens")) + cache_read + cache_write,
        cached_input=cache_read,
        cache_write=cache_write,
        output=_int(usage.get("output_tokens")),
    )


def tokens_from_usage(family: str, usage: dict) -> Tokens:
    return tokens_from_openai(usage) if family == "openai" else tokens_from_anthropic(usage)


def estimate_prompt_tokens(body: dict) -> int:
    """Local estimate of a request's prompt, in either wire format."""
    total = count_message_tokens(body.get("messages") or [])
    system = body.get("system")
    if isinstance(system, str):
        total += count_tokens(system)
    elif isinstance(system, list):
        total += sum(count_tokens(b.get("text", "")) for b in system if isinstance(b, dict))
    return total


def estimate_output_tokens(text: str) -> int:
    return count_tokens(text)


# Writes that must outlive a cancelled request (client gone) are kept here until done.
_pending: set[asyncio.Task] = set()


async def record(metered: Metered) -> None:
    """Commit the usage record. Awaited before the response ends (DESIGN §2 step 6)."""
    await sync_to_async(usage_record_create)(metered=metered)


def record_detached(metered: Metered) -> None:
    """Record from a request being cancelled: the write continues on its own task."""
    task = asyncio.get_running_loop().create_task(_record_logged(metered))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _record_logged(metered: Metered) -> None:
    try:
        await record(metered)
    except Exception:
        log.exception("usage record %s could not be written", metered.request_id)


async def drain_pending() -> None:
    if _pending:
        await asyncio.gather(*_pending, return_exceptions=True)
