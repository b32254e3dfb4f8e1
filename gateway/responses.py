"""The OpenAI Responses API: `POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items` (docs/responses.md).

A request goes the way of a chat completion (`gateway.proxy`: policy, admission, routing with
fallback, the request's owner recording and settling once), with these differences:
- OpenAI and Azure models are forwarded natively (`OpenAIAdapter.responses_*`); an Anthropic model
  is translated (`gateway.translate_responses`), and the gateway keeps its conversation itself.
- Every response the tenant may come back to is a `tenants.StoredResponse` row: for a native one,
  whose it is and which deployment holds it; for a translated one, its input items and the
  response object. A `previous_response_id` (and GET, DELETE, input_items) is looked up by tenant
  (another tenant's id is a 404, the same as an unknown one); a native continuation goes to the
  deployment that holds the response (or, for another model, its deployment on the same provider
  account) and nowhere else (no fallback), a translated one rebuilds the history from the chain
  of stored rows.
- Usage records carry endpoint `responses`; the Responses usage shape is metered by
  `metering.tokens_from_responses` (reasoning tokens are inside `output_tokens`, billed as output).
- No response cache: a response is an object with an id that the tenant may retrieve or continue.
"""

import asyncio
import logging

import orjson
from django.http import HttpResponse

from billing.pricing import Tokens
from tenants.selectors import stored_response_chain, stored_response_get
from tenants.services import stored_response_delete, stored_response_save

from . import proxy, translate_responses
from .db import db_call
from .errors import GatewayError, bad_request
from .lifecycle import Call, Outcome, Owner
from .metering import estimate_prompt_tokens, tokens_from_anthropic, tokens_from_responses
from .providers import Adapter, EventStream, ProviderError, adapter_for
from .registry import Caller, DeploymentView
from .streams import ResponsesPassthrough

log = logging.getLogger(__name__)

__all__ = ["create", "delete", "input_items", "retrieve"]

INPUT_ITEMS_LIMIT_MAX = 100


class _Request:
    """What one POST /v1/responses carries beyond the `Call`: the conversation it continues."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.history: list[dict] = []  # earlier turns kept by the gateway (translated models)
        self.response_id = f"resp_{call.request_id}"  # the id of a translated model's response
        self.created_at = int(call.created_at.timestamp())

    def upstream_body(self, call: Call, deployment: DeploymentView, family: str) -> dict:
        if family == "openai":
            return {**call.body, "model": deployment.upstream}
        try:
            return translate_responses.responses_request_to_anthropic(
                call.body, upstream_model=deployment.upstream, history=self.history
            )
        except translate_responses.TranslationError as exc:
            raise GatewayError(400, str(exc), "unsupported_parameter", param=exc.param) from exc

    def prompt_body(self) -> dict:
        """The prompt in chat terms, for the admission's bound (`tokenizer.prompt_token_bound`)."""
        body = self.call.body
        given = body.get("input")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        return {
            "messages": self.history + items,
            "system": body.get("instructions"),
            "tools": body.get("tools"),
            "tool_choice": body.get("tool_choice"),
            "response_format": body.get("text"),
        }


async def create(call: Call, owner: Owner) -> HttpResponse:
    """`POST /v1/responses`, JSON or streamed, under the request's owner."""
    request = _Request(call)
    deployments = await proxy.resolve(call)
    deployments = await _route(request, deployments)
    await owner.admit(lambda: proxy.admit_call(call, prompt_body=request.prompt_body()))
    if call.stream:
        return await _stream(request, owner, deployments)
    answer = owner.hand_over(_answer(request, owner, deployments))
    try:
        return await asyncio.shield(answer)
    except asyncio.CancelledError:
        call.client_gone = True  # the task records the answer as `client_disconnected`
        raise


