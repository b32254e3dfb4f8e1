"""The Redis scripts' logic on dicts, for one process (no REDIS_URL: the demo).

Each method runs without awaiting, under a lock that also keeps it whole against other threads
(sync_to_async workers, an eager Celery task). Read it side by side with scripts/*.lua: the
contract tests (tests/test_limits.py) hold both stores to the same answers.
"""

import threading

from . import config
from .clock import SYSTEM_CLOCK, Clock
from .keys import BudgetKeys, ScopeKeys
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
        scopes, budgets = ask.scopes, ask.budgets
        with self._lock:
            missing = tuple(j for j, budget in enumerate(budgets) if budget.keys.spend not in self._spend)
            if missing:
                return Outcome("init", missing)
            spends = tuple(self._spend[budget.keys.spend] for budget in budgets)
            requests = [self._used(s.keys.rpm, minute) if s.rpm >= 0 else 0 for s in scopes]
            used = [self._used(s.keys.tpm, window) if s.tpm >= 0 else 0 for s in scopes]

            def outcome(verdict: str, hit: tuple[int, ...]) -> Outcome:
                return Outcome(verdict, hit, window, ms_left, tuple(used), spends, tuple(requests), minute_left)

            hit = tuple(i for i, s in enumerate(scopes) if s.rpm >= 0 and requests[i] >= s.rpm)
            if hit:
                return outcome("requests", hit)
            hit = tuple(j for j, budget in enumerate(budgets) if spends[j] > budget.threshold)
            if hit:
                return outcome("budget", hit)
            hit = tuple(i for i, s in enumerate(scopes) if s.tpm >= 0 and used[i] + ask.tokens > s.tpm)
            if hit:
                return outcome("tokens", hit)
            horizon = now - config.horizon_ms()
            in_flight = [0] * len(scopes)
            for i, s in enumerate(scopes):
                if s.concurrency >= 0:
                    slots = self._concurrency.setdefault(s.keys.concurrency, {})
                    for request_id in [r for r, started in slots.items() if started < horizon]:
                        del slots[request_id]
                    in_flight[i] = len(slots)
            hit = tuple(i for i, s in enumerate(scopes) if 0 <= s.concurrency <= in_flight[i])
            if hit:
                return outcome("concurrency", hit)
            for i, s in enumerate(scopes):
                if s.rpm >= 0:
                    requests[i] += 1
                    self._windows[s.keys.rpm] = (minute, requests[i])
                if s.tpm >= 0:
                    used[i] += ask.tokens
                    self._windows[s.keys.tpm] = (window, used[i])
                if s.concurrency >= 0:
                    self._concurrency[s.keys.concurrency][ask.request_id] = now
            for budget in budgets:
                self._spend[budget.keys.spend] += ask.units
                self._holds.setdefault(budget.keys.holds, {})[ask.request_id] = (ask.units, now)
            return outcome("ok", ())

    async def initialise(self, budget: BudgetKeys, units: int) -> None:
        with self._lock:
            self._spend.setdefault(budget.spend, units)

    async def settle(self, ticket: Ticket, *, tokens: int, units: int) -> None:
        now = self.clock.now_ms()
        current = now // config.window_ms()
        delta = tokens - ticket.tokens
        with self._lock:
            for held in ticket.scopes:
                keys = held.keys
                if held.concurrency:
                    self._concurrency.get(keys.concurrency, {}).pop(ticket.request_id, None)
                if held.tpm and delta:
                    target = ticket.window if current == ticket.window else (current if delta > 0 else None)
                    if target is not None:
                        self._windows[keys.tpm] = (target, max(0, self._used(keys.tpm, target) + delta))
            for budget in ticket.budgets:
                # A missing counter will be initialised from the database, which is where the cost goes.
                if budget.spend in self._spend:
                    held_units = self._holds.get(budget.holds, {}).pop(ticket.request_id, (0, 0))[0]
                    self._spend[budget.spend] = max(0, self._spend[budget.spend] - held_units + units)

    async def spend(self, spend_key: str) -> int | None:
        with self._lock:
            return self._spend.get(spend_key)

    async def reconcile(self, budget: BudgetKeys, units: int) -> int:
        horizon = self.clock.now_ms() - config.horizon_ms()
        with self._lock:
            holds = self._holds.setdefault(budget.holds, {})
            for request_id in [r for r, (_, started) in holds.items() if started < horizon]:
                del holds[request_id]
            self._spend[budget.spend] = units + sum(held for held, _ in holds.values())
            return self._spend[budget.spend]

    async def peek(self, scope: ScopeKeys, budget: BudgetKeys) -> Peek:
        now = self.clock.now_ms()
        since = now - config.horizon_ms()
        with self._lock:
            slots = self._concurrency.get(scope.concurrency, {})
            return Peek(
                tokens=self._used(scope.tpm, now // config.window_ms()),
                in_flight=sum(1 for started in slots.values() if started >= since),
                spend=self._spend.get(budget.spend),
                requests=self._used(scope.rpm, now // config.MINUTE_MS),
            )

    async def release(self, concurrency: list[str], budgets: list[BudgetKeys], request_id: str) -> int:
        freed = 0
        with self._lock:
            for name in concurrency:
                if self._concurrency.get(name, {}).pop(request_id, None) is not None:
                    freed += 1
            for budget in budgets:
                hold = self._holds.get(budget.holds, {}).pop(request_id, None)
                if hold is not None:
                    freed += 1
                    if budget.spend in self._spend:
                        self._spend[budget.spend] = max(0, self._spend[budget.spend] - hold[0])
            return freed
