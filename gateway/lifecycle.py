"""The one owner of a completion request's life: admitted once, recorded once, settled once.

What a request takes when it is admitted (a concurrency slot, a tokens-per-minute reservation,
budget holds) is given back by the same construct that took it, on every way out, and the same
construct writes its one usage record. Nothing else in the gateway records a completion or
settles its limits, so that no path (a stream that ends well, a client that hangs up before the
first byte, an upstream error after it, a cache hit, a bug) can forget either.

    async with owned(call) as owner:
        ...                                   # parse, resolve, owner.admit()
        return await proxy.complete(call, owner)

- `Owner.finish(outcome)` records the usage and then settles the admission with the real tokens
  and cost (or releases it when nothing billable happened). The first call wins; later ones are
  no-ops. It runs on a task of its own, shielded, so a client that hangs up while the record is
  being written cancels the request, not the write; on the task of `hand_over`, which a hang-up
  does not reach, it runs in place. A call that is not billable
  (`Call.billable = False`: a token count) gets no usage record, only its metrics and log line,
  and its admission is released.
- Until the request is handed over, `owned` finishes it on the way out: a `GatewayError` with its
  status, a bug as `internal_error`, a cancellation (the client hung up) as 499
  `client_disconnected`, with the prompt estimated when the provider was already asked.
- `Owner.hand_over(coroutine)` gives the outcome to the task that calls the provider for a JSON
  answer (it finishes itself, even after the client left); `Owner.stream(...)` gives it to the
  body of a streamed response, whose `finally` finishes it, with a closer on the response for a
  body that never started (the client left before the first byte was sent).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.http import StreamingHttpResponse
from django.utils import timezone

from billing.pricing import Tokens

from . import observability
from .db import DATABASE_UNAVAILABLE
from .errors import GatewayError
from .journal import trace_confirmed
from .limits import Admission
from .metered import Metered
from .metering import LogEntry, estimate_prompt_tokens, keep_alive, record
from .registry import Caller, DeploymentView, ModelView, PriceView

log = logging.getLogger(__name__)

__all__ = ["Call", "Leg", "Outcome", "Owner", "internal_error", "owned"]


@dataclass(frozen=True, slots=True)
class Leg:
    """A model that may answer a request, as resolved for its caller: the asked-for one, or one of
    its fallbacks (`ModelView.fallbacks`) that the caller may use, in its region, with a price."""

    model: ModelView
    price: PriceView
    deployments: tuple[DeploymentView, ...]


@dataclass
class Call:
    """What is known about one completion request as it advances."""

    request_id: str
    endpoint: str  # "chat", "messages", "count_tokens", "embeddings" or "responses" (UsageRecord.Endpoint)
    client_family: str  # the wire format the caller speaks: "openai", "anthropic" or "responses"
    caller: Caller
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=timezone.now)
    body: dict = field(default_factory=dict)
    requested_model: str = ""  # as the client said it (maybe a tenant alias); echoed in responses
    model_name: str = ""  # the catalog name of the model asked now (a fallback's, once one is tried); recorded, billed
    stream: bool = False
    include_usage: bool = False
    model: ModelView | None = None
    price: PriceView | None = None
    deployment: DeploymentView | None = None
    fallbacks: tuple[Leg, ...] = ()  # the asked-for model's fallbacks this caller may use, in order
    fallen_back: bool = False  # `model`/`model_name`/`price` are a fallback's, not the asked-for model's
    cache_control: str = ""  # the request's Cache-Control header, lower case
    cache_status: str = ""  # "hit" or "miss" when the tenant has a response cache
    upstream_asked: bool = False  # a provider was sent the request (it may bill us for the prompt)
    client_gone: bool = False  # the client hung up while the upstream call was on its way
    prompt_estimate: int = 0  # the admission's bound of the prompt, kept in the journal's trace
    betas: tuple[str, ...] = ()  # the `anthropic-beta` header's betas, checked (gateway/betas.py)
    # False for a call no provider bills (a token count): it writes no usage record, only its
    # metrics and log line, and gives back its admission without settling tokens or cost.
    billable: bool = True
    trace_sent: Callable[[], Awaitable[None]] | None = None  # waits for Redis' acknowledgment of the trace
    end_user: str = ""  # as recorded (hashed when the tenant asks): gateway/attribution.py
    tags: dict[str, str] = field(default_factory=dict)  # x-request-tags

    def log_entry(self, response: dict | None) -> LogEntry | None:
        return LogEntry(request=self.body, response=response) if self.caller.tenant.log_requests else None

    def metered(self, outcome: "Outcome") -> Metered:
        deployment = self.deployment
        return Metered(
            request_id=self.request_id,
            created_at=self.created_at,
            tenant_id=self.caller.tenant.id,
            api_key_id=self.caller.key_id,
            model=self.model_name.replace("\x00", ""),  # PostgreSQL text holds no NUL
            requested_model=self.requested_model.replace("\x00", "") if self.fallen_back else "",
            provider=deployment.provider if deployment else (self.model.provider if self.model else ""),
            upstream_model=deployment.upstream if deployment else "",
            endpoint=self.endpoint,
            status_code=outcome.status,
            error_type=outcome.error_type,
            tokens=outcome.tokens or Tokens(),
            price_id=self.price.id if self.price else None,
            price=self.price.price if self.price else None,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            streamed=self.stream,
            estimated=outcome.estimated,
            cache_hit=outcome.cache_hit,
            tenant_slug=self.caller.tenant.slug,
            deployment_id=deployment.id if deployment else None,
            project_id=self.caller.key.project.id if self.caller.key.project else None,
            end_user=self.end_user,
            tags=self.tags,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, as its usage record will say it."""

    status: int
    error_type: str = ""
    tokens: Tokens | None = None
    estimated: bool = False
    cache_hit: bool = False
    response: dict | None = None  # for the tenant's request log, when it keeps one


