"""The request journal: a write-ahead trace of every upstream call, and a spool of usage records
that the database could not take (issue 10, README "Operations", docs/limits.md).

Why: a usage record is written when a request ends. A process killed in between (kill -9, an
OOM, a node lost) left nothing from which anyone could learn that the provider was called, and
billed us; a PostgreSQL outage lost the records of requests that were served meanwhile.

- Trace. Just before the provider is called, `trace_open()` writes what is known of the request
  (tenant, key, catalog model, endpoint, deployment, price row, start, streamed, the prompt
  estimate) in Redis: one Lua script, scored by Redis' own clock. The proxy sends it ahead
  (`_TraceWriter`: the bytes are in the kernel before the provider is called, Redis' reply is
  awaited by `trace_confirmed()` before the usage record is written), so the request does not
  wait a round trip for it. The usage record's commit removes it (`trace_done_soon()`). A trace
  that outlives its request is the mark of a request whose process died.
- Spool. When the usage record cannot be written because the database is unreachable or does not
  answer in time (gateway/db.py `DATABASE_UNAVAILABLE`), `spool()` keeps the whole record, cost
  computed as the database write would have, and removes its trace, atomically. The request ends
  as if the record had been committed: the client gets its answer, its limits are settled.
- Reconciler (`reconcile_requests()`; Celery beat every GATEWAY_RECONCILE_INTERVAL_SECONDS, and
  `manage.py reconcile_requests [--older-than SECONDS]`): writes every spooled record, then turns
  every trace older than GATEWAY_RECONCILE_AFTER_SECONDS into a usage record flagged `interrupted`
  (status 502, `estimated`, the prompt estimate as input tokens and 0 output tokens, its
  deployment, at the price row of its time) and gives back its concurrency slots and budget
  holds (`gateway.limits.release_request`). A gateway process also writes its own spooled
  records as soon as a usage record of its commits again.

Exactly once: a usage record's request id is unique, and every write here is an idempotent
insert (a replay of a record whose first write did commit after all, as a write that outlived
its timeout may, finds it and stops). A request's own record replaces an `interrupted` one that
the reconciler wrote while it was still running. Entries are claimed atomically: a claim moves
an entry's score past now (a lease of CLAIM_LEASE_SECONDS), so two reconcilers (two beat workers,
a command while beat runs) never take the same one; one that dies mid-way leaves its claims to
come back when the lease ends.

Without REDIS_URL (the demo) the journal is a dict in process memory: it survives a database
outage but not the process, and `manage.py reconcile_requests`, a process of its own, sees none
of it. It is not crash-proof.
"""

import asyncio
import collections
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import orjson
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.models import ModelPrice
from billing.pricing import Price, Tier, Tokens
from billing.services import RecordedUsage, usage_cost, usage_record_upsert

from .db import DATABASE_UNAVAILABLE, db_call
from .limits import UNREACHABLE, aclose, release_request, shared_redis
from .limits.config import redis_timeout
from .limits.redis_store import cluster, dedicated_connection, forget_dedicated
from .metered import Metered

if TYPE_CHECKING:
    from .lifecycle import Call

log = logging.getLogger(__name__)

__all__ = [
    "INTERRUPTED",
    "ReconcileResult",
    "after_commit",
    "reconcile_requests",
    "reconcile_requests_sync",
    "spool",
    "flush",
    "trace_done",
    "trace_confirmed",
    "trace_done_soon",
    "trace_open",
    "usage_record_write",
]

INTERRUPTED = "interrupted"
INTERRUPTED_STATUS = 502  # the gateway broke off: the client saw its connection cut
# A claimed entry comes back to the reconcilers after this long if its claimer did not finish it.
CLAIM_LEASE_SECONDS = 60.0
BATCH = 200

# One hash tag for all four: the spool's script moves an entry from the traces to the spool, so
# under Redis Cluster they must share a slot (docs/redis.md#hash-tags).
_TRACES = ("gw:{journal}:traces", "gw:{journal}:traces:data")  # ZSET id -> eligible ms, HASH id -> JSON
_SPOOL = ("gw:{journal}:spool", "gw:{journal}:spool:data")

