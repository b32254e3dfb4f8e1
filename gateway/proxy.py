"""One proxied completion, from an authenticated caller to a metered response (DESIGN §2).

`Call` carries what is known about the request as it advances; `complete()` and `stream()`
route it to a deployment (falling back on retryable upstream failures), translate formats
when the client's endpoint and the provider differ, and commit the usage record before the
response ends. Errors are `GatewayError`s; the view renders them and records them.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone

from billing.pricing import Tokens, worst_case_cost
from billing.services import Metered

from . import journal, observability, translate
from .cache import Cached, cache_key, cache_lookup, cache_store
from .errors import GatewayError
from .limits import Admission, admit
from .metering import (
    LogEntry,
    estimate_output_tokens,
    estimate_prompt_tokens,
    keep_alive,
    record,
    record_detached,
    tokens_from_usage,
)
from .providers import Adapter, EventStream, ProviderError, adapter_for
from .providers.base import GATEWAY_REQUEST_ID
from .registry import Caller, DeploymentView, ModelView, PriceView, catalog, key_month_to_date, month_to_date, policy
from .streams import StreamError, processor_for

log = logging.getLogger(__name__)


@dataclass
class Call:
    request_id: str
    endpoint: str  # "chat" or "messages"
    client_family: str  # the wire format the caller speaks: "openai" or "anthropic"
    caller: Caller
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=timezone.now)
    body: dict = field(default_factory=dict)
    requested_model: str = ""  # as the client said it (maybe a tenant alias); echoed in responses
    model_name: str = ""  # the catalog name it resolved to; recorded and billed
    stream: bool = False
    include_usage: bool = False
    model: ModelView | None = None
    price: PriceView | None = None
    deployment: DeploymentView | None = None
    admission: Admission | None = None  # the request's place in its limits, once admitted
    cache_control: str = ""  # the request's Cache-Control header, lower case
    cache_status: str = ""  # "hit" or "miss" when the tenant has a response cache
    client_gone: bool = False  # the client hung up while the upstream call was on its way
    prompt_estimate: int = 0  # the admission's estimate of the prompt, kept in the journal's trace

    def log_entry(self, response: dict | None) -> LogEntry | None:
        return LogEntry(request=self.body, response=response) if self.caller.tenant.log_requests else None

    def metered(
        self,
        *,
        status: int,
        error_type: str = "",
        tokens: Tokens | None = None,
        estimated: bool = False,
        cache_hit: bool = False,
    ):
        deployment = self.deployment
        return Metered(
            request_id=self.request_id,
            created_at=self.created_at,
            tenant_id=self.caller.tenant.id,
            api_key_id=self.caller.key_id,
            model=self.model_name.replace("\x00", ""),  # PostgreSQL text holds no NUL
            provider=deployment.provider if deployment else (self.model.provider if self.model else ""),
            upstream_model=deployment.upstream if deployment else "",
            endpoint=self.endpoint,
            status_code=status,
            error_type=error_type,
            tokens=tokens or Tokens(),
            price_id=self.price.id if self.price else None,
            price=self.price.price if self.price else None,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            streamed=self.stream,
            estimated=estimated,
            cache_hit=cache_hit,
            tenant_slug=self.caller.tenant.slug,
            deployment_id=deployment.id if deployment else None,
        )


async def resolve(call: Call) -> list[DeploymentView]:
    """Policy: platform rules first, then the model exists, this key may use it, in the tenant's
    region, on a provider that is not switched off, and it has a price. Then the tenant's
    profile (default parameters, max_tokens ceiling) is applied to the body.
    """
    tenant = call.caller.tenant
    rules = await policy()
    if rules.maintenance_message:
        raise GatewayError(503, rules.maintenance_message, "maintenance")
    if not tenant.active:
        raise GatewayError(403, "This tenant is suspended. Contact the platform operator.", "tenant_suspended")
    call.model_name = tenant.model_aliases.get(call.requested_model, call.requested_model)
    model = (await catalog()).get(call.model_name)
    if model is None:
        raise GatewayError(404, f"The model `{call.requested_model}` does not exist.", "model_not_found", param="model")
    call.model = model
    if model.name in rules.blocked_models or model.provider in rules.blocked_providers:
        raise GatewayError(
            403,
            f"The model `{call.requested_model}` is blocked by platform policy.",
            "blocked_by_policy",
            param="model",
        )
    if not call.caller.may_use(model):
        raise GatewayError(
            403,
            f"This key is not allowed to use the model `{call.requested_model}`.",
            "model_not_allowed",
            param="model",
        )
    in_region = model.deployments_in(tenant.region)
    if not in_region:
        if model.deployments:
            raise GatewayError(
                403,
                f"The model `{call.requested_model}` has no deployment in this tenant's region `{tenant.region}`.",
                "region_not_allowed",
                param="model",
            )
        raise GatewayError(503, f"The model `{call.requested_model}` has no active deployment.", "no_deployment")
    deployments = [d for d in in_region if d.provider not in rules.killed_providers]
    if not deployments:
        raise GatewayError(
            503, f"The provider of `{call.requested_model}` is switched off by the operator.", "provider_disabled"
        )
    call.price = model.price_at(call.created_at)
    if call.price is None:
        # Serving a request that cannot be billed would break the promise of exact billing.
        raise GatewayError(503, f"The model `{call.requested_model}` has no price in force.", "no_price")
    apply_profile(call, global_cap=rules.max_tokens_cap)
    return deployments


# Default parameters a tenant may set, by wire format (the admin validates the values).
_DEFAULTABLE = {
    "openai": ("temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "stop", "seed", "user"),
    "anthropic": ("temperature", "top_p", "max_tokens"),
}


def apply_profile(call: Call, *, global_cap: int | None) -> None:
    """Fill in the tenant's default parameters and hold max_tokens under the ceilings."""
    body = call.body
    tenant = call.caller.tenant
    for name in _DEFAULTABLE[call.client_family]:
        if name in tenant.default_params and name not in body:
            body[name] = tenant.default_params[name]
    if call.client_family == "anthropic" and "stop" in tenant.default_params and "stop_sequences" not in body:
        stop = tenant.default_params["stop"]
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    caps = [cap for cap in (tenant.max_tokens_cap, global_cap) if cap]
    if not caps:
        return
    cap = min(caps)
    field_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if call.client_family == "openai" and field_name not in body:
        field_name = "max_completion_tokens"  # accepted by every current chat model, reasoning ones included
    # A request asking for more than the ceiling is served up to the ceiling rather than refused.
    body[field_name] = min(body.get(field_name) or cap, cap)