async def _route(request: _Request, deployments: list[DeploymentView]) -> list[DeploymentView]:
    """The deployments this request may go to: with a `previous_response_id`, only the one that
    holds it, or one on the same provider account (native), or any of the model's (the gateway
    holds the conversation)."""
    call = request.call
    previous_id = call.body.get("previous_response_id")
    if previous_id is None:
        return deployments
    call.fallbacks = ()  # no other model knows the conversation (nor is it held for them at admission)
    tenant_id = call.caller.tenant.id
    previous = await db_call(stored_response_get, tenant_id=tenant_id, response_id=previous_id)
    if previous is None:
        raise _not_found(previous_id, param="previous_response_id", what="Previous response")
    translated = call.model.provider == "anthropic"
    if previous.kept_by_gateway:
        if not translated:
            raise bad_request(
                f"The response `{previous_id}` was made by a model the gateway translates; continue it with "
                "an Anthropic model.",
                param="previous_response_id",
            )
        chain = await db_call(stored_response_chain, tenant_id=tenant_id, response_id=previous_id)
        if chain is None:
            raise _not_found(previous_id, param="previous_response_id", what="A response of this conversation")
        for row in chain:
            request.history += list(row.input_items or []) + list((row.response or {}).get("output") or [])
        return deployments
    # The deployment that made it, else one on the same provider account (provider and endpoint):
    # a provider keeps responses per account, and another of its models may continue one.
    holding = [d for d in deployments if d.id == previous.deployment_id]
    if not holding and previous.deployment is not None:
        account = (previous.deployment.provider, previous.deployment.base_url)
        holding = [d for d in deployments if (d.provider, d.base_url) == account][:1]
    if translated or not holding:
        raise bad_request(
            f"The response `{previous_id}` is held by a deployment this request cannot use; continue it "
            f"with the model `{previous.model}`.",
            param="previous_response_id",
        )
    return holding  # no fallback: no other deployment knows the conversation


def _not_found(response_id: str, *, param: str | None = None, what: str = "Response") -> GatewayError:
    return GatewayError(404, f"{what} with id '{response_id}' not found.", "response_not_found", param=param)


async def _answer(request: _Request, owner: Owner, deployments: list[DeploymentView]) -> HttpResponse:
    call = request.call

    async def operation(adapter: Adapter, body: dict) -> dict:
        if adapter.family == "openai":
            return await adapter.responses_create(body)
        return await adapter.complete(body)

    adapter, result = await proxy._first_that_answers(call, deployments, operation, body_for=request.upstream_body)
    usage = result.get("usage")
    if adapter.family == "openai":
        tokens = tokens_from_responses(usage) if isinstance(usage, dict) else None
        result["model"] = call.requested_model
    else:
        tokens = tokens_from_anthropic(usage) if isinstance(usage, dict) else None
        result = translate_responses.anthropic_message_to_response(
            result,
            model=call.requested_model,
            response_id=request.response_id,
            request=call.body,
            created_at=request.created_at,
        )
    estimated = tokens is None
    if tokens is None:
        tokens = Tokens(input=estimate_prompt_tokens(call.body))
    status, error_type = (499, "client_disconnected") if call.client_gone else (200, "")
    await owner.finish(
        Outcome(status=status, error_type=error_type, tokens=tokens, estimated=estimated, response=result)
    )
    await _keep(request, result, translated=adapter.family != "openai")
    return HttpResponse(orjson.dumps(result), content_type="application/json")


async def _stream(request: _Request, owner: Owner, deployments: list[DeploymentView]) -> HttpResponse:
    call = request.call

    async def operation(adapter: Adapter, body: dict) -> EventStream:
        if adapter.family == "openai":
            return await adapter.responses_stream(body)
        return await adapter.open_stream(body)

    adapter, events = await proxy._first_that_answers(call, deployments, operation, body_for=request.upstream_body)
    translated = adapter.family != "openai"
    if translated:
        processor = translate_responses.AnthropicToResponsesStream(
            model=call.requested_model,
            response_id=request.response_id,
            request=call.body,
            created_at=request.created_at,
        )
    else:
        processor = ResponsesPassthrough(model=call.requested_model)

    def abandoned() -> Outcome:
        proxy.keep_closing(events)
        return proxy._partial(call, processor, error_type="client_disconnected", status=499)

    async def kept() -> None:
        if processor.response is not None:
            await _keep(request, processor.response, translated=translated)

    response = owner.stream(
        lambda owner: proxy._relay(call, owner, events, processor, after_recorded=kept), on_abandon=abandoned
    )
    response["cache-control"] = "no-cache"
    response["x-accel-buffering"] = "no"
    return response