_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: traces zset, traces hash. ARGV: id, data, id, data, ... (a group commit: see _GroupCommit)
_OPEN = (
    _LUA_NOW
    + """
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""
)
# KEYS: zset, hash. ARGV: ids
_DONE = """
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return 1
"""
# KEYS: spool zset, spool hash, traces zset, traces hash. ARGV: id, data
_SPOOL_WRITE = (
    _LUA_NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""
)
# KEYS: zset, hash. ARGV: age ms, lease ms, limit. Returns id, data, id, data...
_CLAIM = (
    _LUA_NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local data = redis.call('HGET', KEYS[2], id)
  if data then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, data)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""
)


# KEYS: zset. ARGV: ids. Due again at once (score 0), if still there.
_UNCLAIM = """
for _, id in ipairs(ARGV) do redis.call('ZADD', KEYS[1], 'XX', 0, id) end
return 1
"""


class _GroupCommit:
    """The trace writes of every request that reaches the journal in the same turn of the event
    loop go to Redis together: one script call for the lot, each caller still waiting for its own
    write to be acknowledged (a trace is written ahead of the provider call, never after it).
    At 50 requests in flight this makes the trace cost a fraction of a round trip per request
    instead of two; alone, a request pays one turn of the loop (microseconds)."""

    MAX_BATCH = 500  # arguments of one script call stay far below Lua's unpack limits

    def __init__(self, send: Callable[[list], Awaitable[object]]) -> None:
        self._send = send
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._scheduled = False

    async def submit(self, args: list) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), self.MAX_BATCH):
            _hold(asyncio.ensure_future(self._commit(batch[start : start + self.MAX_BATCH])))

    async def _commit(self, batch: list[tuple[list, asyncio.Future]]) -> None:
        try:
            await self._send([arg for args, _ in batch for arg in args])
        except BaseException as exc:  # every waiter learns of the failure (UNREACHABLE: its pause)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in batch:
                if not future.done():  # a waiter cancelled meanwhile (its client left)
                    future.set_result(None)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


# `EVAL _OPEN 2 <traces zset> <traces hash>` in RESP, the part of every trace write that never
# changes (redis-py's `pack_command` encodes the script again each time).
_EVAL_OPEN_HEAD = b"".join(_bulk(part.encode()) for part in ("EVAL", _OPEN, str(len(_TRACES)), *_TRACES))


def _eval_open(args: list) -> bytes:
    """The RESP command writing the traces `args` (request id, data, ...: str or bytes)."""
    parts = [b"*%d\r\n" % (3 + len(_TRACES) + len(args)), _EVAL_OPEN_HEAD]
    parts.extend(_bulk(arg.encode() if isinstance(arg, str) else arg) for arg in args)
    return b"".join(parts)


def _reply(line: bytes) -> int | ResponseError:
    """One reply of the trace connection, as RESP puts it on one line: the script's integer, or
    its error (which fails this call only). Anything else means the connection is not ours to
    read any more."""
    if line[:1] == b":" and line.endswith(b"\r\n"):
        return int(line[1:-2])
    if line[:1] == b"-" and line.startswith(b"-READONLY"):
        # A primary demoted to replica by a Sentinel failover: connect again (to the new one).
        raise RedisConnectionError("the journal's trace connection reached a replica")
    if line[:1] == b"-":
        return ResponseError(line[1:].rstrip(b"\r\n").decode(errors="replace"))
    if not line:
        raise RedisConnectionError("the journal's trace connection was closed by the server")
    raise RedisConnectionError(f"unexpected reply on the journal's trace connection: {line[:40]!r}")


class _TraceWriter:
    """Trace writes on a connection of their own, sent ahead of the provider call and confirmed
    before the request ends (one per event loop and Redis client).

    A trace is written at once when no earlier write awaits its reply; otherwise the traces of
    every request that reaches the journal in the same turn of the event loop go in one script
    call (as `_GroupCommit` does). `send()` returns once that call's bytes are in
    the kernel's send buffer (TCP_NODELAY: on their way to Redis), with a future for Redis'
    reply; the request calls its provider meanwhile and awaits the reply before its usage record
    is written. Redis executes a connection's commands in order and the kernel delivers what
    was sent even if this process dies right after, so a crash from the provider call on still
    leaves the trace; a write that stayed in the process (a full socket buffer) is waited for.
    What it saves is the wait, and redis-py's per-command machinery (a pool checkout, a task
    for the send's timeout), about a Redis round trip of CPU per request.
    """

    def __init__(self, client, connection) -> None:
        self.client = client
        self._connection = connection
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._scheduled = False
        self._unanswered: collections.deque[asyncio.Future] = collections.deque()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.broken = False

    @property
    def usable(self) -> bool:
        """Not broken, and not closed under us: a write to a closing transport would be dropped, and
        one to a connection the server closed (an idle timeout, CLIENT KILL, a restart) lost."""
        writer, reader = self._connection._writer, self._connection._reader
        return not self.broken and writer is not None and not writer.transport.is_closing() and not reader.at_eof()

    async def send(self, args: list) -> tuple[asyncio.Future, bool]:
        """(the reply's future, whether the bytes left the process).

        With no earlier write awaiting its reply (requests one at a time) the trace is written at
        once: there is no batch to wait for, and a turn of the loop (two wake-ups) is saved. With
        one outstanding, the traces of this turn of the loop are gathered and written together
        (as Nagle's algorithm does): under load a batch still takes one script call."""
        loop = asyncio.get_running_loop()
        sent = loop.create_future()
        self._pending.append((args, sent))
        if not self._scheduled:
            if self._unanswered:
                self._scheduled = True
                loop.call_soon(self._flush)
            else:
                self._flush()
        return await sent

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(batch), _GroupCommit.MAX_BATCH):
            part = batch[start : start + _GroupCommit.MAX_BATCH]
            reply = loop.create_future()
            try:
                if not self.usable:
                    raise RedisConnectionError("the journal's trace connection is closed")
                args = [arg for args, _ in part for arg in args]
                writer = self._connection._writer  # redis-py's own send awaits a task per command
                writer.write(_eval_open(args))
                left = writer.transport.get_write_buffer_size() == 0
            except BaseException as exc:
                self._break(exc)
                for _, sent in part:
                    if not sent.done():
                        sent.set_exception(exc)
                continue
            self._unanswered.append(reply)
            for _, sent in part:
                if not sent.done():
                    sent.set_result((reply, left))

    async def _read(self) -> None:
        try:
            while True:
                # Always reading: a reply comes only for a write, and a connection the server
                # closed is seen at once (an empty line), not by the next request's write.
                answer = _reply(await self._connection._reader.readline())
                if not self._unanswered:
                    raise RedisConnectionError("a reply that no trace write asked for on the journal's connection")
                reply = self._unanswered.popleft()
                if reply.done():
                    continue
                if isinstance(answer, BaseException):
                    reply.set_exception(answer)
                else:
                    reply.set_result(answer)
        except asyncio.CancelledError:
            # The loop is closing (or the connection was given up): `limits.aclose()` closes it.
            self._break(RedisConnectionError("the journal's trace connection closed"), disconnect=False)
            raise
        except BaseException as exc:
            self._break(exc)

    async def answer(self, reply: asyncio.Future) -> None:
        """Wait for a script call's reply (shared by the batch: shielded), within the Redis
        client's timeout; a Redis that does not answer in time gives up the connection."""
        if reply.done():
            reply.result()
            return
        try:
            async with asyncio.timeout(redis_timeout()):
                await asyncio.shield(reply)
        except TimeoutError:
            error = RedisTimeoutError("the journal's trace write was not acknowledged in time")
            self._break(error)
            raise error from None

    def _break(self, exc: BaseException, *, disconnect: bool = True) -> None:
        """The connection failed: every write without a reply fails with it, the next request
        connects again."""
        if self.broken:
            return
        self.broken = True
        error = exc if isinstance(exc, Exception) else RedisConnectionError("the journal's trace connection closed")
        while self._unanswered:
            reply = self._unanswered.popleft()
            if not reply.done():
                reply.set_exception(error)
                reply.exception()  # whoever awaits it sees it; nobody may
        if disconnect:
            forget_dedicated(self._connection)
            _hold(asyncio.ensure_future(self._connection.disconnect(nowait=True)))
        if not self._reader.done() and asyncio.current_task() is not self._reader:
            self._reader.cancel()


_commits: set[asyncio.Future] = set()


def _hold(task: asyncio.Future) -> None:
    _commits.add(task)
    task.add_done_callback(_commits.discard)


class _RedisJournal:
    """The journal in Redis, shared by every gateway process and the reconcilers."""

    _scripts: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple]" = weakref.WeakKeyDictionary()
    _groups: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple]" = weakref.WeakKeyDictionary()
    _writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TraceWriter]" = weakref.WeakKeyDictionary()
    _connecting: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future]" = weakref.WeakKeyDictionary()

    def _bound(self):
        client = shared_redis()
        loop = asyncio.get_running_loop()
        entry = self._scripts.get(loop)
        if entry is None or entry[0] is not client:
            entry = self._scripts[loop] = (
                client,
                *(client.register_script(s) for s in (_OPEN, _DONE, _SPOOL_WRITE, _CLAIM, _UNCLAIM)),
            )
        return entry

    def _group(self) -> tuple[_GroupCommit, _GroupCommit]:
        """This loop's group commits of trace opens and trace dones (bound to its Redis client)."""
        bound = self._bound()
        loop = asyncio.get_running_loop()
        entry = self._groups.get(loop)
        if entry is None or entry[0] is not bound:
            opens = _GroupCommit(lambda args: bound[1](keys=list(_TRACES), args=args))
            dones = _GroupCommit(lambda args: bound[2](keys=list(_TRACES), args=args))
            entry = self._groups[loop] = (bound, opens, dones)
        return entry[1], entry[2]

    async def _writer(self) -> _TraceWriter:
        loop = asyncio.get_running_loop()
        writer = self._writers.get(loop)
        if writer is not None and writer.usable and writer.client is shared_redis():
            return writer
        # Requests that find no connection wait for the same one.
        connecting = self._connecting.get(loop)
        if connecting is None:
            connecting = self._connecting[loop] = asyncio.ensure_future(self._connect(loop))
            connecting.add_done_callback(lambda _: self._connecting.pop(loop, None))
        return await asyncio.shield(connecting)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _TraceWriter:
        old = self._writers.pop(loop, None)
        if old is not None and not old.broken:
            old._break(RedisConnectionError("the Redis client was replaced"))
        writer = self._writers[loop] = _TraceWriter(*await dedicated_connection())
        return writer

    async def send(self, request_id: str, data: bytes) -> Callable[[], Awaitable[None]] | None:
        """Send the trace; when its bytes left the process, a function that waits for Redis'
        reply (call it before the request ends); None when the reply was waited for here.
        Under Redis Cluster, whose connections are per node, an ordinary (grouped) script call."""
        if cluster():
            await self._group()[0].submit([request_id, data])
            return None
        writer = await self._writer()
        reply, left = await writer.send([request_id, data])
        if left:
            return functools.partial(writer.answer, reply)
        await writer.answer(reply)
        return None

    async def open(self, request_id: str, data: bytes) -> None:
        answer = await self.send(request_id, data)
        if answer is not None:
            await answer()

    async def done(self, names: tuple[str, str], request_id: str) -> None:
        if names == _TRACES:
            await self._group()[1].submit([request_id])
        else:
            await self._bound()[2](keys=list(names), args=[request_id])

    async def done_many(self, names: tuple[str, str], request_ids: list[str]) -> None:
        for start in range(0, len(request_ids), _GroupCommit.MAX_BATCH):
            await self._bound()[2](keys=list(names), args=request_ids[start : start + _GroupCommit.MAX_BATCH])

    async def spool(self, request_id: str, data: bytes) -> None:
        await self._bound()[3](keys=[*_SPOOL, *_TRACES], args=[request_id, data])

    async def claim(self, names: tuple[str, str], *, age_ms: int, limit: int) -> list[tuple[str, bytes]]:
        reply = await self._bound()[4](keys=list(names), args=[age_ms, int(CLAIM_LEASE_SECONDS * 1000), limit])
        return [(_text(reply[i]), reply[i + 1]) for i in range(0, len(reply), 2)]

    async def unclaim(self, names: tuple[str, str], request_ids: list[str]) -> None:
        if request_ids:
            await self._bound()[5](keys=[names[0]], args=request_ids)