def internal_error(request_id: str, exc: BaseException) -> GatewayError:
    """A bug, said to the client without any of its detail (no stack, no SQL, no upstream text);
    or a database outage, which is not a bug: 503, and the client may retry."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        log.warning("request %s: the database is unavailable: %s", request_id, exc)
        message = "The service is temporarily unavailable. Retry shortly."
        return GatewayError(503, message, "database_unavailable", headers={"retry-after": "2"})
    log.error("request %s failed", request_id, exc_info=exc)
    return GatewayError(500, f"The gateway failed to handle this request (request id {request_id}).", "internal_error")


class Owner:
    """The request's admission and its outcome. See the module docstring for the rules."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.admission: Admission | None = None
        self._handed_over = False
        self._finishing: asyncio.Future | None = None
        self._handed_to: asyncio.Task | None = None  # the task of `hand_over`, which finishes in place
        self.recorded = False  # the usage record was committed or kept in the journal

    @property
    def finished(self) -> bool:
        return self._finishing is not None

    @property
    def headers(self) -> dict[str, str]:
        """Rate-limit headers of the admission, for the response."""
        return self.admission.headers if self.admission is not None else {}

    async def admit(self, admit: Callable[[], Coroutine[Any, Any, Admission]]) -> None:
        """Take the request's place in its limits; a refusal raises (and `owned` records it)."""
        if self.admission is not None:
            raise RuntimeError(f"request {self.call.request_id} is already admitted")
        self.admission = await admit()

    async def finish(self, outcome: Outcome) -> None:
        """Record and settle, once; returns when both are done (or keeps going if cancelled)."""
        if self._finishing is None and self._handed_to is not None and asyncio.current_task() is self._handed_to:
            await self._finish_in_place(outcome)
            return
        await asyncio.shield(self._start(outcome))

    async def _finish_in_place(self, outcome: Outcome) -> None:
        # The task a JSON answer was handed over to: the client's hang-up does not reach it
        # (`complete` awaits it through a shield) and it is held until done (`keep_alive`, which
        # the shutdown's drain waits for before anything is cancelled). So the record and the
        # settlement run on it directly rather than on a task of their own, shielded: a task, a
        # shield and two turns of the event loop fewer per request.
        done = self._finishing = asyncio.get_running_loop().create_future()
        try:
            await self._record_and_settle(outcome)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except BaseException as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: this caller raises it
            raise
        done.set_result(None)

    def finish_soon(self, outcome: Outcome) -> None:
        """`finish()` from code that must not wait (a cancelled request, a closing generator)."""
        self._start(outcome)

    def _start(self, outcome: Outcome) -> asyncio.Task:
        if self._finishing is None:
            self._finishing = asyncio.get_running_loop().create_task(self._record_and_settle(outcome))
            keep_alive(self._finishing)
        return self._finishing

    async def _record_and_settle(self, outcome: Outcome) -> None:
        call = self.call
        admission = self.admission
        if not call.billable:
            observability.request_finished(call.metered(outcome), cost=Decimal(0))
            self.recorded = True
            if admission is not None:
                await admission.release()
            return
        cost = None
        await trace_confirmed(call)  # the trace is in Redis before the record can remove it
        try:
            cost = await record(
                call.metered(outcome),
                call.log_entry(outcome.response) if outcome.response is not None else None,
                budgeted=admission is not None and admission.budgeted,
            )
        except Exception:
            log.exception("usage record %s could not be written", call.request_id)
        self.recorded = cost is not None
        if admission is None:
            return
        if cost is None:
            await admission.release()
            return
        tokens = outcome.tokens or Tokens()
        # A cache hit used no provider tokens: it costs nothing of the tokens-per-minute limit.
        await admission.settle(tokens=0 if outcome.cache_hit else tokens.input + tokens.output, cost=cost)

    def hand_over(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run the upstream call on a task of its own that finishes this request itself: the
        provider answers (and bills us) whether or not our client is still there."""
        self._handed_over = True
        task = self._handed_to = asyncio.ensure_future(self._finishing_on_error(coroutine))
        keep_alive(task)
        return task

    async def _finishing_on_error(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            result = await coroutine
        except asyncio.CancelledError:
            self.finish_soon(self.hang_up())  # only at shutdown: nothing else cancels this task
            raise
        except GatewayError as error:
            await self.finish(self.refusal(error))
            raise
        except BaseException as exc:
            error = internal_error(self.call.request_id, exc)
            await self.finish(self.refusal(error))
            raise error from exc
        if not self.finished:
            log.error("request %s: the upstream call ended without an outcome", self.call.request_id)
            await self.finish(Outcome(status=500, error_type="internal_error"))
        return result

    def stream(
        self, body: Callable[["Owner"], AsyncIterator[bytes]], *, on_abandon: Callable[[], Outcome]
    ) -> StreamingHttpResponse:
        """A streamed response whose body owns the request from now on. `body(owner)` finishes it
        in its own `finally`; `on_abandon()` says what to record when the client left before the
        body started (so that no `finally` of it will ever run)."""
        self._handed_over = True
        iterator = body(self)
        response = StreamingHttpResponse(iterator, content_type="text/event-stream")
        loop = asyncio.get_running_loop()

        def closed() -> None:  # Django calls it when the response is closed, sent or not
            if self.finished:
                return
            loop.call_soon_threadsafe(lambda: keep_alive(loop.create_task(self._abandon(iterator, on_abandon))))

        response._resource_closers.append(closed)
        return response

    async def _abandon(self, iterator: AsyncIterator[bytes], on_abandon: Callable[[], Outcome]) -> None:
        # A body suspended at a yield runs its own `finally` when closed; one never started does not.
        try:
            await iterator.aclose()
        except Exception:
            log.warning("request %s: closing an abandoned stream failed", self.call.request_id, exc_info=True)
        if not self.finished:
            await self.finish(on_abandon())

    def refusal(self, error: GatewayError) -> Outcome:
        return Outcome(status=error.status, error_type=error.code)

    def hang_up(self) -> Outcome:
        """The client left before an answer: billed for the prompt when a provider had it."""
        if not self.call.upstream_asked:
            return Outcome(status=499, error_type="client_disconnected")
        tokens = Tokens(input=estimate_prompt_tokens(self.call.body))
        return Outcome(status=499, error_type="client_disconnected", tokens=tokens, estimated=True)


@asynccontextmanager
async def owned(call: Call) -> AsyncIterator[Owner]:
    """Own `call` for the block; see the module docstring. Re-raises every error as a
    `GatewayError` (a bug becomes `internal_error`), for the view to render."""
    owner = Owner(call)
    try:
        yield owner
    except asyncio.CancelledError:
        if not owner._handed_over:
            owner.finish_soon(owner.hang_up())
        raise
    except GatewayError as error:
        if not owner._handed_over:
            await owner.finish(owner.refusal(error))
        raise
    except Exception as exc:
        error = internal_error(call.request_id, exc)
        if not owner._handed_over:
            await owner.finish(owner.refusal(error))
        raise error from exc
    if not owner._handed_over and not owner.finished:
        # A path that answered without saying how the request ended: a bug, but never a lost record.
        log.error("request %s ended without an outcome", call.request_id)
        await owner.finish(Outcome(status=500, error_type="internal_error"))
