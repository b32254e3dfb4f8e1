"""Prompt templates and request logs, as a tenant sees them through the API.

Rendering is pure (no ORM, no I/O): `template_render` substitutes `{{name}}` placeholders and
nothing else. There is no expression language on purpose: no attribute access, no filters, no
code, so a template or a variable can never reach anything but the text it sits in. Values are
substituted in one pass, so a value that itself contains `{{other}}` stays literal text.

The reads and writes below are plain synchronous ORM functions, each meant to be called in one
`sync_to_async` hop by the async views. Every query is filtered by `tenant_id` first: another
tenant's template or log is indistinguishable from one that does not exist.
"""

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.db import transaction
from django.db.models import Max, Min, OuterRef, Q, Subquery

from .models import PromptTemplate, RequestLog, Tenant

ROLES = frozenset({"system", "developer", "user", "assistant"})
MESSAGES_MAX = 100
MESSAGES_MAX_BYTES = 64 * 1024  # of the messages serialized as JSON
DESCRIPTION_MAX = 200  # PromptTemplate.description
RENDERED_MAX_CHARS = 4 * 1024 * 1024  # a 64 KiB template times large variables must not grow without bound
VARIABLE_VALUE_MAX_CHARS = 256 * 1024
TEMPLATES_MAX_PER_TENANT = 1000
VERSIONS_MAX_PER_TEMPLATE = 1000

LOGS_LIMIT_DEFAULT = 20
LOGS_LIMIT_MAX = 100