class _MemoryJournal:
    """The same on dicts, for a process without Redis (the demo): lost with the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], dict[str, tuple[float, bytes]]] = {_TRACES: {}, _SPOOL: {}}

    def clear(self) -> None:
        with self._lock:
            for entries in self._entries.values():
                entries.clear()

    async def open(self, request_id: str, data: bytes) -> None:
        with self._lock:
            self._entries[_TRACES][request_id] = (time.time() * 1000, data)

    async def send(self, request_id: str, data: bytes) -> None:
        await self.open(request_id, data)

    async def done(self, names: tuple[str, str], request_id: str) -> None:
        with self._lock:
            self._entries[names].pop(request_id, None)

    async def done_many(self, names: tuple[str, str], request_ids: list[str]) -> None:
        with self._lock:
            for request_id in request_ids:
                self._entries[names].pop(request_id, None)

    async def spool(self, request_id: str, data: bytes) -> None:
        with self._lock:
            self._entries[_SPOOL][request_id] = (time.time() * 1000, data)
            self._entries[_TRACES].pop(request_id, None)

    async def claim(self, names: tuple[str, str], *, age_ms: int, limit: int) -> list[tuple[str, bytes]]:
        now = time.time() * 1000
        with self._lock:
            entries = self._entries[names]
            due = sorted((score, rid) for rid, (score, _) in entries.items() if score <= now - age_ms)[:limit]
            claimed = []
            for _, rid in due:
                data = entries[rid][1]
                entries[rid] = (now + CLAIM_LEASE_SECONDS * 1000, data)
                claimed.append((rid, data))
            return claimed

    async def unclaim(self, names: tuple[str, str], request_ids: list[str]) -> None:
        with self._lock:
            entries = self._entries[names]
            for rid in request_ids:
                if rid in entries:
                    entries[rid] = (0.0, entries[rid][1])


_redis_journal = _RedisJournal()
_memory_journal = _MemoryJournal()


def _journal() -> _RedisJournal | _MemoryJournal:
    return _redis_journal if settings.REDIS_URL else _memory_journal


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- The gateway's side ---

# After the journal failed to answer, the hot path leaves it alone this long: a Redis that hangs
# must not cost every request two timeouts (GATEWAY_LIMITS_REDIS_TIMEOUT each). Traces are then
# missing for about a second per failure, which the crash protection tolerates; spooling still
# tries every time (it is a record's last chance).
PAUSE_AFTER_FAILURE_SECONDS = 1.0
_paused_until = 0.0


def _paused() -> bool:
    return time.monotonic() < _paused_until


def _pause(request_id: str, what: str, exc: BaseException) -> None:
    global _paused_until
    _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
    log.warning("request %s: the journal is unreachable, %s: %s", request_id, what, exc)


def _project_id(caller) -> int | None:
    project = getattr(getattr(caller, "key", None), "project", None)
    return None if project is None else project.id


async def trace_open(*, call: "Call", ahead: bool = False) -> None:
    """Write the request's trace before its provider is called (again, with the new deployment,
    before a fallback). A journal that cannot be reached does not stop the request: it is logged,
    and the request goes on as it did before there was a journal (unprotected against a crash).

    `ahead=True` (the proxy): return once the trace is on its way to Redis (see `_TraceWriter`)
    and leave Redis' acknowledgment in `call.trace_sent`, for `trace_confirmed()` to await
    before the request's usage record is written. Otherwise the acknowledgment is awaited here."""
    if _paused():
        return
    deployment, tenant = call.deployment, call.caller.tenant
    data = orjson.dumps(
        {
            "request_id": call.request_id,
            "tenant_id": tenant.id,
            "tenant_slug": tenant.slug,
            "key_id": call.caller.key_id,
            "model": call.model_name.replace("\x00", ""),
            "requested_model": call.requested_model.replace("\x00", "") if call.fallen_back else "",
            "endpoint": call.endpoint,
            "deployment_id": deployment.id if deployment else None,
            "provider": deployment.provider if deployment else "",
            "upstream_model": deployment.upstream if deployment else "",
            "price_id": call.price.id if call.price else None,
            "created_at": call.created_at,
            "streamed": call.stream,
            "prompt_tokens": call.prompt_estimate,
            # What release_request() needs of the levels beyond the tenant and key, and the record's attribution.
            "project_id": _project_id(call.caller),
            "end_user": getattr(call, "end_user", ""),
            "tags": getattr(call, "tags", None),
        }
    )
    try:
        if not ahead:
            await _journal().open(call.request_id, data)
            return
        answer = await _journal().send(call.request_id, data)
    except UNREACHABLE as exc:
        _pause(call.request_id, "no trace written", exc)
        return
    if answer is not None:
        call.trace_sent = answer  # a fallback's earlier trace: its reply is not waited for


