"""Where the limiter's "now" comes from.

Windows, the concurrency horizon and the age of budget holds are all measured in milliseconds
since the epoch. In production the Redis store asks Redis' TIME inside each script, so that
every gateway process reads one clock; the in-process store reads this machine's. Tests inject
a `ManualClock` instead (`gateway.limits.use_clock`) and move it forward rather than sleep.
"""

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """This machine's wall clock."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class ManualClock:
    """A clock that moves only when told to: windows can be crossed without waiting."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._lock = threading.Lock()
        self._now = int(time.time() * 1000) if start_ms is None else start_ms

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0, *, ms: int = 0) -> int:
        with self._lock:
            self._now += int(round(seconds * 1000)) + ms
            return self._now

    def set(self, ms: int) -> None:
        with self._lock:
            self._now = ms


SYSTEM_CLOCK = SystemClock()