_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")  # what PromptTemplate.name (a SlugField) accepts
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
# Anything between double braces. A `{{` that is not a plain `{{name}}` is refused when the
# template is saved: `{{ user.name }}` or `{{ x|upper }}` would otherwise reach the model as
# literal text, and the author would never learn that nothing was substituted.
_BRACED = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A template or its variables are unusable. `param` names the offending request field."""

    def __init__(self, message: str, *, param: str, code: str = "invalid_template") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# --- rendering (pure) ------------------------------------------------------------------------


def _texts(message: dict) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
    return []


def template_variables(messages: list[dict]) -> set[str]:
    """The names of the `{{name}}` placeholders in these messages."""
    return {match.group(1) for message in messages for text in _texts(message) for match in _PLACEHOLDER.finditer(text)}


def _variable_values(variables: Any, expected: set[str]) -> dict[str, str]:
    param = "template.variables"
    if not isinstance(variables, dict):
        raise TemplateError("`template.variables` must be an object of names to strings or numbers.", param=param)
    missing = sorted(expected - variables.keys())
    if missing:
        raise TemplateError(f"Missing template variable(s): {', '.join(missing)}.", param=param)
    # Unknown names are refused rather than ignored: they are almost always a typo of a name the
    # template uses, and ignoring them would send the model a prompt the caller did not mean.
    unknown = sorted(str(name) for name in variables.keys() - expected)
    if unknown:
        raise TemplateError(
            f"Unknown template variable(s): {', '.join(unknown)}; the template uses: "
            f"{', '.join(sorted(expected)) or 'none'}.",
            param=param,
        )
    values = {}
    for name, value in variables.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TemplateError(f"Template variable `{name}` must be a string or a number.", param=param)
        text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
        if len(text) > VARIABLE_VALUE_MAX_CHARS:
            raise TemplateError(
                f"Template variable `{name}` is longer than {VARIABLE_VALUE_MAX_CHARS} characters.", param=param
            )
        values[name] = text
    return values


def template_render(*, messages: list[dict], variables: dict, max_chars: int = RENDERED_MAX_CHARS) -> list[dict]:
    """The messages with every `{{name}}` replaced by its variable, as new objects.

    Every placeholder needs a variable and every variable a placeholder (TemplateError with
    param "template.variables" otherwise). Only string contents and the text of text parts
    are touched; other parts and fields are copied as they are.
    """
    values = _variable_values(variables, template_variables(messages))
    size = 0

    def substitute(text: str) -> str:
        nonlocal size
        rendered = _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
        size += len(rendered)
        if size > max_chars:
            raise TemplateError(
                f"The rendered template would be longer than {max_chars} characters.",
                param="template.variables",
                code="template_too_large",
            )
        return rendered

    rendered = []
    for message in messages:
        copy = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            copy["content"] = substitute(content)
        elif isinstance(content, list):
            copy["content"] = [
                {**part, "text": substitute(part["text"])}
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        rendered.append(copy)
    return rendered


def _check_text(text: str, param: str) -> None:
    if "\x00" in text:
        # PostgreSQL cannot store NUL in text or jsonb; refused here, it is a 400 and not a 500.
        raise TemplateError(f"`{param}` must not contain NUL characters.", param=param)
    for match in _BRACED.finditer(text):
        if not _PLACEHOLDER.fullmatch(match.group(0)):
            raise TemplateError(
                f"`{match.group(0)[:80]}` is not a placeholder: use `{{{{name}}}}` with a name of letters, "
                "digits and underscores (no expressions, attributes or filters).",
                param=param,
            )


def template_validate_messages(messages: Any) -> list[dict]:
    """Template messages as stored: roles, contents of strings or text parts, size limits."""
    if not isinstance(messages, list) or not messages:
        raise TemplateError("`messages` must be a non-empty array.", param="messages")
    if len(messages) > MESSAGES_MAX:
        raise TemplateError(f"A template has at most {MESSAGES_MAX} messages.", param="messages")
    if len(orjson.dumps(messages)) > MESSAGES_MAX_BYTES:
        raise TemplateError(f"A template's messages take at most {MESSAGES_MAX_BYTES} bytes as JSON.", param="messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise TemplateError(f"`{param}` must be an object.", param=param)
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise TemplateError(f"`{param}` has unknown field(s): {', '.join(extra)}.", param=param)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or an object is not hashable
            raise TemplateError(f"`{param}.role` must be one of {', '.join(sorted(ROLES))}.", param=f"{param}.role")
        if "name" in message:
            if not isinstance(message["name"], str) or not message["name"]:
                raise TemplateError(f"`{param}.name` must be a non-empty string.", param=f"{param}.name")
            _check_text(message["name"], f"{param}.name")
        content = message.get("content")
        if isinstance(content, str):
            _check_text(content, f"{param}.content")
            continue
        if not isinstance(content, list) or not content:
            raise TemplateError(
                f"`{param}.content` must be a string or a non-empty array of text parts.", param=f"{param}.content"
            )
        for part_index, part in enumerate(content):
            part_param = f"{param}.content[{part_index}]"
            if (
                not isinstance(part, dict)
                or set(part) != {"type", "text"}
                or part["type"] != "text"
                or not isinstance(part["text"], str)
            ):
                raise TemplateError(f'`{part_param}` must be {{"type": "text", "text": "..."}}.', param=part_param)
            _check_text(part["text"], part_param)
    return messages


def template_validate_name(name: Any, *, param: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TemplateError(
            f"`{param}` must be 1 to 100 letters, digits, hyphens or underscores.", param=param, code="invalid_name"
        )
    return name


# --- templates: reads ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateSummary:
    name: str
    latest_version: int
    description: str
    created_at: datetime  # of version 1
    updated_at: datetime  # of the latest version


def template_list(*, tenant_id: int) -> list[TemplateSummary]:
    """This tenant's templates, one entry per name with its latest version, in one query."""
    latest = PromptTemplate.objects.filter(tenant_id=tenant_id, name=OuterRef("name")).order_by("-version")
    rows = (
        PromptTemplate.objects.filter(tenant_id=tenant_id)
        .values("name")
        .annotate(
            latest_version=Max("version"),
            first_created_at=Min("created_at"),
            last_created_at=Max("created_at"),
            latest_description=Subquery(latest.values("description")[:1]),
        )
        .order_by("name")
    )
    return [
        TemplateSummary(
            name=row["name"],
            latest_version=row["latest_version"],
            description=row["latest_description"] or "",
            created_at=row["first_created_at"],
            updated_at=row["last_created_at"],
        )
        for row in rows
    ]