async def trace_confirmed(call: "Call") -> None:
    """Wait for Redis' acknowledgment of a trace written `ahead` (a no-op otherwise). A trace
    that failed is logged, as a failed `trace_open` is: the request was served unprotected.
    Bounded by the Redis client's timeout (GATEWAY_LIMITS_REDIS_TIMEOUT)."""
    answer, call.trace_sent = call.trace_sent, None
    if answer is None:
        return
    try:
        await answer()
    except (*UNREACHABLE, ResponseError) as exc:
        _pause(call.request_id, "its trace may not have been written", exc)


async def trace_done(*, request_id: str) -> None:
    """The request's usage record is committed: its trace has served its purpose.

    A trace left behind is harmless: the reconciler finds the record and frees nothing."""
    if _paused():
        return
    try:
        await _journal().done(_TRACES, request_id)
    except UNREACHABLE as exc:
        _pause(request_id, "its trace stays until the reconciler runs", exc)


# How long a finished request's trace may linger before this process removes it, together with the
# traces of the requests that finished meanwhile: no request waits for the removal, and one script
# call serves them all. A trace that outlives its request harmlessly is exactly what the
# reconciler already expects (it finds the record and frees nothing).
DONE_DELAY_SECONDS = 0.1
_done_later: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[str]]" = weakref.WeakKeyDictionary()


