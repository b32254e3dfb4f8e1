"""The REST gateway (docs/design.md#rest-endpoints). Thin: authenticate, validate, hand over to `proxy`, render errors.

The completion endpoints are plain async Django views rather than DRF views: they need no
content negotiation, and on the hot path DRF's request wrapping costs more than it gives.
"""

import asyncio
import itertools
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from billing.selectors import UsageGroupingUnavailable, usage_summary
from proxy_platform.replicas import reading_replica
from tenants.prompting import TemplateError, template_render, template_resolve

from . import attribution, betas, observability, proxy, responses, schemas
from . import count_tokens as count_tokens_service
from .auth import Access, access_check, authenticate
from .db import db_call
from .errors import GatewayError, anthropic_error_response, bad_request, openai_error_response, with_request_id
from .lifecycle import Call, Owner, internal_error, owned
from .registry import Caller
from .throttle import tenant_rate_limited

log = logging.getLogger(__name__)


# Request ids: 32 hex digits like a uuid4's, from 80 random bits per process (drawn again in a
# forked child) and a counter, rather than a uuid4 per request (os.urandom, a system call).
_ids = itertools.count(1)
_id_prefix = secrets.token_hex(10)


def _new_id_prefix() -> None:
    global _id_prefix, _ids
    _id_prefix, _ids = secrets.token_hex(10), itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def _request_id() -> str:
    return f"{_id_prefix}{next(_ids):012x}"


