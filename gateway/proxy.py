"""One proxied completion, from an authenticated caller to a metered response (docs/design.md#the-hot-path).

`complete()` and `stream()` (and `embed()`, for /v1/embeddings) resolve the model under the
tenant's policy, admit the request through its owner (`gateway.lifecycle`), route it to a
deployment (falling back on retryable upstream failures), and translate formats when the
client's endpoint and the provider differ. How the request ended is told to the owner, which
records and settles it once, before the response ends. Errors are `GatewayError`s; the view renders them.
"""

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from billing.pricing import Tokens, worst_case_cost

from . import journal, observability, routing, translate
from .attribution import levels_for
from .auth import Access, access_check
from .cache import Cached, cache_key, cache_lookup, cache_store
from .errors import GatewayError
from .lifecycle import Call, Leg, Outcome, Owner
from .limits import Admission, admit
from .metering import estimate_output_tokens, estimate_prompt_tokens, keep_alive, tokens_from_usage
from .providers import Adapter, EventStream, ProviderError, adapter_for
from .providers.base import ANTHROPIC_BETAS, GATEWAY_REQUEST_ID
from .registry import DeploymentView, ModelView, catalog, key_month_to_date, month_to_date, policy, spend_since
from .routing import retry
from .streams import StreamError, processor_for
from .tokenizer import embedding_input_bound, prompt_token_bound

log = logging.getLogger(__name__)

__all__ = ["Call", "complete", "embed", "stream"]

# The kind of catalog model (CatalogModel.Kind) each endpoint serves; any other endpoint serves
# chat models. Checked in one place, `resolve`, for every endpoint.
ENDPOINT_KIND = {"embeddings": "embedding"}


async def resolve(call: Call, *, profile: bool = True) -> list[DeploymentView]:
    """Policy: platform rules first, then the model exists, this key may use it, in the tenant's
    region, on a provider that is not switched off, and it has a price. Then the tenant's
    profile (default parameters, max_tokens ceiling) is applied to the body.
    """
    tenant = call.caller.tenant
    rules = await policy()
    if rules.maintenance_message:
        raise GatewayError(503, rules.maintenance_message, "maintenance")
    access_check(call.caller, Access.USE)  # a suspended tenant: 403 tenant_suspended (gateway/auth.py)
    call.model_name = tenant.model_aliases.get(call.requested_model, call.requested_model)
    models = await catalog()
    model = models.get(call.model_name)
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
    kind_check(call, model)
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
    if model.fallbacks:
        call.fallbacks = fallback_legs(call, models, rules)
    # A token count generates nothing; an embedding model takes no chat parameters: no defaults,
    # no max_tokens ceiling.
    if profile and model.kind == "chat":
        apply_profile(call, global_cap=rules.max_tokens_cap)
    return deployments


def fallback_legs(call: Call, models: dict[str, ModelView], rules) -> tuple[Leg, ...]:
    """The asked-for model's fallbacks that this caller could have asked for itself: in the
    catalog, of the same kind, not blocked by the platform's policy, allowed to this key and
    tenant, with a deployment in the tenant's region whose provider is not switched off, and a
    price in force. The others are skipped, silently: a fallback is the operator's plan B, and the
    caller's own refusals are about what it asked for."""
    asked = call.model
    region = call.caller.tenant.region
    legs: list[Leg] = []
    for name in asked.fallbacks:
        model = models.get(name)
        if model is None or model.name == asked.name or any(leg.model.name == name for leg in legs):
            continue
        if model.kind != asked.kind or model.name in rules.blocked_models or model.provider in rules.blocked_providers:
            continue
        if not call.caller.may_use(model):
            continue
        deployments = tuple(d for d in model.deployments_in(region) if d.provider not in rules.killed_providers)
        price = model.price_at(call.created_at)
        if deployments and price is not None:
            legs.append(Leg(model=model, price=price, deployments=deployments))
    return tuple(legs)