def trace_done_soon(*, request_id: str) -> None:
    """`trace_done()` off the request's path: the trace goes within DONE_DELAY_SECONDS, in a batch."""
    if _paused():
        return
    loop = asyncio.get_running_loop()
    waiting = _done_later.setdefault(loop, [])
    waiting.append(request_id)
    if len(waiting) == 1:
        loop.call_later(DONE_DELAY_SECONDS, _remove_finished, loop)


def _remove_finished(loop: asyncio.AbstractEventLoop) -> None:
    ids = _done_later.pop(loop, [])
    if ids:
        _hold(asyncio.ensure_future(_done_many(ids)))


async def _done_many(ids: list[str]) -> None:
    try:
        await _journal().done_many(_TRACES, ids)
    except UNREACHABLE as exc:
        _pause(ids[0], f"{len(ids)} finished traces stay until the reconciler runs", exc)


async def flush() -> None:
    """Remove the traces waiting for removal now, and wait for every trace write of this process
    (ASGI shutdown, tests)."""
    _remove_finished(asyncio.get_running_loop())
    if _commits:
        await asyncio.gather(*_commits, return_exceptions=True)


# Whether this process spooled records that it has not written yet (it tries after each commit).
_spooled_here = False
_flushing: asyncio.Task | None = None


async def spool(*, metered: Metered) -> Decimal | None:
    """Keep a usage record that the database could not take; returns its cost (as the database
    write computes it), or None when the journal cannot be reached either (then it is lost, and
    said so in the log with everything needed to write it by hand)."""
    global _spooled_here
    cost = usage_cost(metered=metered)
    data = _metered_dump(metered)
    try:
        await _journal().spool(metered.request_id, data)
    except UNREACHABLE:
        log.exception("usage record %s lost: neither the database nor the journal answer: %s", metered.request_id, data)
        return None
    _spooled_here = True
    log.warning("usage record %s spooled to the journal: the database is unavailable", metered.request_id)
    return cost