async def admit_call(call: Call) -> None:
    """Take the request's place in its limits (rate, tokens, concurrency, budgets) or refuse it."""
    tenant, key = call.caller.tenant, call.caller.key
    prompt = call.prompt_estimate = estimate_prompt_tokens(call.body)
    max_output = call.body.get("max_completion_tokens") or call.body.get("max_tokens")
    reserve = max_output if isinstance(max_output, int) else settings.GATEWAY_DEFAULT_OUTPUT_RESERVE
    call.admission = await admit(
        caller=call.caller,
        request_id=call.request_id,
        prompt_tokens=prompt,
        max_output_tokens=max_output if isinstance(max_output, int) else None,
        worst_case_cost=worst_case_cost(prompt_tokens=prompt, max_output_tokens=reserve, price=call.price.price),
        budget=tenant.monthly_budget,
        month_to_date=lambda: month_to_date(tenant.id),
        key_budget=key.monthly_budget,
        key_month_to_date=lambda: key_month_to_date(tenant.id, key.id),
    )


def upstream_body(call: Call, deployment: DeploymentView, family: str) -> dict:
    if family == call.client_family:
        return {**call.body, "model": deployment.upstream}
    try:
        if family == "anthropic":
            return translate.openai_request_to_anthropic(call.body, upstream_model=deployment.upstream)
        return translate.anthropic_request_to_openai(call.body, upstream_model=deployment.upstream)
    except translate.TranslationError as exc:
        raise GatewayError(400, str(exc), "unsupported_parameter", param=exc.param) from exc


