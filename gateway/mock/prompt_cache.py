"""The mock provider's prompt cache (`manage.py mockllm --prompt-cache-seconds N`; off by default).

Real providers cache prompt prefixes per deployment: a prompt that starts like one this deployment
saw recently is billed its cached part at the cached-input price. The mock simulates that per
process, so that a test with two mock processes as two deployments can measure what routing the
same prefix to the same deployment buys (prompt-cache affinity, docs/routing.md).

What it does, for chat completions (OpenAI, Azure) and Messages (Anthropic), after the usage is computed:
- The cacheable prefixes of a request are its system prompt (Anthropic's `system`) followed by its
  first k messages, for every k (so a conversation's next turn finds its previous turn whole), per
  model name. Each is remembered by a digest for `ttl` seconds, refreshed on every use.
- The longest prefix seen by THIS process within its lifetime, if it is at least `MIN_TOKENS`
  tokens (both providers' minimum cacheable prompt), is reported as cached input: OpenAI
  `prompt_tokens_details.cached_tokens` (inside prompt_tokens), Anthropic `cache_read_input_tokens`
  (outside input_tokens). Its tokens: the prefix's messages as the mock bills them (4 per message
  plus their text) plus the system text. The larger of this and `[[mock:cached=N]]` wins, capped
  so that cache reads and writes never exceed the prompt.
- Anthropic's cache is automatic here, like OpenAI's: no `cache_control` breakpoint is needed and
  no cache write is reported for a miss.
At most `CAPACITY` prefixes are remembered (the least recently used go first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from gateway.tokenizer import count_message_tokens, count_tokens, text_of

MIN_TOKENS = 1024
CAPACITY = 100_000


class PromptCache:
    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry

    def served(self, body: dict[str, Any], model: str, encoding: str, usage):
        """`usage` (gateway.mock.server.Usage) with the cache reads this request's prompt earns."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            return usage
        system = body.get("system")
        cached = self.lookup(model, system, messages, encoding=encoding)
        read = min(max(cached, usage.cache_read), usage.prompt_tokens - usage.cache_write)
        return usage if read == usage.cache_read else dataclasses.replace(usage, cache_read=read)

    def lookup(self, model: str, system: object, messages: list[Any], *, encoding: str) -> int:
        """The cached tokens of the longest prefix seen (0 for none, or one under MIN_TOKENS); then
        every prefix of this prompt is remembered (or refreshed)."""
        now = self._clock()
        running = hashlib.blake2b(orjson.dumps([model, system]), digest_size=16)
        prefixes: list[tuple[int, bytes]] = []
        if system:
            prefixes.append((0, running.digest()))
        for k, message in enumerate(messages, start=1):
            running.update(orjson.dumps(message))
            prefixes.append((k, running.digest()))
        longest: int | None = None  # messages in the longest prefix seen (0: the system prompt alone)
        for k, digest in prefixes:  # shortest first
            expiry = self._seen.pop(digest, None)
            if expiry is not None and expiry > now:
                longest = k
            self._seen[digest] = now + self.ttl
        while len(self._seen) > CAPACITY:
            self._seen.popitem(last=False)
        if longest is None:
            return 0
        shared = messages[:longest]
        tokens = count_tokens(text_of(system), encoding=encoding)
        if shared:
            tokens += count_message_tokens(shared, encoding=encoding) - 2  # the reply's priming is not a prefix
        return tokens if tokens >= MIN_TOKENS else 0