def after_commit() -> asyncio.Task | None:
    """A usage record of this process was committed, so the database is back: write what this
    process spooled, on a task of its own (the reconciler does it for every process, later)."""
    global _flushing
    if not _spooled_here or (_flushing is not None and not _flushing.done()):
        return None
    _flushing = asyncio.get_running_loop().create_task(_flush())
    return _flushing


async def _flush() -> None:
    global _spooled_here
    try:
        if await _replay_spool() == 0:
            _spooled_here = False  # another process's reconciler may have taken them: nothing left
    except (*DATABASE_UNAVAILABLE, *UNREACHABLE) as exc:
        log.warning("spooled usage records not written yet: %s", exc)
    except Exception:  # nobody awaits this task: its failure must be said here
        log.exception("spooled usage records could not be written")


# --- Records ---


def _metered_dump(metered: Metered) -> bytes:
    tokens, price = metered.tokens, metered.price
    return orjson.dumps(
        {
            "request_id": metered.request_id,
            "created_at": metered.created_at,
            "tenant_id": metered.tenant_id,
            "api_key_id": metered.api_key_id,
            "model": metered.model,
            "provider": metered.provider,
            "upstream_model": metered.upstream_model,
            "endpoint": metered.endpoint,
            "status_code": metered.status_code,
            "error_type": metered.error_type,
            "tokens": [tokens.input, tokens.output, tokens.cached_input, tokens.cache_write, tokens.cache_write_1h],
            "price_id": metered.price_id,
            "price": None
            if price is None
            else [
                str(price.input_per_1m),
                str(price.output_per_1m),
                _decimal_dump(price.cached_input_per_1m),
                _decimal_dump(price.cache_write_per_1m),
                _decimal_dump(price.cache_write_1h_per_1m),
            ],
            # Long-context tiers: [id, above, input, output, cached, write, write 1h] each.
            "tiers": []
            if price is None
            else [
                [
                    tier.id,
                    tier.above_input_tokens,
                    str(tier.input_per_1m),
                    str(tier.output_per_1m),
                    _decimal_dump(tier.cached_input_per_1m),
                    _decimal_dump(tier.cache_write_per_1m),
                    _decimal_dump(tier.cache_write_1h_per_1m),
                ]
                for tier in price.tiers
            ],
            "latency_ms": metered.latency_ms,
            "streamed": metered.streamed,
            "estimated": metered.estimated,
            "cache_hit": metered.cache_hit,
            "requested_model": metered.requested_model,
            "tenant_slug": metered.tenant_slug,
            "deployment_id": metered.deployment_id,
            "project_id": metered.project_id,
            "end_user": metered.end_user,
            "tags": metered.tags,
            "cost": str(usage_cost(metered=metered)),  # for a reader of the journal; recomputed on write
        }
    )