def gateway_error(exc: ProviderError) -> GatewayError:
    """An upstream failure, said as ours: a provider's 429 is not the tenant's rate limit."""
    who = f"The upstream provider ({exc.provider})"
    headers = {"retry-after": exc.retry_after} if exc.retry_after else {}
    match exc.kind:
        case "bad_request":
            return GatewayError(400, exc.message, "upstream_invalid_request")
        case "content_filter":
            return GatewayError(400, exc.message or "The prompt was blocked by the content filter.", "content_filter")
        case "too_large":
            return GatewayError(413, f"{who} refused the request as too large.", "upstream_request_too_large")
        case "rate_limit":
            return GatewayError(
                429,
                f"{who} is rate limiting this model; this is not your own rate limit. Retry later.",
                "upstream_rate_limit",
                headers=headers,
            )
        case "overloaded":
            return GatewayError(503, f"{who} is overloaded. Retry later.", "upstream_overloaded", headers=headers)
        case "timeout":
            return GatewayError(504, f"{who} did not answer in time.", "upstream_timeout")
        case "not_configured":
            return GatewayError(503, f"{who} is not configured on this gateway.", "provider_not_configured")
        case "upstream_auth":
            return GatewayError(502, f"{who} refused the gateway's credentials.", "upstream_auth_error")
        case "upstream_not_found":
            return GatewayError(502, f"{who} does not know this deployment.", "upstream_not_found")
        case "connection":
            return GatewayError(502, f"{who} could not be reached.", "upstream_unreachable")
        case _:
            return GatewayError(502, f"{who} failed to answer.", "upstream_error")


async def _first_that_answers(call: Call, deployments: list[DeploymentView], operation):
    """Try deployments in order; move on only for failures another deployment may not have."""
    failure: ProviderError | None = None
    GATEWAY_REQUEST_ID.set(call.request_id)  # sent upstream as x-gateway-request-id
    for deployment in deployments:
        call.deployment = deployment
        # Written ahead: a process that dies from here on leaves a trace (gateway/journal.py).
        await journal.trace_open(call=call)
        # A tenant's own provider account (bring your own key) takes precedence over ours.
        secret, own_base_url = call.caller.tenant.credentials.get(deployment.provider, (None, ""))
        try:
            adapter = adapter_for(deployment.provider, base_url=own_base_url or deployment.base_url, api_key=secret)
            return adapter, await operation(adapter, upstream_body(call, deployment, adapter.family))
        except ProviderError as exc:
            failure = exc
            log.warning("request %s: deployment %s failed: %s", call.request_id, deployment.id, exc.kind)
            observability.upstream_failed(
                tenant=call.caller.tenant.slug, model=call.model_name, provider=deployment.provider, kind=exc.kind
            )
            if not exc.retryable:
                break
    assert failure is not None
    raise gateway_error(failure)


async def complete(call: Call) -> HttpResponse:
    deployments = await resolve(call)
    await admit_call(call)
    ttl = call.caller.tenant.response_cache_seconds
    key = cache_key(
        tenant_id=call.caller.tenant.id,
        ttl=ttl,
        family=call.client_family,
        model=call.model_name,
        body=call.body,
        cache_control=call.cache_control,
    )
    if key is not None:
        cached = await cache_lookup(key, cache_control=call.cache_control)
        call.cache_status = "miss" if cached is None else "hit"
        if cached is not None:
            # Billed at zero; the tokens it would have used, at the price in force, are its saving.
            result = {**cached.response, "model": call.requested_model}
            await record(
                call.metered(status=200, tokens=cached.tokens, cache_hit=True), call.log_entry(result), call.admission
            )
            return HttpResponse(orjson.dumps(result), content_type="application/json")

    # The provider answers (and bills us) whether or not our client is still there, so the call
    # runs on a task of its own: a client that hangs up cancels this coroutine, not the call,
    # whose outcome is then recorded with the provider's own numbers as `client_disconnected`.
    answer = asyncio.ensure_future(_answer(call, deployments, cache_entry=key, ttl=ttl))
    try:
        return await asyncio.shield(answer)
    except asyncio.CancelledError:
        call.client_gone = True
        keep_alive(asyncio.ensure_future(_outlive_client(call, answer)))
        raise


async def _outlive_client(call: Call, answer: asyncio.Future) -> None:
    try:
        await answer
    except GatewayError:
        pass  # recorded by _answer
    except Exception:
        log.exception("request %s: the answer to a client that hung up could not be recorded", call.request_id)
        if call.admission is not None:
            await call.admission.release()