def _json_body(request: HttpRequest) -> dict:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.GATEWAY_MAX_BODY_BYTES:
        raise GatewayError(413, "The request body is too large.", "request_too_large")
    try:
        body = orjson.loads(request.body)
    except RequestDataTooBig as exc:
        raise GatewayError(413, "The request body is too large.", "request_too_large") from exc
    except orjson.JSONDecodeError as exc:
        raise bad_request("The request body is not valid JSON.", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _validate_chat(body: dict) -> schemas.ChatRequest:
    return schemas.parse_chat(body)


def _validate_messages(body: dict) -> schemas.MessagesRequest:
    return schemas.parse_messages(body)


Validator = Callable[
    [dict],
    schemas.ChatRequest
    | schemas.MessagesRequest
    | schemas.CountTokensRequest
    | schemas.EmbeddingsRequest
    | schemas.ResponsesRequest,
]
_PARSERS: dict[str, Validator] = {
    "openai": schemas.parse_chat,
    "anthropic": schemas.parse_messages,
}


async def _expand_template(caller: Caller, body: dict, family: str) -> None:
    """Put a stored template's messages, variables filled in, before the request's own messages.

    The body is parsed before the template is expanded, so that an error in the caller's own
    messages names the index the caller sent; the expanded body is parsed again by the view.
    """
    spec = _PARSERS[family](body).template
    body.pop("template")
    if spec is None:
        return  # `"template": null` asks for no template, like any other optional field set to null
    name = spec["name"]
    template = await db_call(template_resolve, tenant_id=caller.tenant.id, name=name, version=spec.get("version"))
    if template is None:
        # Another tenant's template of the same name is, for this tenant, simply not there.
        raise GatewayError(404, f"The template `{name}` does not exist.", "template_not_found", param="template")
    try:
        rendered = template_render(messages=template.messages, variables=spec.get("variables") or {})
    except TemplateError as exc:
        raise bad_request(str(exc), param=exc.param or "template.variables") from exc
    own = body.get("messages") or []
    if family == "anthropic":
        system = [m["content"] for m in rendered if m.get("role") in ("system", "developer")]
        rendered = [m for m in rendered if m.get("role") not in ("system", "developer")]
        if system and "system" not in body:
            body["system"] = "\n\n".join(c if isinstance(c, str) else _text_parts(c) for c in system)
    body["messages"] = rendered + own


def _text_parts(content: list) -> str:
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


Serve = Callable[[Call, Owner], Awaitable[HttpResponse]]


async def _proxied(call: Call, owner: Owner) -> HttpResponse:
    return await (proxy.stream(call, owner) if call.stream else proxy.complete(call, owner))


async def _completion(
    request: HttpRequest,
    *,
    endpoint: str,
    family: str,
    validate: Validator,
    render: Callable[[GatewayError], HttpResponse],
    serve: Serve = _proxied,
    billable: bool = True,
) -> HttpResponse:
    """Parse, run under the request's owner (gateway.lifecycle), render. `serve` answers the
    parsed call; by default a completion (`proxy.complete`, or `proxy.stream` when it streams)."""
    request_id = _request_id()
    try:
        if request.method != "POST":
            raise GatewayError(405, "Use POST.", "method_not_allowed")
        caller = await authenticate(request)
    except Exception as exc:
        error = exc if isinstance(exc, GatewayError) else internal_error(request_id, exc)
        observability.request_unattributed(request, request_id=request_id, endpoint=endpoint, error=error)
        return with_request_id(render(error), request_id)
    observability.request_attributed(request, tenant=caller.tenant.slug)
    call = Call(request_id=request_id, endpoint=endpoint, client_family=family, caller=caller, billable=billable)
    try:
        async with owned(call) as owner:
            await _parse(request, call, validate)
            response = await serve(call, owner)
    except GatewayError as error:
        response = render(error)
    for name, value in owner.headers.items():
        response.setdefault(name, value)
    if response.status_code < 400 and call.model is not None:
        # Which catalog model answered (a fallback's name when one did) and on which deployment
        # (its id: never its base URL or key). Set before a stream's first byte.
        response["x-gateway-model"] = call.model_name
        if call.deployment is not None:
            response["x-gateway-deployment"] = str(call.deployment.id)
    if call.cache_status:
        response["x-cache"] = call.cache_status
    return with_request_id(response, request_id)


async def _parse(request: HttpRequest, call: Call, validate: Validator) -> None:
    body = _json_body(request)
    if isinstance(body.get("model"), str):
        call.requested_model = call.model_name = body["model"]
    if call.client_family == "anthropic":
        call.betas = betas.parse_betas(request.headers.get(betas.HEADER))
    # Only chat and messages take a template (a token count and embeddings refuse `template` in their
    # parsers; the Responses API has none).
    if "template" in body and call.endpoint in ("chat", "messages"):
        await _expand_template(call.caller, body, call.client_family)
    parsed = validate(body)
    call.body = body  # the caller's own JSON goes upstream, as sent: the parse vouches for its shape
    call.stream = parsed.stream is True  # `"stream": null` is no stream
    call.cache_control = request.headers.get("cache-control", "").lower()
    call.include_usage = parsed.include_usage
    end_user = attribution.end_user_of(request.headers, body, call.client_family)
    tenant = call.caller.tenant
    call.end_user = attribution.end_user_recorded(end_user, tenant_id=tenant.id, hashed=tenant.hash_end_user_ids)
    call.tags = attribution.tags_of(request.headers)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await _completion(
        request, endpoint="chat", family="openai", validate=_validate_chat, render=openai_error_response
    )


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponse:
    return await _completion(
        request, endpoint="messages", family="anthropic", validate=_validate_messages, render=anthropic_error_response
    )


@csrf_exempt
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """`POST /v1/messages/count_tokens` (gateway/count_tokens.py): not billed, admitted, Anthropic's shape."""
    return await _completion(
        request,
        endpoint="count_tokens",
        family="anthropic",
        validate=schemas.parse_count_tokens,
        render=anthropic_error_response,
        serve=count_tokens_service.count_tokens,
        billable=False,
    )


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    """`POST /v1/embeddings` (proxy.embed): embedding models only, billed from the provider's usage."""
    return await _completion(
        request,
        endpoint="embeddings",
        family="openai",
        validate=schemas.parse_embeddings,
        render=openai_error_response,
        serve=proxy.embed,
    )


@csrf_exempt
async def responses_create(request: HttpRequest) -> HttpResponse:
    """`POST /v1/responses` (gateway/responses.py)."""
    return await _completion(
        request,
        endpoint="responses",
        family="responses",
        validate=schemas.parse_responses,
        render=openai_error_response,
        serve=responses.create,
    )


@csrf_exempt
@tenant_rate_limited("gw-api-responses")
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    """`GET` or `DELETE /v1/responses/{id}`: this tenant's response only (another's is a 404)."""

    async def handler(caller: Caller) -> HttpResponse:
        if request.method == "DELETE":
            access_check(caller, Access.WRITE)
            return _json_response(await responses.delete(caller, response_id))
        access_check(caller, Access.READ)
        return _json_response(await responses.retrieve(caller, response_id))

    return await _openai_api(request, handler, methods=("GET", "DELETE"))


@csrf_exempt
@tenant_rate_limited("gw-api-responses")
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    """`GET /v1/responses/{id}/input_items?limit=&order=&after=`."""

    async def handler(caller: Caller) -> HttpResponse:
        access_check(caller, Access.READ)
        return _json_response(await responses.input_items(caller, response_id, request.GET.dict()))

    return await _openai_api(request, handler)


def _json_response(payload: dict) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), content_type="application/json")