def _decimal_dump(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal_load(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _price_load(raw: dict) -> Price | None:
    """The price a spooled record was billed at; records spooled before tiers have neither tiers
    nor a one-hour write price (fewer list items), which the defaults fill in."""
    if raw["price"] is None:
        return None
    tiers = tuple(
        Tier(
            id=tier_id,
            above_input_tokens=above,
            input_per_1m=Decimal(input_),
            output_per_1m=Decimal(output),
            cached_input_per_1m=_decimal_load(cached),
            cache_write_per_1m=_decimal_load(write),
            cache_write_1h_per_1m=_decimal_load(write_1h),
        )
        for tier_id, above, input_, output, cached, write, write_1h in raw.get("tiers") or []
    )
    return Price(*(_decimal_load(v) for v in raw["price"]), tiers=tiers)


def _metered_load(data: bytes) -> Metered:
    raw = orjson.loads(data)
    return Metered(
        request_id=raw["request_id"],
        created_at=datetime.fromisoformat(raw["created_at"]),
        tenant_id=raw["tenant_id"],
        api_key_id=raw["api_key_id"],
        model=raw["model"],
        provider=raw["provider"],
        upstream_model=raw["upstream_model"],
        endpoint=raw["endpoint"],
        status_code=raw["status_code"],
        error_type=raw["error_type"],
        tokens=Tokens(*raw["tokens"]),
        price_id=raw["price_id"],
        price=_price_load(raw),
        latency_ms=raw["latency_ms"],
        streamed=raw["streamed"],
        estimated=raw["estimated"],
        cache_hit=raw["cache_hit"],
        requested_model=raw.get("requested_model", ""),  # spooled before fallbacks: none
        tenant_slug=raw["tenant_slug"],
        deployment_id=raw["deployment_id"],
        # Records spooled before attribution have none.
        project_id=raw.get("project_id"),
        end_user=raw.get("end_user") or "",
        tags=raw.get("tags"),
    )


def usage_record_write(*, metered: Metered) -> RecordedUsage:
    """Insert the usage record of a request once, whoever tries and however often: one
    `INSERT … ON CONFLICT` statement (billing's `usage_record_upsert`).

    A record already there is the answer (a replay of a spooled record whose first write
    committed after all), except an `interrupted` one that the reconciler wrote while the request
    was still running: the request's own record replaces it.
    """
    return usage_record_upsert(metered=metered, replaceable=INTERRUPTED)


def _interrupted(trace: dict) -> Metered:
    """The usage record of a request whose process died: what its trace knows, flagged."""
    rows = ModelPrice.objects.prefetch_related("tiers")
    row = None if trace["price_id"] is None else rows.filter(id=trace["price_id"]).first()
    price = None if row is None else row.as_price()
    return Metered(
        request_id=trace["request_id"],
        created_at=datetime.fromisoformat(trace["created_at"]),
        tenant_id=trace["tenant_id"],
        api_key_id=trace["key_id"],
        model=trace["model"],
        provider=trace["provider"],
        upstream_model=trace["upstream_model"],
        endpoint=trace["endpoint"],
        status_code=INTERRUPTED_STATUS,
        error_type=INTERRUPTED,
        # The prompt was sent; what came back is unknown. The estimate of the prompt is what the
        # admission reserved for it; output is not guessed (docs/limits.md).
        tokens=Tokens(input=max(0, int(trace["prompt_tokens"] or 0))),
        price_id=trace["price_id"] if price is not None else None,
        price=price,
        latency_ms=0,
        streamed=bool(trace["streamed"]),
        estimated=True,
        requested_model=trace.get("requested_model", ""),
        tenant_slug=trace.get("tenant_slug", ""),
        deployment_id=trace["deployment_id"],
        project_id=trace.get("project_id"),
        end_user=trace.get("end_user") or "",
        tags=trace.get("tags"),
    )


def _write_interrupted(trace: dict) -> bool:
    """Whether the trace became the request's record (False: the request has its own)."""
    return usage_record_write(metered=_interrupted(trace)).written


# --- The reconciler ---


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    replayed: int  # spooled usage records claimed and written (or found already written)
    interrupted: int  # traces without a usage record, now recorded as interrupted
    released: int  # traces whose limits were given back (a finished request's: nothing left)


async def _replay_spool() -> int:
    journal = _journal()
    count = 0
    while entries := await journal.claim(_SPOOL, age_ms=0, limit=BATCH):
        async with _unclaimed_on_failure(journal, _SPOOL, entries) as finished:
            for request_id, data in entries:
                finished.add(request_id)  # written, or left to its lease below
                try:
                    await db_call(usage_record_write, metered=_metered_load(data))
                except DATABASE_UNAVAILABLE:
                    finished.discard(request_id)
                    raise
                except Exception:
                    # A record the database refuses (not an outage) must not hold back the others:
                    # it stays claimed, comes back after its lease, and says so each time.
                    log.exception("spooled usage record %s cannot be written: %s", request_id, data)
                    continue
                await journal.done(_SPOOL, request_id)
                count += 1
    return count


@asynccontextmanager
async def _unclaimed_on_failure(journal, names: tuple[str, str], entries: list[tuple[str, bytes]]):
    """A batch that stops half-way (the database went away again) gives its unfinished claims
    back at once, rather than leaving them leased: the next reconciler, possibly a second later,
    takes them. Should Redis be gone too, the lease still brings them back."""
    finished: set[str] = set()
    try:
        yield finished
    except BaseException:
        try:
            await journal.unclaim(names, [rid for rid, _ in entries if rid not in finished])
        except Exception:
            log.warning("journal claims not given back; they return when their lease ends", exc_info=True)
        raise


async def reconcile_requests(*, older_than_seconds: float) -> ReconcileResult:
    """Write the spooled usage records, then record every trace older than `older_than_seconds`
    as `interrupted` (unless its request has a record by now) and free its limits.

    Safe to run concurrently and to repeat; a failure (database or Redis down) leaves what was
    not finished to the next run. `older_than_seconds=0` also takes requests still running: only
    for an operator who knows that no gateway serves (their own records replace the flag).
    """
    journal = _journal()
    replayed = await _replay_spool()
    interrupted = released = 0
    age_ms = max(0, int(older_than_seconds * 1000))
    while entries := await journal.claim(_TRACES, age_ms=age_ms, limit=BATCH):
        async with _unclaimed_on_failure(journal, _TRACES, entries) as finished:
            for request_id, data in entries:
                trace = orjson.loads(data)
                if await db_call(_write_interrupted, trace):
                    interrupted += 1
                    log.warning(
                        "request %s of tenant %s was interrupted: recorded as such",
                        request_id,
                        trace.get("tenant_slug"),
                    )
                created_at = datetime.fromisoformat(trace["created_at"])
                if trace["key_id"] is not None:
                    released += await release_request(
                        tenant_id=trace["tenant_id"],
                        key_id=trace["key_id"],
                        request_id=request_id,
                        month=created_at.strftime("%Y-%m"),
                        day=created_at.strftime("%Y-%m-%d"),
                        project_id=trace.get("project_id"),
                        end_user=trace.get("end_user") or None,
                    )
                await journal.done(_TRACES, request_id)
                finished.add(request_id)
    return ReconcileResult(replayed=replayed, interrupted=interrupted, released=released)


def reconcile_requests_sync(*, older_than_seconds: float) -> ReconcileResult:
    """`reconcile_requests()` for synchronous code (the Celery task, the command): its own loop."""

    async def run() -> ReconcileResult:
        try:
            return await reconcile_requests(older_than_seconds=older_than_seconds)
        finally:
            await aclose()

    return asyncio.run(run())