async def _answer(call: Call, deployments: list[DeploymentView], *, cache_entry: str | None, ttl: int | None):
    async def operation(adapter: Adapter, body: dict) -> dict:
        return await adapter.complete(body)

    try:
        adapter, result = await _first_that_answers(call, deployments, operation)
    except GatewayError as error:
        if call.client_gone:  # nobody is left to record it: the view was cancelled
            await record(call.metered(status=error.status, error_type=error.code))
            if call.admission is not None:
                await call.admission.release()
        raise
    usage = result.get("usage")
    if isinstance(usage, dict):
        tokens, estimated = tokens_from_usage(adapter.family, usage), False
    else:
        tokens, estimated = Tokens(input=estimate_prompt_tokens(call.body)), True
    if adapter.family == call.client_family:
        result["model"] = call.requested_model
    elif call.client_family == "openai":
        result = translate.anthropic_response_to_openai(
            result, model=call.requested_model, completion_id=f"chatcmpl-{call.request_id}"
        )
    else:
        result = translate.openai_response_to_anthropic(result, model=call.requested_model)
    if call.client_gone:
        outcome = {"status": 499, "error_type": "client_disconnected"}
    else:
        outcome = {"status": 200}
    await record(call.metered(**outcome, tokens=tokens, estimated=estimated), call.log_entry(result), call.admission)
    if not estimated:  # a hit must know exactly what it saves
        await cache_store(cache_entry, Cached(response=result, tokens=tokens), ttl=ttl)
    return HttpResponse(orjson.dumps(result), content_type="application/json")


async def stream(call: Call) -> StreamingHttpResponse:
    deployments = await resolve(call)
    await admit_call(call)

    async def operation(adapter: Adapter, body: dict) -> EventStream:
        return await adapter.open_stream(body)

    adapter, events = await _first_that_answers(call, deployments, operation)
    processor = processor_for(
        client=call.client_family,
        upstream=adapter.family,
        model=call.requested_model,
        include_usage=call.include_usage,
        request_id=call.request_id,
        prompt_estimate=estimate_prompt_tokens(call.body),
    )
    response = StreamingHttpResponse(_relay(call, events, processor), content_type="text/event-stream")
    response["cache-control"] = "no-cache"
    response["x-accel-buffering"] = "no"
    return response


def _stream_tokens(call: Call, processor, *, complete: bool) -> tuple[Tokens, bool]:
    """Reported usage when the stream finished with it; otherwise an estimate, flagged."""
    reported = processor.reported_tokens()
    if complete and reported is not None:
        return reported, False
    prompt = reported.input if reported is not None and reported.input else estimate_prompt_tokens(call.body)
    cached = reported.cached_input if reported is not None and reported.input else 0
    write = reported.cache_write if reported is not None and reported.input else 0
    output = estimate_output_tokens(processor.text)
    return Tokens(input=prompt, cached_input=cached, cache_write=write, output=output), True


async def _relay(call: Call, events: EventStream, processor):
    """The body of a streamed response. Nothing is retried once the first byte has gone out."""
    error: tuple[str, str] | None = None
    try:
        try:
            async for event in events:
                for frame in processor.feed(event):
                    yield frame
        except StreamError as exc:
            error = (exc.error_type, exc.message)
        except ProviderError as exc:
            error = ("api_error", f"The upstream provider ({exc.provider}) broke off the stream.")
        finally:
            await _close_quietly(events)
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away: count what was generated so far, on a task of its own.
        tokens, _ = _stream_tokens(call, processor, complete=False)
        record_detached(
            call.metered(status=499, error_type="client_disconnected", tokens=tokens, estimated=True),
            call.log_entry({"content": processor.text, "incomplete": "client_disconnected"}),
            call.admission,
        )
        raise
    if error is None:
        tokens, estimated = _stream_tokens(call, processor, complete=True)
        try:
            await record(
                call.metered(status=200, tokens=tokens, estimated=estimated),
                call.log_entry({"content": processor.text}),
                call.admission,  # issue 10 item 1: a finished stream gives back what it reserved
            )
        except Exception:
            # A stream cut by our side still ends with an error event the client's SDK raises.
            log.exception("request %s: the finished stream could not be recorded", call.request_id)
            for frame in processor.error_frame("api_error", _UNRECORDED.format(request_id=call.request_id)):
                yield frame
            return
        for frame in processor.finish():
            yield frame
        return
    tokens, estimated = _stream_tokens(call, processor, complete=False)
    try:
        await record(
            call.metered(status=200, error_type="upstream_stream_error", tokens=tokens, estimated=estimated),
            call.log_entry({"content": processor.text, "incomplete": error[0]}),
            call.admission,
        )
    except Exception:
        log.exception("request %s: the broken stream could not be recorded", call.request_id)
    for frame in processor.error_frame(*error):
        yield frame


_UNRECORDED = "The gateway failed to finish this response (request id {request_id}). It may be retried."


async def _close_quietly(events: EventStream) -> None:
    try:
        await events.aclose()
    except Exception:  # closing a broken connection may fail again; the outcome is already known
        log.debug("closing an upstream stream failed", exc_info=True)
