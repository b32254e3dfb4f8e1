"""The tenant's own data over REST: prompt templates and request logs (docs/design.md#rest-endpoints, #security).

Plain async Django class-based views. The tenant key is checked in each handler through
`auth.authenticate`, the same cached look-up as the completion endpoints; bodies and query
parameters are parsed by `gateway.schemas` (pydantic, like the completion endpoints); every read
or write is one `sync_to_async` hop into `tenants.prompting`, whose queries are all scoped by the
caller's tenant. So another tenant's template or log is a 404, exactly like one that does not
exist. Every error leaves in the OpenAI shape through `openai_error_response`.

Why not DRF (adrf): these views used none of what it offers. Authentication, permissions,
parsers, renderers and content negotiation were all switched off or overridden, and its
serializers would be a second way of validating next to the pydantic models the hot path needs
for speed. What remained was method dispatch and an exception hook, which `TenantAPIView`
below does in a few lines; adrf and djangorestframework are no longer dependencies.
"""

import logging

import orjson
from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from tenants import prompting
from tenants.models import PromptTemplate

from . import schemas
from .auth import Access, authenticate
from .errors import GatewayError, bad_request, openai_error_response
from .throttle import tenant_rate_limited

log = logging.getLogger(__name__)


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


@method_decorator(csrf_exempt, name="dispatch")  # a key, not a cookie, authenticates: no CSRF to guard
class TenantAPIView(View):
    """Base of the endpoints on a tenant's own objects: key in the handler, OpenAI-shaped errors.

    Subclasses list their methods in `http_method_names` and implement them as async handlers.
    """

    http_method_names: list[str] = []

    async def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            method = request.method.lower()
            if method not in self.http_method_names:
                allowed = ", ".join(m.upper() for m in self.http_method_names)
                raise GatewayError(405, f"Use {allowed}.", "method_not_allowed", headers={"allow": allowed})
            return await getattr(self, method)(request, *args, **kwargs)
        except Exception as exc:
            return self.handle_exception(exc)

    def handle_exception(self, exc: Exception) -> HttpResponse:
        if isinstance(exc, GatewayError):
            error = exc
        elif isinstance(exc, prompting.TemplateError):
            error = bad_request(exc.message, param=exc.param, code=exc.code)
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
        spec = schemas.parse_template_create(body)
        template = await sync_to_async(prompting.template_create_version)(
            tenant_id=caller.tenant.id,
            name=spec.name,
            # The caller's own JSON is stored, exactly as sent; the parse above vouches for its shape.
            messages=body["messages"],
            description=spec.description,
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


class LogsView(TenantAPIView):
    """GET: this tenant's request logs, newest first, with a cursor to the next page."""

    http_method_names = ["get"]

    @tenant_rate_limited("gw-api-logs")
    async def get(self, request, *args, **kwargs) -> HttpResponse:
        caller = await authenticate(request, access=Access.READ)
        query = schemas.parse_logs_query(request.GET.dict())
        page = await sync_to_async(prompting.request_logs_page)(
            tenant_id=caller.tenant.id, limit=query.limit, after=query.after, model=query.model, **query.status
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
