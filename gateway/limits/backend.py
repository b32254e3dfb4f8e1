"""Which store serves this process, and the clock it reads."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from django.utils import timezone

from . import config
from .clock import Clock
from .memory_store import MemoryStore
from .redis_store import RedisStore

redis_store = RedisStore()
memory_store = MemoryStore()


def store() -> RedisStore | MemoryStore:
    """Redis when REDIS_URL is set (every process shares it), else this process's memory."""
    return redis_store if config.redis_url() else memory_store


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Both stores read `clock` instead of Redis' TIME and this machine's clock (tests: move a
    ManualClock forward instead of sleeping). Process-wide until the block ends."""
    before = redis_store.clock, memory_store.clock
    redis_store.clock = memory_store.clock = clock
    try:
        yield clock
    finally:
        redis_store.clock, memory_store.clock = before


def month(current: RedisStore | MemoryStore | None = None) -> str:
    """The UTC month of a budget counter's name: the injected clock's when there is one."""
    now = (current or store()).now_ms()
    if now is None:
        return timezone.now().strftime("%Y-%m")
    return datetime.fromtimestamp(now / 1000, tz=UTC).strftime("%Y-%m")
