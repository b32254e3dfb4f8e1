"""The response cache (docs/design.md#the-hot-path, step 3): an identical request of the same tenant, within the
tenant's `response_cache_seconds`, is answered without calling the provider.

- Identical means the same wire format, the same catalog model (an alias and its target are the
  same model) and the same body once the tenant's profile was applied (default parameters,
  max_tokens ceiling), compared as canonical JSON. The tenant's id is part of the key, so an
  entry is never visible to another tenant.
- Only non-streaming answers whose usage the provider reported are stored, so a hit knows
  exactly the tokens it saved: its usage record carries them with `cache_hit` set, cost 0 and
  the price row in force, from which the saving is computed (billing never stores it twice).
- A request sent with `Cache-Control: no-cache` is not answered from the cache (its fresh answer
  replaces the entry); `no-store` neither reads nor writes it.
- Entries live in Redis (shared by every gateway process) with the tenant's TTL; without
  REDIS_URL (the demo), in process memory. The cache is an optimisation: when Redis cannot be
  reached the request goes to the provider as if it were a miss.
"""

import hashlib
import logging
import time
from dataclasses import dataclass

import orjson
from django.conf import settings

from billing.pricing import Tokens

from .limits import UNREACHABLE, shared_redis
from .lru import LRU

log = logging.getLogger(__name__)

__all__ = ["Cached", "cache_key", "cache_lookup", "cache_store", "clear_memory"]

# Larger answers are not kept: a cache entry must not cost Redis more than it saves.
MAX_ENTRY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Cached:
    response: dict  # in the client's wire format
    tokens: Tokens  # as the provider reported them for the original request


def cache_key(
    *,
    tenant_id: int,
    ttl: int | None,
    family: str,
    model: str,
    body: dict,
    cache_control: str,
    betas: tuple[str, ...] = (),
) -> str | None:
    """The entry's key, or None when this request neither reads nor writes the cache.

    Betas (`anthropic-beta`) can change the answer, so they are part of the key when there are any.
    """
    if not ttl or body.get("stream") or "no-store" in cache_control:
        return None
    entry = {"family": family, "model": model, "body": {k: v for k, v in body.items() if k != "model"}}
    if betas:
        entry["betas"] = sorted(betas)
    canonical = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
    return f"gw:rc:{tenant_id}:{hashlib.sha256(canonical).hexdigest()}"


def _encode(cached: Cached) -> bytes:
    t = cached.tokens
    tokens = [t.input, t.cached_input, t.cache_write, t.output, t.cache_write_1h]
    return orjson.dumps({"response": cached.response, "tokens": tokens})


def _decode(raw: bytes) -> Cached:
    entry = orjson.loads(raw)
    tokens = entry["tokens"]
    return Cached(
        response=entry["response"],
        tokens=Tokens(
            input=tokens[0],
            cached_input=tokens[1],
            cache_write=tokens[2],
            output=tokens[3],
            cache_write_1h=tokens[4] if len(tokens) > 4 else 0,  # an entry stored before one-hour writes
        ),
    )


class _Memory:
    """Entries in process memory, the least recently used dropped first past
    GATEWAY_RESPONSE_CACHE_MEMORY_SIZE: the demo's single process, without Redis."""

    def __init__(self) -> None:
        self._entries = LRU(lambda: settings.GATEWAY_RESPONSE_CACHE_MEMORY_SIZE)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(key)
            return None
        return entry[1]

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)

    def clear(self) -> None:
        self._entries.clear()


_memory = _Memory()


def clear_memory() -> None:
    _memory.clear()


async def cache_lookup(key: str | None, *, cache_control: str) -> Cached | None:
    if key is None or "no-cache" in cache_control:
        return None
    try:
        raw = await shared_redis().get(key) if settings.REDIS_URL else _memory.get(key)
        return None if raw is None else _decode(raw)
    except UNREACHABLE as exc:
        log.warning("response cache unreachable, answering from the provider: %s", exc)
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("response cache entry %s is unreadable; ignored", key, exc_info=True)
    return None


async def cache_store(key: str | None, cached: Cached, *, ttl: int | None) -> None:
    if key is None or not ttl:
        return
    raw = _encode(cached)
    if len(raw) > MAX_ENTRY_BYTES:
        return
    try:
        if settings.REDIS_URL:
            await shared_redis().set(key, raw, ex=ttl)
        else:
            _memory.set(key, raw, ttl)
    except UNREACHABLE as exc:
        log.warning("response cache unreachable, answer not kept: %s", exc)
