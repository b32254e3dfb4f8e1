"""The Redis scripts' logic on dicts, for one process (no REDIS_URL: the demo).

Each method runs without awaiting, under a lock that also keeps it whole against other threads
(sync_to_async workers, an eager Celery task). Read it side by side with scripts/*.lua: the
contract tests (tests/test_limits.py) hold both stores to the same answers.
"""

import threading

from . import config
from .clock import SYSTEM_CLOCK, Clock
from .keys import Keys
from .store import Ask, Outcome, Peek, Ticket


class MemoryStore:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock: Clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}  # tpm or rpm prefix -> (window, used)
        self._concurrency: dict[str, dict[str, int]] = {}  # key -> {request id: start ms}
        self._spend: dict[str, int] = {}
        self._holds: dict[str, dict[str, tuple[int, int]]] = {}  # holds key -> {request id: (units, start ms)}

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()
            self._concurrency.clear()
            self._spend.clear()
            self._holds.clear()

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def _used(self, prefix: str, window: int) -> int:
        entry = self._windows.get(prefix)
        return entry[1] if entry and entry[0] == window else 0

    async def admit(self, ask: Ask) -> Outcome:
        now = self.clock.now_ms()
        window_ms = config.window_ms()
        window = now // window_ms
        ms_left = (window + 1) * window_ms - now
        minute = now // config.MINUTE_MS
        minute_left = (minute + 1) * config.MINUTE_MS - now
        keys = ask.keys
        with self._lock:
            budgets = [i for i in (0, 1) if ask.thresholds[i] is not None]
            missing = tuple(i for i in budgets if keys.spends[i] not in self._spend)
            if missing:
                return Outcome("init", missing)
            spends = tuple(self._spend[keys.spends[i]] if i in budgets else 0 for i in (0, 1))
            requests = [self._used(keys.rpm[i], minute) if ask.rpm[i] >= 0 else 0 for i in (0, 1)]
            used = [self._used(keys.tpm[i], window) if ask.tpm[i] >= 0 else 0 for i in (0, 1)]

            def outcome(verdict: str, hit: tuple[int, ...]) -> Outcome:
                return Outcome(
                    verdict, hit, window, ms_left, (used[0], used[1]), spends, (requests[0], requests[1]), minute_left
                )

            hit = tuple(i for i in (0, 1) if ask.rpm[i] >= 0 and requests[i] >= ask.rpm[i])
            if hit:
                return outcome("requests", hit)
            hit = tuple(i for i in budgets if spends[i] > ask.thresholds[i])
            if hit:
                return outcome("budget", hit)
            hit = tuple(i for i in (0, 1) if ask.tpm[i] >= 0 and used[i] + ask.tokens > ask.tpm[i])
            if hit:
                return outcome("tokens", hit)
            horizon = now - config.horizon_ms()
            in_flight = [0, 0]
            for i in (0, 1):
                if ask.concurrency[i] >= 0:
                    slots = self._concurrency.setdefault(keys.concurrency[i], {})
                    for request_id in [r for r, started in slots.items() if started < horizon]:
                        del slots[request_id]
                    in_flight[i] = len(slots)
            hit = tuple(i for i in (0, 1) if 0 <= ask.concurrency[i] <= in_flight[i])
            if hit:
                return outcome("concurrency", hit)
            for i in (0, 1):
                if ask.rpm[i] >= 0:
                    requests[i] += 1
                    self._windows[keys.rpm[i]] = (minute, requests[i])
                if ask.tpm[i] >= 0:
                    used[i] += ask.tokens
                    self._windows[keys.tpm[i]] = (window, used[i])
                if ask.concurrency[i] >= 0:
                    self._concurrency[keys.concurrency[i]][ask.request_id] = now
            for i in budgets:
                self._spend[keys.spends[i]] += ask.units
                self._holds.setdefault(keys.holdings[i], {})[ask.request_id] = (ask.units, now)
            return outcome("ok", ())

    async def initialise(self, spend_key: str, units: int) -> None:
        with self._lock:
            self._spend.setdefault(spend_key, units)

    async def settle(self, ticket: Ticket, *, tokens: int, units: int) -> None:
        now = self.clock.now_ms()
        current = now // config.window_ms()
        delta = tokens - ticket.tokens
        keys = ticket.keys
        with self._lock:
            for i in (0, 1):
                if ticket.concurrency[i]:
                    self._concurrency.get(keys.concurrency[i], {}).pop(ticket.request_id, None)
                if ticket.tpm[i] and delta:
                    target = ticket.window if current == ticket.window else (current if delta > 0 else None)
                    if target is not None:
                        self._windows[keys.tpm[i]] = (target, max(0, self._used(keys.tpm[i], target) + delta))
                spend_key = keys.spends[i]
                # A missing counter will be initialised from the database, which is where the cost goes.
                if ticket.budget[i] and spend_key in self._spend:
                    held = self._holds.get(keys.holdings[i], {}).pop(ticket.request_id, (0, 0))[0]
                    self._spend[spend_key] = max(0, self._spend[spend_key] - held + units)

    async def spend(self, spend_key: str) -> int | None:
        with self._lock:
            return self._spend.get(spend_key)

    async def reconcile(self, spend_key: str, holds_key: str, units: int) -> int:
        horizon = self.clock.now_ms() - config.horizon_ms()
        with self._lock:
            holds = self._holds.setdefault(holds_key, {})
            for request_id in [r for r, (_, started) in holds.items() if started < horizon]:
                del holds[request_id]
            self._spend[spend_key] = units + sum(held for held, _ in holds.values())
            return self._spend[spend_key]

    async def peek(self, keys: Keys) -> Peek:
        now = self.clock.now_ms()
        since = now - config.horizon_ms()
        with self._lock:
            slots = self._concurrency.get(keys.concurrency[0], {})
            return Peek(
                tokens=self._used(keys.tpm[0], now // config.window_ms()),
                in_flight=sum(1 for started in slots.values() if started >= since),
                spend=self._spend.get(keys.spend),
                requests=self._used(keys.rpm[0], now // config.MINUTE_MS),
            )

    async def release(self, keys: Keys, request_id: str) -> int:
        freed = 0
        with self._lock:
            for i in (0, 1):
                if self._concurrency.get(keys.concurrency[i], {}).pop(request_id, None) is not None:
                    freed += 1
                hold = self._holds.get(keys.holdings[i], {}).pop(request_id, None)
                if hold is not None:
                    freed += 1
                    if keys.spends[i] in self._spend:
                        self._spend[keys.spends[i]] = max(0, self._spend[keys.spends[i]] - hold[0])
            return freed
