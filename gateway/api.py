"""The tenant's own data over REST: prompt templates and request logs (DESIGN §6, §9).

Async DRF views (adrf). DRF's authentication classes are not used: the tenant key is checked
in each handler through `auth.authenticate`, the same cached look-up as the completion
endpoints, and every read or write is one `sync_to_async` hop into `tenants.prompting`, whose
queries are all scoped by the caller's tenant. So another tenant's template or log is a 404,
exactly like one that does not exist. Every error, DRF's own included, leaves in the OpenAI
shape through `openai_error_response`.
"""

import logging

import orjson
from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import APIException, MethodNotAllowed
from rest_framework.renderers import JSONRenderer

from tenants import prompting
from tenants.models import PromptTemplate

from .auth import Access, authenticate
from .errors import GatewayError, bad_request, openai_error_response
from .throttle import tenant_rate_limited

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = frozenset({"name", "description", "messages"})


def _json(payload: object, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def _json_object(request: HttpRequest) -> dict:
    try:
        body = orjson.loads(request.body)
    except RequestDataTooBig as exc:
        raise GatewayError(413, "The request body is too large.", "request_too_large") from exc
    except orjson.JSONDecodeError as exc:
        raise bad_request("The request body is not valid JSON.", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _not_found(what: str) -> GatewayError:
    # The same words whether the thing never existed or belongs to another tenant.
    return GatewayError(404, f"{what} not found.", "not_found")


class TenantAPIView(APIView):
    """Base of the endpoints on a tenant's own objects: key in the handler, OpenAI-shaped errors."""

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request, force=False):
        # Every answer is JSON built by the handler; an odd `Accept` header changes nothing.
        return JSONRenderer(), JSONRenderer.media_type

    def handle_exception(self, exc: Exception) -> HttpResponse:
        if isinstance(exc, GatewayError):
            error = exc
        elif isinstance(exc, prompting.TemplateError):
            error = bad_request(exc.message, param=exc.param, code=exc.code)
        elif isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(m.upper() for m in self.http_method_names if hasattr(self, m))
            error = GatewayError(405, f"Use {allowed}.", "method_not_allowed", headers={"allow": allowed})
        elif isinstance(exc, APIException):
            # DRF's own refusals (unparsable body, unsupported media type): its message, our shape.
            error = GatewayError(exc.status_code, str(exc.detail), str(exc.default_code))
        else:
            log.error("%s %s failed", self.request.method, self.request.path, exc_info=exc)
            # Nothing of the exception reaches the client: no stack, no SQL.
            error = GatewayError(500, "The gateway failed to handle this request.", "internal_error")
        return openai_error_response(error)


# --- templates -------------------------------------------------------------------------------


def _template_body(template: PromptTemplate) -> dict:
    return {
        "name": template.name,
        "version": template.version,
        "description": template.description,
        "messages": template.messages,
        "variables": sorted(prompting.template_variables(template.messages)),
        "created_at": template.created_at,
    }


def _template_name(name: str) -> str:
    try:
        return prompting.template_validate_name(name)
    except prompting.TemplateError:
        raise _not_found("Template") from None  # a name that cannot exist does not exist


class TemplatesView(TenantAPIView):
    """GET: this tenant's templates. POST: a new template, or the next version of one."""

    http_method_names = ["get", "post"]

    @tenant_rate_limited("gw-api-templates")
    async def get(self, request, *args, **kwargs) -> HttpResponse:
        caller = await authenticate(request, access=Access.READ)
        templates = await sync_to_async(prompting.template_list)(tenant_id=caller.tenant.id)
        data = [
            {
                "name": t.name,
                "latest_version": t.latest_version,
                "description": t.description,
                "created_at": t.created_at,
                "updated_at": t.updated_at,
            }
            for t in templates
        ]
        return _json({"object": "list", "data": data})

    @tenant_rate_limited("gw-api-templates")
    async def post(self, request, *args, **kwargs) -> HttpResponse:
        caller = await authenticate(request, access=Access.WRITE)
        body = _json_object(request)
        unknown = sorted(body.keys() - TEMPLATE_FIELDS)
        if unknown:
            raise bad_request(f"Unknown field(s): {', '.join(unknown)}.", param=unknown[0])
        if "name" not in body:
            raise bad_request("`name` is required.", param="name")
        template = await sync_to_async(prompting.template_create_version)(
            tenant_id=caller.tenant.id,
            name=body["name"],
            messages=body.get("messages"),
            description=body.get("description"),
        )
        return _json(_template_body(template), status=201)


class TemplateView(TenantAPIView):
    """GET: the latest version of a template. DELETE: every version of it."""

    http_method_names = ["get", "delete"]

    @tenant_rate_limited("gw-api-templates")
    async def get(self, request, name: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.READ)
        template = await sync_to_async(prompting.template_get)(tenant_id=caller.tenant.id, name=_template_name(name))
        if template is None:
            raise _not_found("Template")
        return _json(_template_body(template))

    @tenant_rate_limited("gw-api-templates")
    async def delete(self, request, name: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.WRITE)
        deleted = await sync_to_async(prompting.template_delete)(tenant_id=caller.tenant.id, name=_template_name(name))
        if not deleted:
            raise _not_found("Template")
        return HttpResponse(status=204)


class TemplateVersionView(TenantAPIView):
    """GET: one version of a template."""

    http_method_names = ["get"]

    @tenant_rate_limited("gw-api-templates")
    async def get(self, request, name: str, version: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.READ)
        name = _template_name(name)
        if not version.isascii() or not version.isdigit() or not 0 < int(version) < 2**31:
            raise _not_found("Template version")
        template = await sync_to_async(prompting.template_get)(
            tenant_id=caller.tenant.id, name=name, version=int(version)
        )
        if template is None:
            raise _not_found("Template version")
        return _json(_template_body(template))


# --- request logs ----------------------------------------------------------------------------


def _log_body(row: dict) -> dict:
    return {
        "id": row["request_id"],
        "created_at": row["created_at"],
        "model": row["model"],
        "endpoint": row["endpoint"],
        "status_code": row["status_code"],
        "request": row["request"],
        "response": row["response"],
    }


def _limit(request: HttpRequest) -> int:
    value = request.GET.get("limit")
    if value is None:
        return prompting.LOGS_LIMIT_DEFAULT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= prompting.LOGS_LIMIT_MAX:
        raise bad_request(f"`limit` must be an integer from 1 to {prompting.LOGS_LIMIT_MAX}.", param="limit")
    return int(value)


def _status_filter(request: HttpRequest) -> dict:
    value = request.GET.get("status")
    if not value:
        return {}
    if value in ("error", "success"):
        return {"errors_only": value == "error"}
    if value.isascii() and value.isdigit() and 100 <= int(value) <= 599:
        return {"status_code": int(value)}
    raise bad_request("`status` must be an HTTP status code, `error` or `success`.", param="status")


class LogsView(TenantAPIView):
    """GET: this tenant's request logs, newest first, with a cursor to the next page."""

    http_method_names = ["get"]

    @tenant_rate_limited("gw-api-logs")
    async def get(self, request, *args, **kwargs) -> HttpResponse:
        caller = await authenticate(request, access=Access.READ)
        limit = _limit(request)
        after = None
        if cursor := request.GET.get("after"):
            try:
                after = prompting.logs_cursor_decode(cursor)
            except prompting.CursorError:
                raise bad_request("`after` is not a cursor this endpoint returned.", param="after") from None
        model = request.GET.get("model") or None
        if model is not None and "\x00" in model:
            raise bad_request("`model` must not contain NUL characters.", param="model")
        page = await sync_to_async(prompting.request_logs_page)(
            tenant_id=caller.tenant.id, limit=limit, after=after, model=model, **_status_filter(request)
        )
        return _json(
            {
                "object": "list",
                "data": [_log_body(row) for row in page.logs],
                "has_more": page.has_more,
                "next_cursor": page.next_cursor,
            }
        )


class LogView(TenantAPIView):
    """GET: the log of one request of this tenant."""

    http_method_names = ["get"]

    @tenant_rate_limited("gw-api-logs")
    async def get(self, request, request_id: str) -> HttpResponse:
        caller = await authenticate(request, access=Access.READ)
        if len(request_id) > 64 or "\x00" in request_id:  # could not be stored: no such log
            raise _not_found("Request log")
        row = await sync_to_async(prompting.request_log_get)(tenant_id=caller.tenant.id, request_id=request_id)
        if row is None:
            raise _not_found("Request log")
        return _json(_log_body(row))