async def _keep(request: _Request, response: dict, *, translated: bool) -> None:
    """The stored row of a response the tenant may come back to (unless `store` is false). Never
    raises: the answer is recorded and billed already; a row that cannot be written only means
    the tenant cannot retrieve or continue it (logged)."""
    call = request.call
    response_id = response.get("id")
    if call.body.get("store") is False or not isinstance(response_id, str) or call.deployment is None:
        return
    try:
        await db_call(
            stored_response_save,
            tenant_id=call.caller.tenant.id,
            response_id=response_id,
            api_key_id=call.caller.key_id,
            model=call.requested_model,
            deployment_id=call.deployment.id,
            created_at=call.created_at,
            kept_by_gateway=translated,
            previous_response_id=call.body.get("previous_response_id") or "",
            input_items=translate_responses.input_items(call.body) if translated else None,
            response=response if translated else None,
        )
    except Exception:
        log.exception("request %s: stored response %s could not be written", call.request_id, response_id)


# --- GET / DELETE / input_items ---------------------------------------------------------------------


async def _held(caller: Caller, response_id: str):
    row = await db_call(stored_response_get, tenant_id=caller.tenant.id, response_id=response_id)
    if row is None or (not row.kept_by_gateway and row.deployment is None):
        raise _not_found(response_id)
    return row


def _adapter(caller: Caller, row) -> Adapter:
    deployment = row.deployment
    secret, own_base_url = caller.tenant.credentials.get(deployment.provider, (None, ""))
    try:
        return adapter_for(deployment.provider, base_url=own_base_url or deployment.base_url, api_key=secret)
    except ProviderError as exc:
        raise proxy.gateway_error(exc) from exc


async def _upstream(row, caller: Caller, operation):
    """One read or delete at the deployment that holds the response; its 404 is ours."""
    try:
        return await operation(_adapter(caller, row))
    except ProviderError as exc:
        if exc.status == 404:
            raise _not_found(row.response_id) from exc
        raise proxy.gateway_error(exc) from exc


async def retrieve(caller: Caller, response_id: str) -> dict:
    row = await _held(caller, response_id)
    if row.kept_by_gateway:
        return row.response
    result = await _upstream(row, caller, lambda adapter: adapter.responses_get(response_id))
    result["model"] = row.model
    return result


async def delete(caller: Caller, response_id: str) -> dict:
    row = await _held(caller, response_id)
    if not row.kept_by_gateway:
        try:
            await _upstream(row, caller, lambda adapter: adapter.responses_delete(response_id))
        except GatewayError as error:
            if error.status != 404:  # gone upstream already: forget it here too
                raise
    await db_call(stored_response_delete, tenant_id=caller.tenant.id, response_id=response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def parse_list_query(params: dict[str, str]) -> dict[str, str]:
    """`limit` (1-100, default 20), `order` (`asc` or `desc`, default `desc`), `after` (an item id)."""
    limit = params.get("limit", "20")
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= INPUT_ITEMS_LIMIT_MAX):
        raise bad_request(f"`limit` must be an integer from 1 to {INPUT_ITEMS_LIMIT_MAX}.", param="limit")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("`order` must be 'asc' or 'desc'.", param="order")
    query = {"limit": limit, "order": order}
    if params.get("after"):
        query["after"] = params["after"]
    return query


async def input_items(caller: Caller, response_id: str, params: dict[str, str]) -> dict:
    query = parse_list_query(params)
    row = await _held(caller, response_id)
    if not row.kept_by_gateway:
        return await _upstream(row, caller, lambda adapter: adapter.responses_input_items(response_id, query))
    items = list(row.input_items or [])
    if query["order"] == "desc":
        items.reverse()
    if "after" in query:
        ids = [item.get("id") for item in items]
        items = items[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
    page = items[: int(query["limit"])]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > len(page),
    }