async def _openai_api(
    request: HttpRequest, handler: Callable[[Caller], Awaitable[HttpResponse]], *, methods: tuple[str, ...] = ("GET",)
) -> HttpResponse:
    try:
        if request.method not in methods:
            raise GatewayError(405, f"Use {' or '.join(methods)}.", "method_not_allowed")
        return await handler(await authenticate(request))
    except GatewayError as error:
        return openai_error_response(error)


@csrf_exempt  # a POST with a key is a 405 in wire format, not Django's CSRF page
@tenant_rate_limited("gw-api-usage")
async def usage(request: HttpRequest) -> HttpResponse:
    async def handler(caller: Caller) -> HttpResponse:
        access_check(caller, Access.READ)
        params = request.GET.dict()
        start, end = schemas.parse_usage_query(params)
        grouping = schemas.parse_usage_grouping(params)
        # db_call: bounded by GATEWAY_DB_TIMEOUT; a database that is down is a 503 in JSON (middleware).
        # A report, not a decision: read on the replica when there is one (docs/database.md).
        try:
            with reading_replica():
                summary = await db_call(
                    usage_summary, tenant_id=caller.tenant.id, start=start, end=end, grouping=grouping
                )
        except UsageGroupingUnavailable as exc:
            raise bad_request(str(exc), param="group_by") from None
        summary["tenant"] = caller.tenant.slug
        return HttpResponse(orjson.dumps(summary, default=str), content_type="application/json")

    return await _openai_api(request, handler)


@csrf_exempt  # an SDK's POST to an endpoint we lack is a 404 in wire format, not a CSRF page
async def unknown_endpoint(request: HttpRequest) -> HttpResponse:
    error = GatewayError(404, f"Unknown endpoint: {request.method} {request.path}", "unknown_endpoint")
    return (anthropic_error_response if request.path.startswith("/v1/messages") else openai_error_response)(error)


async def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


# A probe must answer in time even when a service hangs (a connection pool waits 30 s for a
# connection): each check gets this long, then counts as unreachable.
READY_TIMEOUT_SECONDS = 2.0
# The database check runs on a thread of its own, outside any request: a check stuck in the driver
# then holds neither a request's thread (Django runs middleware on it) nor a shared executor's.
_READY_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")
_database_check: Future | None = None


def _check_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # back to the pool: this thread only ever runs probes


async def _database_ready() -> None:
    global _database_check
    if _database_check is None or _database_check.done():
        _database_check = _READY_EXECUTOR.submit(_check_database)
    # While a check is still stuck, later probes wait on that one instead of queueing more.
    await asyncio.wrap_future(_database_check)


async def _redis_ready() -> None:
    from proxy_platform import redis_clients

    client = redis_clients.async_client(
        settings.REDIS_URL, socket_timeout=READY_TIMEOUT_SECONDS, socket_connect_timeout=READY_TIMEOUT_SECONDS
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a check given up on may still fail later: nothing left to report


async def _probe(name: str, check: Awaitable[None]) -> str:
    task = asyncio.ensure_future(check)
    task.add_done_callback(_retrieve)
    # asyncio.wait, not wait_for: the latter waits for the cancelled check to finish.
    done, _ = await asyncio.wait({task}, timeout=READY_TIMEOUT_SECONDS)
    if not done:
        task.cancel()
        log.warning("readiness: %s did not answer within %s s", name, READY_TIMEOUT_SECONDS)
        return "unreachable"
    if task.exception() is not None:
        log.warning("readiness: %s check failed", name, exc_info=task.exception())
        return "unreachable"
    return "ok"


async def readyz(request: HttpRequest) -> HttpResponse:
    """Ready when the database (PostgreSQL) answers a query and Redis, when configured, a PING."""
    probes = {"database": _database_ready()}
    if settings.REDIS_URL:
        probes["redis"] = _redis_ready()
    checks = dict(zip(probes, await asyncio.gather(*(_probe(n, p) for n, p in probes.items())), strict=True))
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition (gateway/observability.py), behind GATEWAY_METRICS_TOKEN."""
    if not observability.metrics_authorized(request):
        if settings.GATEWAY_METRICS_TOKEN:
            response = JsonResponse({"error": "Send `Authorization: Bearer <GATEWAY_METRICS_TOKEN>`."}, status=401)
            response["www-authenticate"] = "Bearer"
            return response
        return JsonResponse({"error": "Set GATEWAY_METRICS_TOKEN to read /metrics."}, status=403)
    # Reading every process's file is blocking I/O: off the event loop.
    body = await sync_to_async(observability.metrics_text, thread_sensitive=False)()
    return HttpResponse(body, content_type=observability.CONTENT_TYPE)