def kind_check(call: Call, model: ModelView) -> None:
    """A chat model asked for embeddings, or an embedding model asked for a chat: 400 naming `model`."""
    expected = ENDPOINT_KIND.get(call.endpoint, "chat")
    if model.kind == expected:
        return
    if model.kind == "embedding":
        message = f"The model `{call.requested_model}` is an embedding model: use it on /v1/embeddings."
    elif expected == "embedding":
        message = f"The model `{call.requested_model}` is a chat model: it cannot create embeddings."
    else:
        message = f"The model `{call.requested_model}` cannot be used on this endpoint."
    raise GatewayError(400, message, "model_not_supported", param="model")


# Default parameters a tenant may set, by wire format (the admin validates the values).
_DEFAULTABLE = {
    "openai": ("temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "stop", "seed", "user"),
    "anthropic": ("temperature", "top_p", "max_tokens"),
    "responses": ("temperature", "top_p", "user"),
}


def apply_profile(call: Call, *, global_cap: int | None) -> None:
    """Fill in the tenant's default parameters and hold max_tokens under the ceilings."""
    body = call.body
    tenant = call.caller.tenant
    for name in _DEFAULTABLE[call.client_family]:
        if name in tenant.default_params and name not in body:
            body[name] = tenant.default_params[name]
    if call.client_family == "responses" and "max_tokens" in tenant.default_params and "max_output_tokens" not in body:
        body["max_output_tokens"] = tenant.default_params["max_tokens"]
    if call.client_family == "anthropic" and "stop" in tenant.default_params and "stop_sequences" not in body:
        stop = tenant.default_params["stop"]
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    caps = [cap for cap in (tenant.max_tokens_cap, global_cap) if cap]
    if not caps:
        return
    cap = min(caps)
    field_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if call.client_family == "responses":
        field_name = "max_output_tokens"
    elif call.client_family == "openai" and field_name not in body:
        field_name = "max_completion_tokens"  # accepted by every current chat model, reasoning ones included
    # A request asking for more than the ceiling is served up to the ceiling rather than refused.
    body[field_name] = min(body.get(field_name) or cap, cap)


async def admit_call(call: Call, *, prompt_body: dict | None = None) -> Admission:
    """Take the request's place in its limits (rate, tokens, concurrency, budgets) or refuse it.

    The prompt is held at an upper bound of what it can be billed (`prompt_token_bound`), by the
    catalog model's provider: the deployment is not chosen yet, and settlement corrects the hold.
    `prompt_body`: the prompt in chat terms when the request's body is not (the Responses API).
    """
    tenant, key = call.caller.tenant, call.caller.key
    prompt = call.prompt_estimate = _chain_bound(
        call,
        lambda provider, model: prompt_token_bound(
            call.body if prompt_body is None else prompt_body, provider=provider, model=model
        ),
    )
    if call.client_family == "responses":
        max_output = call.body.get("max_output_tokens")
    else:
        max_output = call.body.get("max_completion_tokens") or call.body.get("max_tokens")
    reserve = max_output if isinstance(max_output, int) else settings.GATEWAY_DEFAULT_OUTPUT_RESERVE
    levels = levels_for(call.caller, call.end_user)
    budgeted = (
        tenant.monthly_budget is not None
        or key.monthly_budget is not None
        or key.daily_budget is not None
        or any(level.monthly_budget is not None or level.daily_budget is not None for level in levels)
    )
    return await admit(
        caller=call.caller,
        request_id=call.request_id,
        prompt_tokens=prompt,
        max_output_tokens=max_output if isinstance(max_output, int) else None,
        # Only a budget reads it (Decimal arithmetic that a caller without one need not pay for).
        worst_case_cost=max(
            worst_case_cost(
                prompt_tokens=prompt,
                max_output_tokens=reserve,
                price=price,
                cache_writes=asks_cache_write(call.body),
            )
            for price in _chain_prices(call)
        )
        if budgeted
        else None,
        budget=tenant.monthly_budget,
        month_to_date=lambda: month_to_date(tenant.id),
        key_budget=key.monthly_budget,
        key_month_to_date=lambda: key_month_to_date(tenant.id, key.id),
        key_daily_budget=key.daily_budget,
        key_spend_since=lambda since: spend_since(tenant.id, since, api_key_id=key.id),
        levels=levels,
    )


def _chain_bound(call: Call, bound) -> int:
    """The admission's prompt bound over the request's chain: `bound(provider, model)` for the
    asked-for model and for each fallback of another provider (whose tokenizer may count more)."""
    prompt = bound(call.model.provider, call.model.name)
    seen = {call.model.provider}
    for leg in call.fallbacks:
        if leg.model.provider not in seen:
            seen.add(leg.model.provider)
            prompt = max(prompt, bound(leg.model.provider, leg.model.name))
    return prompt


def _chain_prices(call: Call):
    """The prices a request may be billed at: the asked-for model's and its fallbacks'. The
    budget hold is the worst case over them all, taken once at admission: a fallback that answers
    never spends beyond what was held, and nothing has to be admitted again halfway through."""
    yield call.price.price
    for leg in call.fallbacks:
        yield leg.price.price


def asks_cache_write(body: dict) -> bool:
    """Whether a request may be billed for writing the provider's prompt cache: Anthropic writes
    only where the request puts a `cache_control` breakpoint (top level, system, tools or message
    blocks). OpenAI's automatic caching bills no writes, and the Chat Completions format has no
    breakpoints, so an OpenAI-format body never asks."""
    if "cache_control" in body:
        return True
    groups = [body.get("system"), body.get("tools")]
    groups.extend(m.get("content") for m in body.get("messages") or () if isinstance(m, dict))
    while groups:
        group = groups.pop()
        if not isinstance(group, list):
            continue
        for block in group:
            if isinstance(block, dict):
                if "cache_control" in block:
                    return True
                groups.append(block.get("content"))  # a tool result's own blocks
    return False


def upstream_body(call: Call, deployment: DeploymentView, family: str) -> dict:
    if family == call.client_family or call.endpoint == "embeddings":  # an Anthropic adapter refuses embeddings
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
        case "unsupported_endpoint":
            return GatewayError(400, f"{who} does not serve this endpoint: {exc.message}.", exc.kind, param="model")
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


async def _first_that_answers(call: Call, deployments: list[DeploymentView], operation, *, body_for=None):
    """Try the request's chain (docs/routing.md#retries-and-fallbacks): the asked-for model's
    deployments in its routing order (gateway/routing/), then each fallback model's (`call.fallbacks`,
    translated when its family differs from the caller's), skipping deployments whose breaker is
    open or whose provider account is at its quota; move on only for failures another deployment
    may not have. When a whole round failed, the failures that may pass are retried after a
    backoff (gateway/routing/retry.py), all within the request's deadline; then the caller gets the
    last upstream error. A stream's attempt stays in flight until the stream is closed, and a
    stream is never retried once it is returned (its first byte may be on its way).
    `body_for(call, deployment, family)`: the upstream body (default: `upstream_body`)."""
    body_for = body_for or upstream_body
    GATEWAY_REQUEST_ID.set(call.request_id)  # sent upstream as x-gateway-request-id
    ANTHROPIC_BETAS.set(call.betas)  # sent as anthropic-beta, by the Anthropic adapter only (gateway/betas.py)
    legs = [Leg(model=call.model, price=call.price, deployments=tuple(deployments)), *call.fallbacks]
    policy, clock = retry.policy(), retry.clock()
    deadline = clock.monotonic() + policy.deadline_seconds
    rounds: list[tuple[int, tuple[DeploymentView, ...]]] = [(i, leg.deployments) for i, leg in enumerate(legs)]
    failure: ProviderError | None = None
    failures: list[retry.Failure] = []
    first_plan: routing.Plan | None = None
    tried = 0  # the leg of the last attempt: the record names its model when nothing answers
    for round_ in range(policy.retries + 1):
        if round_:
            step = policy.next_round(round_, failures, _retry_rng)
            if step is None or clock.monotonic() + step[0] >= deadline:
                break
            await clock.sleep(step[0])
            rounds = _regrouped(step[1])
            failures = []
        for index, leg_deployments in rounds:
            _use_leg(call, legs[index], fallback=index > 0)
            plan = await routing.plan(call, list(leg_deployments))
            first_plan = first_plan or plan
            for deployment in plan.order:
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    _use_leg(call, legs[tried], fallback=tried > 0)
                    raise _deadline_error(call, failure)
                attempt = await plan.take(deployment)
                if attempt is None:
                    continue  # breaker open, or the provider account at its quota
                before = call.deployment, tried
                call.deployment, tried = deployment, index
                try:
                    # A tenant's own provider account (bring your own key) takes precedence over ours.
                    secret, own_base_url = call.caller.tenant.credentials.get(deployment.provider, (None, ""))
                    adapter = adapter_for(
                        deployment.provider,
                        base_url=own_base_url or deployment.base_url,
                        api_key=secret,
                        timeout=deployment.timeout_seconds,
                    )
                    try:
                        body = body_for(call, deployment, adapter.family)
                    except GatewayError:
                        if not index:
                            raise  # the request cannot be sent as asked: a 400 naming the parameter
                        # A fallback of another family that cannot take this request is no answer.
                        attempt.release_soon()
                        call.deployment, tried = before
                        log.info("request %s: fallback %s cannot take this request", call.request_id, call.model_name)
                        break
                    # Written ahead: a process that dies from here on leaves a trace (gateway/journal.py).
                    await journal.trace_open(call=call, ahead=True)
                    call.upstream_asked = True
                    result = await _within(remaining, deployment, operation(adapter, body))
                except ProviderError as exc:
                    failure = exc
                    failures.append(retry.Failure(leg=index, deployment=deployment, error=exc))
                    await attempt.failed(exc)
                    log.warning(
                        "request %s: deployment %s of %s failed: %s",
                        call.request_id,
                        deployment.id,
                        call.model_name,
                        exc.kind,
                    )
                    observability.upstream_failed(
                        tenant=call.caller.tenant.slug,
                        model=call.model_name,
                        provider=deployment.provider,
                        kind=exc.kind,
                    )
                    if not exc.retryable:
                        raise gateway_error(exc) from None
                    continue
                except BaseException:
                    attempt.release_soon()  # a refusal of ours (translation), a bug, a cancelled request
                    raise
                if index:
                    observability.fallback_answered(asked=legs[0].model.name, answered=call.model_name)
                if not hasattr(result, "aclose"):
                    await attempt.answered()
                    return adapter, result
                await attempt.answered(release=False)  # a stream: in flight until it is closed
                return adapter, routing.tracked(result, attempt)
    _use_leg(call, legs[tried], fallback=tried > 0)
    if failure is None:
        raise first_plan.nothing_tried()
    raise gateway_error(failure)


# GATEWAY_ROUTING_SEED makes the backoff's jitter repeatable too.
_retry_rng = random.Random(getattr(settings, "GATEWAY_ROUTING_SEED", None))


def _use_leg(call: Call, leg: Leg, *, fallback: bool) -> None:
    """From now on the request is for `leg`'s model: recorded under its name, billed at its price."""
    call.model, call.model_name, call.price, call.fallen_back = leg.model, leg.model.name, leg.price, fallback


def _regrouped(failures: list[retry.Failure]) -> list[tuple[int, tuple[DeploymentView, ...]]]:
    """The deployments of a retry round, by leg, in the order the legs come in the chain."""
    by_leg: dict[int, list[DeploymentView]] = {}
    for failure in failures:
        by_leg.setdefault(failure.leg, []).append(failure.deployment)
    return [(index, tuple(by_leg[index])) for index in sorted(by_leg)]


async def _within(seconds: float, deployment: DeploymentView, awaitable):
    """`awaitable` (an upstream call) given at most the request's remaining time: past it, a timeout
    of that deployment, like the provider's own."""
    try:
        async with asyncio.timeout(seconds) as scope:
            return await awaitable
    except TimeoutError:
        if not scope.expired():
            raise
        raise ProviderError(
            deployment.provider, 0, "timeout", "the request's deadline passed before the upstream answered", True
        ) from None


def _deadline_error(call: Call, failure: ProviderError | None) -> GatewayError:
    if failure is not None:
        return gateway_error(failure)
    return GatewayError(504, f"No upstream of `{call.requested_model}` answered in time.", "upstream_timeout")


async def complete(call: Call, owner: Owner) -> HttpResponse:
    deployments = await resolve(call)
    await owner.admit(lambda: admit_call(call))
    ttl = call.caller.tenant.response_cache_seconds
    key = cache_key(
        tenant_id=call.caller.tenant.id,
        ttl=ttl,
        family=call.client_family,
        model=call.model_name,
        body=call.body,
        cache_control=call.cache_control,
        betas=call.betas,
    )
    if key is not None:
        cached = await cache_lookup(key, cache_control=call.cache_control)
        call.cache_status = "miss" if cached is None else "hit"
        if cached is not None:
            # Billed at zero; the tokens it would have used, at the price in force, are its saving.
            result = {**cached.response, "model": call.requested_model}
            await owner.finish(Outcome(status=200, tokens=cached.tokens, cache_hit=True, response=result))
            return HttpResponse(orjson.dumps(result), content_type="application/json")
    answer = owner.hand_over(_answer(call, owner, deployments, cache_entry=key, ttl=ttl))
    try:
        return await asyncio.shield(answer)
    except asyncio.CancelledError:
        # The client hung up: the answer is still recorded, with the provider's own numbers, as
        # `client_disconnected` (the task finishes the request itself).
        call.client_gone = True
        raise


async def _answer(call: Call, owner: Owner, deployments: list[DeploymentView], *, cache_entry: str | None, ttl):
    async def operation(adapter: Adapter, body: dict) -> dict:
        return await adapter.complete(body)

    adapter, result = await _first_that_answers(call, deployments, operation)
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
    status, error_type = (499, "client_disconnected") if call.client_gone else (200, "")
    await owner.finish(
        Outcome(status=status, error_type=error_type, tokens=tokens, estimated=estimated, response=result)
    )
    # A hit must know exactly what it saves; a fallback's answer is not the asked-for model's (it
    # would be served for the cache's lifetime after the model is back).
    if not estimated and not call.fallen_back:
        await cache_store(cache_entry, Cached(response=result, tokens=tokens), ttl=ttl)
    return HttpResponse(orjson.dumps(result), content_type="application/json")


# --- embeddings ----------------------------------------------------------------------------------


async def admit_embeddings(call: Call) -> Admission:
    """Like `admit_call`, for an embeddings request: its prompt is the tokens of its input, counted
    with the model family's tokenizer, and it produces no output."""
    tenant, key = call.caller.tenant, call.caller.key
    prompt = call.prompt_estimate = _chain_bound(
        call, lambda provider, model: embedding_input_bound(call.body.get("input"), provider=provider, model=model)
    )
    return await admit(
        caller=call.caller,
        request_id=call.request_id,
        prompt_tokens=prompt,
        max_output_tokens=0,
        worst_case_cost=max(
            worst_case_cost(prompt_tokens=prompt, max_output_tokens=0, price=price, cache_writes=False)
            for price in _chain_prices(call)
        ),
        budget=tenant.monthly_budget,
        month_to_date=lambda: month_to_date(tenant.id),
        key_budget=key.monthly_budget,
        key_month_to_date=lambda: key_month_to_date(tenant.id, key.id),
        key_daily_budget=key.daily_budget,
        key_spend_since=lambda since: spend_since(tenant.id, since, api_key_id=key.id),
        levels=levels_for(call.caller, call.end_user),
    )


async def embed(call: Call, owner: Owner) -> HttpResponse:
    """`POST /v1/embeddings`: OpenAI and Azure deployments, the same routing, limits and metering as
    a chat completion. Not answered from the response cache."""
    deployments = await resolve(call)
    await owner.admit(lambda: admit_embeddings(call))
    answer = owner.hand_over(_embeddings_answer(call, owner, deployments))
    try:
        return await asyncio.shield(answer)
    except asyncio.CancelledError:
        call.client_gone = True  # the task records the provider's answer as `client_disconnected`
        raise


async def _embeddings_answer(call: Call, owner: Owner, deployments: list[DeploymentView]) -> HttpResponse:
    async def operation(adapter: Adapter, body: dict) -> dict:
        return await adapter.embed(body)

    adapter, result = await _first_that_answers(call, deployments, operation)
    if not isinstance(result, dict):  # a provider's answer is untrusted: not ours to turn into a 500
        raise GatewayError(502, f"The upstream provider ({adapter.provider}) failed to answer.", "upstream_error")
    usage = result.get("usage")
    reported = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 0:
        tokens, estimated = Tokens(input=reported), False
    else:
        tokens, estimated = Tokens(input=call.prompt_estimate), True
    result["model"] = call.requested_model
    status, error_type = (499, "client_disconnected") if call.client_gone else (200, "")
    await owner.finish(
        Outcome(status=status, error_type=error_type, tokens=tokens, estimated=estimated, response=_logged(result))
    )
    # The vectors go back as the provider sent them: a base64 `embedding` is its string, unchanged.
    return HttpResponse(orjson.dumps(result), content_type="application/json")


def _logged(result: dict) -> dict:
    """What a tenant's request log keeps of an embeddings answer: everything but the vectors."""
    data = result.get("data")
    if not isinstance(data, list):
        return result
    kept = [{k: v for k, v in item.items() if k != "embedding"} if isinstance(item, dict) else item for item in data]
    return {**result, "data": kept}


async def stream(call: Call, owner: Owner) -> StreamingHttpResponse:
    deployments = await resolve(call)
    await owner.admit(lambda: admit_call(call))

    async def operation(adapter: Adapter, body: dict) -> EventStream:
        return await adapter.open_stream(body)

    adapter, events = await _first_that_answers(call, deployments, operation)
    processor = processor_for(
        client=call.client_family,
        upstream=adapter.family,
        model=call.requested_model,
        include_usage=call.include_usage,
        request_id=call.request_id,
        # Only an Anthropic client of an OpenAI upstream needs it (message_start's input tokens).
        prompt_estimate=estimate_prompt_tokens(call.body)
        if (call.client_family, adapter.family) == ("anthropic", "openai")
        else 0,
    )

    def abandoned() -> Outcome:
        # The client left before the first byte: the provider was streaming to us all the same.
        keep_closing(events)
        return _partial(call, processor, error_type="client_disconnected", status=499)

    response = owner.stream(lambda owner: _relay(call, owner, events, processor), on_abandon=abandoned)
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
    write_1h = reported.cache_write_1h if reported is not None and reported.input else 0
    output = estimate_output_tokens(processor.text)
    return Tokens(input=prompt, cached_input=cached, cache_write=write, cache_write_1h=write_1h, output=output), True


def _partial(call: Call, processor, *, error_type: str, status: int = 200) -> Outcome:
    """A stream that did not end as it should: what was generated so far, estimated."""
    tokens, _ = _stream_tokens(call, processor, complete=False)
    return Outcome(
        status=status,
        error_type=error_type,
        tokens=tokens,
        estimated=True,
        response={"content": processor.text, "incomplete": error_type},
    )


async def _relay(call: Call, owner: Owner, events: EventStream, processor, *, after_recorded=None):
    """The body of a streamed response; it owns the request until it ends, however it ends.
    Nothing is retried once the first byte has gone out. `after_recorded()`: awaited once the
    usage is recorded and before the last frame goes out (it must not raise)."""
    error: tuple[str, str] | None = None
    try:
        try:
            async for batch in _batches(events):
                # The frames of the events that came in one read go out in one write.
                frames: list[bytes] = []
                failure: Exception | None = None
                for event in batch:
                    try:
                        frames.extend(processor.feed(event))
                    except Exception as exc:  # what came before it is still the client's
                        failure = exc
                        break
                if frames:
                    yield frames[0] if len(frames) == 1 else b"".join(frames)
                if failure is not None:
                    raise failure
        except StreamError as exc:
            error = (exc.error_type, exc.message)
        except ProviderError as exc:
            error = ("api_error", f"The upstream provider ({exc.provider}) broke off the stream.")
        finally:
            await _close_quietly(events)
        if error is None and (early := _ended_early(processor)):
            error = ("api_error", early)
        if error is None:
            tokens, estimated = _stream_tokens(call, processor, complete=True)
            outcome = Outcome(status=200, tokens=tokens, estimated=estimated, response={"content": processor.text})
            await owner.finish(outcome)  # committed before the client sees the end
            if after_recorded is not None and owner.recorded:
                await after_recorded()
            # A record kept nowhere (database and journal both down): the client must not take
            # the answer as complete and billed; its SDK raises on the error event.
            frames = processor.finish() if owner.recorded else processor.error_frame("api_error", _unrecorded(call))
        else:
            await owner.finish(_partial(call, processor, error_type="upstream_stream_error"))
            frames = processor.error_frame(*error)
    except Exception as exc:
        # Our own failure mid-stream: the client is told in-band, as the provider would.
        log.error("request %s: the stream failed", call.request_id, exc_info=exc)
        owner.finish_soon(_partial(call, processor, error_type="internal_error"))
        message = f"The gateway failed to finish this stream (request id {call.request_id})."
        frames = processor.error_frame("api_error", message)
    finally:
        # The client went away (the generator is closed or cancelled): count what was generated.
        if not owner.finished:
            owner.finish_soon(_partial(call, processor, error_type="client_disconnected", status=499))
    if frames:
        yield b"".join(frames)


async def _batches(events: EventStream) -> AsyncIterator[list[dict]]:
    """The upstream events in the lists they arrived in (`SSEEventStream.batches`), or one by one."""
    batches = getattr(events, "batches", None)
    if batches is not None:
        async for batch in batches():
            yield batch
        return
    async for event in events:
        yield [event]


def _ended_early(processor) -> str | None:
    """Why a stream that ended without an error is still not a whole answer. Only the Responses
    processors can tell (their stream must end with a `response.completed`, `.incomplete` or
    `.failed` event, or for a translated one Anthropic's `message_delta`/`message_stop`); a chat
    stream cut cleanly is told from a finished one by its missing usage, and recorded estimated."""
    incomplete = getattr(processor, "incomplete", None)
    return incomplete() if incomplete is not None else None


def _unrecorded(call: Call) -> str:
    return f"The gateway failed to finish this response (request id {call.request_id}). It may be retried."


def keep_closing(events: EventStream) -> None:
    keep_alive(asyncio.ensure_future(_close_quietly(events)))


async def _close_quietly(events: EventStream) -> None:
    try:
        await events.aclose()
    except Exception:  # closing a broken connection may fail again; the outcome is already known
        log.debug("closing an upstream stream failed", exc_info=True)
