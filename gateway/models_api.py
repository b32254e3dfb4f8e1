"""`GET /v1/models` and `GET /v1/models/{id}`: the models a key may call, in the caller's SDK's shape (issue 12).

A request that carries an `anthropic-version` header (every Anthropic SDK sends one) gets
Anthropic's shape, errors included; any other gets OpenAI's.

- OpenAI: `{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}`,
  sorted by name; retrieve answers one such object. `created` is the catalog entry's creation
  time (Unix seconds), `owned_by` the provider.
- Anthropic: `{"data": [{"type": "model", "id", "display_name", "created_at", "lifecycle", ...}],
  "has_more", "first_id", "last_id"}`, newest first (as Anthropic lists them), paged with
  `limit` (1-1000, default 20) and `after_id` or `before_id` (the SDK's auto-pagination follows
  `last_id`), filtered by `lifecycle` (every catalog model the gateway serves is `active`).
  `created_at` is the catalog entry's creation time (RFC 3339); `display_name` is derived from
  the name (`display_name()`: "claude-sonnet-4-5" is "Claude Sonnet 4.5"), `max_input_tokens`
  is the catalog's context window when it has one.

Which models: the same rules as a completion's (`proxy.resolve`): the tenant's, narrowed by the
key's own list, with a deployment in the tenant's region, minus what platform policy blocks. A
tenant alias retrieves the model it stands for. Any other name, a model that exists but this key
may not use included, is a 404 in the caller's shape, never a 403 that would confirm it exists.
"""

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .auth import Access, access_check, authenticate
from .errors import GatewayError, anthropic_error_response, bad_request, openai_error_response
from .registry import Caller, ModelView, catalog, policy

LIMIT_DEFAULT, LIMIT_MAX = 20, 1000
LIFECYCLES = ("active", "deprecated", "retired")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ACRONYMS = {"gpt": "GPT", "oss": "OSS", "eu": "EU", "us": "US"}


def display_name(name: str) -> str:
    """A human-readable name: words capitalised, version digits joined with a dot.

    "claude-sonnet-4-5" -> "Claude Sonnet 4.5", "claude-3-opus" -> "Claude 3 Opus",
    "gpt-4o-mini" -> "GPT-4o Mini", "text-embedding-3-small" -> "Text Embedding 3 Small".
    """
    words: list[str] = []
    for part in re.split(r"[-_\s]+", name.strip()):
        if not part:
            continue
        if part.isdigit() and len(part) <= 2 and words and re.fullmatch(r"[0-9.]+", words[-1]):
            words[-1] = f"{words[-1]}.{part}"  # "4", "5" -> "4.5"
        elif part.lower() in _ACRONYMS:
            words.append(_ACRONYMS[part.lower()])
        else:
            words.append(part[:1].upper() + part[1:])
    if len(words) > 1 and words[0] == "GPT":
        words[:2] = [f"GPT-{words[1]}"]
    return " ".join(words) or name


def _created(model: ModelView) -> datetime:
    return model.created_at or EPOCH


def openai_model(model: ModelView) -> dict:
    created = int(_created(model).timestamp())
    return {"id": model.name, "object": "model", "created": created, "owned_by": model.provider}


def anthropic_model(model: ModelView) -> dict:
    created = _created(model).astimezone(UTC).isoformat().replace("+00:00", "Z")
    info = {
        "type": "model",
        "id": model.name,
        "display_name": display_name(model.name),
        "created_at": created,
        "lifecycle": "active",
        "deprecated_at": None,
        "retires_at": None,
    }
    if model.context_window:
        info["max_input_tokens"] = model.context_window
    return info


async def visible_models(caller: Caller) -> list[ModelView]:
    """The models this key may call (the same rules as `proxy.resolve`), by name."""
    access_check(caller, Access.USE)
    rules = await policy()
    return [
        m
        for m in sorted((await catalog()).values(), key=lambda m: m.name)
        if caller.may_use(m)
        and m.deployments_in(caller.tenant.region)
        and m.name not in rules.blocked_models
        and m.provider not in rules.blocked_providers
    ]


def _not_found(model_id: str) -> GatewayError:
    return GatewayError(404, f"The model `{model_id}` does not exist.", "model_not_found", param="model")


def _json(payload: dict) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), content_type="application/json")


def _limit(value: str | None) -> int:
    if value is None:
        return LIMIT_DEFAULT
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= LIMIT_MAX):
        raise bad_request(f"`limit` must be an integer from 1 to {LIMIT_MAX}.", param="limit")
    return int(value)


def anthropic_page(models: list[ModelView], query) -> dict:
    """One page of Anthropic's list: newest first; `after_id` / `before_id` are ids of this list."""
    limit = _limit(query.get("limit"))
    after, before = query.get("after_id"), query.get("before_id")
    if after and before:
        raise bad_request("Send `after_id` or `before_id`, not both.", param="before_id")
    lifecycles = query.getlist("lifecycle[]") + query.getlist("lifecycle")
    wrong = [value for value in lifecycles if value not in LIFECYCLES]
    if wrong:
        raise bad_request(f"`lifecycle` must be one of {', '.join(LIFECYCLES)} (got `{wrong[0]}`).", param="lifecycle")
    ordered = sorted(models, key=lambda m: (_created(m), m.name), reverse=True)
    if lifecycles and "active" not in lifecycles:
        ordered = []  # every model the gateway serves is active
    ids = [m.name for m in ordered]
    for name, value in (("after_id", after), ("before_id", before)):
        if value and value not in ids:
            raise bad_request(f"`{name}` is not the id of a model in this list.", param=name)
    if after:
        rest = ordered[ids.index(after) + 1 :]
        page, has_more = rest[:limit], len(rest) > limit
    elif before:
        rest = ordered[: ids.index(before)]
        page, has_more = rest[-limit:], len(rest) > limit
    else:
        page, has_more = ordered[:limit], len(ordered) > limit
    data = [anthropic_model(m) for m in page]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


async def _models_api(request: HttpRequest, handler: Callable[[Caller, bool], Awaitable[HttpResponse]]):
    anthropic = "anthropic-version" in request.headers
    try:
        if request.method != "GET":
            raise GatewayError(405, "Use GET.", "method_not_allowed", headers={"allow": "GET"})
        return await handler(await authenticate(request), anthropic)
    except GatewayError as error:
        return (anthropic_error_response if anthropic else openai_error_response)(error)


@csrf_exempt  # a POST with a key is a 405 in wire format, not Django's CSRF page
async def models_list(request: HttpRequest) -> HttpResponse:
    async def handler(caller: Caller, anthropic: bool) -> HttpResponse:
        models = await visible_models(caller)
        if anthropic:
            return _json(anthropic_page(models, request.GET))
        return _json({"object": "list", "data": [openai_model(m) for m in models]})

    return await _models_api(request, handler)


@csrf_exempt
async def model_retrieve(request: HttpRequest, model_id: str) -> HttpResponse:
    async def handler(caller: Caller, anthropic: bool) -> HttpResponse:
        name = caller.tenant.model_aliases.get(model_id, model_id)
        model = next((m for m in await visible_models(caller) if m.name == name), None)
        if model is None:
            raise _not_found(model_id)
        return _json(anthropic_model(model) if anthropic else openai_model(model))

    return await _models_api(request, handler)