def template_get(*, tenant_id: int, name: str, version: int | None = None) -> PromptTemplate | None:
    """One version of this tenant's template (the latest when `version` is None), or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None  # could not have been saved; and a NUL would make PostgreSQL fail the query
    if version is not None and not (isinstance(version, int) and 0 < version < 2**31):
        return None
    qs = PromptTemplate.objects.filter(tenant_id=tenant_id, name=name)
    if version is not None:
        return qs.filter(version=version).first()
    return qs.order_by("-version").first()


def template_resolve(*, tenant_id: int, name: str, version: int | None = None) -> PromptTemplate | None:
    """The template a completion request names: this tenant's, the latest version unless given.

    None for an unknown name or version and for another tenant's template alike.
    """
    return template_get(tenant_id=tenant_id, name=name, version=version)


# --- templates: writes -----------------------------------------------------------------------


def template_create_version(
    *, tenant_id: int, name: str, messages: Any, description: str | None = None
) -> PromptTemplate:
    """Add the next version of a template (version 1 for a new name) after validating it.

    `description` None keeps the previous version's. Versions are immutable, so this is the
    only way to change a template.
    """
    template_validate_name(name)
    messages = template_validate_messages(messages)
    if description is not None and (
        not isinstance(description, str) or len(description) > DESCRIPTION_MAX or "\x00" in description
    ):
        raise TemplateError(
            f"`description` must be a string of at most {DESCRIPTION_MAX} characters.", param="description"
        )
    with transaction.atomic():
        # The tenant row serialises version numbering: two concurrent saves of one name would
        # otherwise both pick n+1 and one would fail on the unique constraint.
        Tenant.objects.select_for_update().filter(id=tenant_id).values_list("id").first()
        previous = (
            PromptTemplate.objects.filter(tenant_id=tenant_id, name=name)
            .order_by("-version")
            .values("version", "description")
            .first()
        )
        if previous is None:
            if PromptTemplate.objects.filter(tenant_id=tenant_id).values("name").distinct().count() >= (
                TEMPLATES_MAX_PER_TENANT
            ):
                raise TemplateError(
                    f"A tenant has at most {TEMPLATES_MAX_PER_TENANT} templates; delete one first.",
                    param="name",
                    code="too_many_templates",
                )
        elif previous["version"] >= VERSIONS_MAX_PER_TEMPLATE:
            raise TemplateError(
                f"A template has at most {VERSIONS_MAX_PER_TEMPLATE} versions; delete it and start again.",
                param="name",
                code="too_many_versions",
            )
        return PromptTemplate.objects.create(
            tenant_id=tenant_id,
            name=name,
            version=1 if previous is None else previous["version"] + 1,
            description=description if description is not None else (previous or {}).get("description", ""),
            messages=messages,
        )


def template_delete(*, tenant_id: int, name: str) -> int:
    """Delete every version of this tenant's template; the number of versions deleted (0: none)."""
    deleted, _ = PromptTemplate.objects.filter(tenant_id=tenant_id, name=name).delete()
    return deleted


# --- request logs ----------------------------------------------------------------------------


class CursorError(ValueError):
    pass


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def logs_cursor_encode(*, created_at: datetime, log_id: int) -> str:
    """An opaque cursor for the row after which the next page starts."""
    # Whole microseconds, not float seconds: a rounded cursor would skip or repeat a row.
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(orjson.dumps([micros, log_id])).decode().rstrip("=")


def logs_cursor_decode(cursor: str) -> tuple[datetime, int]:
    """(created_at, id) of the last row of the previous page. CursorError when malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        micros, log_id = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise CursorError("malformed cursor") from exc
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in (micros, log_id)):
        raise CursorError("malformed cursor")
    try:
        return _EPOCH + timedelta(microseconds=micros), log_id
    except OverflowError as exc:
        raise CursorError("malformed cursor") from exc


LOG_FIELDS = ("id", "request_id", "created_at", "model", "endpoint", "status_code", "request", "response")


@dataclass(frozen=True, slots=True)
class LogsPage:
    logs: list[dict]  # LOG_FIELDS of each row, newest first
    has_more: bool
    next_cursor: str | None


def request_logs_page(
    *,
    tenant_id: int,
    limit: int = LOGS_LIMIT_DEFAULT,
    after: tuple[datetime, int] | None = None,
    model: str | None = None,
    status_code: int | None = None,
    errors_only: bool | None = None,
) -> LogsPage:
    """One page of this tenant's request logs, newest first, keyset-paginated on (created_at, id).

    `after` is a decoded cursor; `errors_only` True keeps status >= 400, False keeps the rest.
    """
    qs = RequestLog.objects.filter(tenant_id=tenant_id)
    if model:
        qs = qs.filter(model=model)
    if status_code is not None:
        qs = qs.filter(status_code=status_code)
    if errors_only is True:
        qs = qs.filter(status_code__gte=400)
    elif errors_only is False:
        qs = qs.filter(status_code__lt=400)
    if after is not None:
        created_at, log_id = after
        qs = qs.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=log_id))
    rows = list(qs.order_by("-created_at", "-id").values(*LOG_FIELDS)[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = logs_cursor_encode(created_at=rows[-1]["created_at"], log_id=rows[-1]["id"]) if has_more else None
    return LogsPage(logs=rows, has_more=has_more, next_cursor=next_cursor)


def request_log_get(*, tenant_id: int, request_id: str) -> dict | None:
    """LOG_FIELDS of this tenant's log of that request, or None (unknown or another tenant's)."""
    return RequestLog.objects.filter(tenant_id=tenant_id, request_id=request_id).values(*LOG_FIELDS).first()
