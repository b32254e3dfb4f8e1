"""Who inside a tenant a request is for: its end user and its tags (docs/limits.md#levels).

- The end user is the caller's own user id: the header `x-end-user-id`, else OpenAI's and the
  Responses API's `user`, else Anthropic's `metadata.user_id`. It is recorded on the usage
  record (a keyed HMAC of it when the tenant's profile says `hash_end_user_ids`: stable, so
  that limits, budgets and reports still group by it) and counts against the tenant's
  `end_user_limits`.
- Tags come from `x-request-tags: feature=chat,env=prod`: at most 10 `key=value` pairs.

Both are checked before anything is admitted: a bad one is a 400 naming the field or header,
in the caller's wire format.
"""

import hashlib
import hmac
import re
from collections.abc import Mapping

from django.conf import settings

from .errors import GatewayError
from .limits import Level
from .registry import Caller, spend_since

END_USER_HEADER = "x-end-user-id"
TAGS_HEADER = "x-request-tags"
END_USER_MAX = 256  # UsageRecord.end_user, and Anthropic's own limit of metadata.user_id
TAGS_MAX = 10
TAG_PART_MAX = 64
TAG_KEY = re.compile(r"[A-Za-z0-9_.:-]+")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def _end_user_error(where: str, message: str) -> GatewayError:
    return GatewayError(400, f"Invalid end user id in {where}: {message}", "invalid_end_user", param=where)


def end_user_check(value: object, where: str) -> str:
    """The end user id if it is one: 1 to 256 printable characters (no control characters, not
    only spaces). Clients put what they like there (an email, a UUID, Claude Code a small JSON
    object), and the id never becomes part of a Redis key as is (gateway/limits/keys.py), so the
    charset is that wide on purpose."""
    if not isinstance(value, str):
        raise _end_user_error(where, "it must be a string.")
    if not 0 < len(value) <= END_USER_MAX:
        raise _end_user_error(where, f"it must be 1 to {END_USER_MAX} characters long.")
    if not value.isprintable() or not value.strip():
        raise _end_user_error(where, "it must be printable text (no control characters, not only spaces).")
    return value


def end_user_of(headers: Mapping[str, str], body: dict, family: str) -> str:
    """The request's end user id as sent (the header wins), checked; "" when there is none. An
    empty one (or only spaces) is none: the providers accept `"user": ""`, and so do we."""
    header = headers.get(END_USER_HEADER)
    if header is not None and header.strip():
        return end_user_check(header.strip(), END_USER_HEADER)
    if family == "anthropic":
        metadata = body.get("metadata")
        value, where = (metadata.get("user_id"), "metadata.user_id") if isinstance(metadata, dict) else (None, "")
    else:
        value, where = body.get("user"), "user"
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return end_user_check(value, where)


def end_user_recorded(end_user: str, *, tenant_id: int, hashed: bool) -> str:
    """What the usage record keeps: the id, or its HMAC-SHA256 (hex) under GATEWAY_END_USER_HASH_KEY
    and the tenant's id, so one id hashes alike for one tenant always and differently across tenants."""
    if not end_user or not hashed:
        return end_user
    key = settings.GATEWAY_END_USER_HASH_KEY.encode()
    return hmac.new(key, f"{tenant_id}:{end_user}".encode(), hashlib.sha256).hexdigest()


def tags_of(headers: Mapping[str, str]) -> dict[str, str]:
    """`x-request-tags: feature=chat,env=prod` -> {"feature": "chat", "env": "prod"}; {} without the header."""
    raw = headers.get(TAGS_HEADER)
    if raw is None or not raw.strip():
        return {}
    tags: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key or not value:
            raise _tags_error(f"`{pair.strip()[:80]}` is not a key=value pair.")
        if len(key) > TAG_PART_MAX or not TAG_KEY.fullmatch(key):
            raise _tags_error(
                f"the key `{key[:80]}` must be 1 to {TAG_PART_MAX} ASCII letters, digits or _ . : - characters."
            )
        if len(value) > TAG_PART_MAX or not TAG_VALUE.fullmatch(value):
            raise _tags_error(
                f"the value of `{key}` must be 1 to {TAG_PART_MAX} ASCII letters, digits or _ . : / @ + - characters."
            )
        if key in tags:
            raise _tags_error(f"the key `{key}` appears twice.")
        tags[key] = value
        if len(tags) > TAGS_MAX:
            raise _tags_error(f"at most {TAGS_MAX} tags are allowed.")
    return tags


def _tags_error(message: str) -> GatewayError:
    return GatewayError(
        400,
        f"Invalid {TAGS_HEADER} header: {message} Expected: key=value,key=value.",
        "invalid_tags",
        param=TAGS_HEADER,
    )


def levels_for(caller: Caller, end_user: str) -> list[Level]:
    """The levels beyond the tenant and the key that limit this request: the key's project and
    the end user (`end_user` as recorded), each only when it has a limit or a budget."""
    tenant, key = caller.tenant, caller.key
    levels = []
    project = key.project
    if project is not None and project.limited:
        levels.append(
            Level(
                kind="project",
                ident=project.id,
                name=project.name,
                requests_per_minute=project.requests_per_minute,
                tokens_per_minute=project.tokens_per_minute,
                max_concurrent=project.max_concurrent,
                monthly_budget=project.monthly_budget,
                spend_since=lambda since: spend_since(tenant.id, since, project_id=project.id),
            )
        )
    limits = tenant.end_user_limits
    if end_user and limits is not None:
        levels.append(
            Level(
                kind="end_user",
                ident=end_user,
                requests_per_minute=limits.requests_per_minute,
                tokens_per_minute=limits.tokens_per_minute,
                max_concurrent=limits.max_concurrent,
                monthly_budget=limits.monthly_budget,
                daily_budget=limits.daily_budget,
                spend_since=lambda since: spend_since(tenant.id, since, end_user=end_user),
            )
        )
    return levels
