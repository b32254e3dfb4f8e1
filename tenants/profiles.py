"""Validation of a tenant's configuration profile and of the platform policy. Pure: no ORM.

The one place that says what a valid `model_aliases`, `default_params`, `max_tokens_cap`,
`log_retention_days`, API key scope and budget (and a key as the key API describes it) or platform
policy is. The staff admin forms and the
configuration file import (config/apply.py) both call these functions, so a value
the admin refuses is refused by the import too, with the same words.

Every check returns a list of `Problem`s (empty: valid). A problem's `path` starts with the
field name, which is also the key in the configuration file, then the key or index inside
the value: ("default_params", "temperature"), ("model_aliases", "fast"), ("blocked_models", 2).
The admin reports a problem on the field `path[0]`; the import prefixes it with the tenant's path.

What a tenant may use is described by a `ModelScope` (the catalog plus the tenant's own
restrictions), built by `tenants.selectors.model_scope()` from the database, or by the import
from the database and the file together.
"""

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from .models import MONEY_DIGITS, Provider, provider_family

PROVIDERS = tuple(sorted(p.value for p in Provider))
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")  # what the config file accepts as a model name
MODEL_NAME_MAX = 100  # CatalogModel.name
ALIASES_MAX = 100
_ALIAS_HINT = f"is not a usable alias (letters, digits, '.', '_', ':', '/', '-'; at most {MODEL_NAME_MAX})"
LOG_RETENTION_DAYS_MAX = 3650
RESPONSE_CACHE_SECONDS_MAX = 7 * 24 * 3600
MAINTENANCE_MESSAGE_MAX = 300  # PlatformPolicy.maintenance_message
INT_MAX = 2_147_483_647  # PositiveIntegerField on PostgreSQL
STOP_MAX = 4  # OpenAI accepts at most 4 stop sequences
STOP_CHARS_MAX = 100
USER_CHARS_MAX = 256
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Problem:
    path: tuple[str | int, ...]
    message: str

    @property
    def field(self) -> str:
        return str(self.path[0])

    @property
    def detail(self) -> str:
        """The message, led by the key inside the field when there is one (for a form field)."""
        inner = self.path[1:]
        if not inner:
            return self.message
        where = "".join(f"[{p}]" if isinstance(p, int) else f"{p}" if i == 0 else f".{p}" for i, p in enumerate(inner))
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class ModelScope:
    """The catalog and one tenant's restrictions on it (after the change being validated).

    `catalog` maps every catalog model name (active or not) to its provider; `models` and
    `providers` are the tenant's allowed sets, empty meaning "every" as on Tenant.
    """

    catalog: Mapping[str, str]
    active: Collection[str]
    models: Collection[str] = field(default_factory=frozenset)
    providers: Collection[str] = field(default_factory=frozenset)

    def refusal(self, name: str) -> str | None:
        """Why this tenant may not use the model `name`, or None when it may."""
        quoted = json.dumps(name)
        if name not in self.catalog:
            return f"unknown model {quoted}"
        if name not in self.active:
            return f"model {quoted} is not active in the catalog"
        if self.models and name not in self.models:
            return f"model {quoted} is not among the tenant's models"
        provider = self.catalog[name]
        if self.providers and provider not in self.providers:
            return f"model {quoted} is served by {provider}, not among the tenant's providers"
        return None


# --- numbers ----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # Decimal comes from the configuration file's parser (floats are parsed as Decimal there).
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    try:
        return isinstance(value, float | Decimal) and math.isfinite(value)
    except (TypeError, ValueError):  # pragma: no cover - a Decimal NaN signalling
        return False


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    # 5.0 from a JSON editor is 5; 5.5 is not an integer.
    return _is_number(value) and not isinstance(value, int) and value == int(value)


def _as_number(value: Any) -> int | float:
    """JSON-storable: Decimal → float (these are sampling parameters, not money), int stays int."""
    if isinstance(value, int):
        return value
    return float(value)


def positive_int_problems(
    value: Any, field_name: str, *, maximum: int = INT_MAX, nullable: bool = True
) -> list[Problem]:
    if value is None and nullable:
        return []
    if not _is_int(value) or not 0 < value <= maximum:
        tail = " (or null for none)" if nullable else ""
        return [Problem((field_name,), f"must be a whole number from 1 to {maximum}{tail}")]
    return []


def positive_money_problems(value: Any, field_name: str, *, digits: Mapping[str, int] = MONEY_DIGITS) -> list[Problem]:
    """A budget: None (none), or a Decimal above zero within `digits`. Never a float: money."""
    if value is None:
        return []
    places = digits["decimal_places"]
    whole = digits["max_digits"] - places
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        return [Problem((field_name,), "must be an amount in USD above zero (or null for none)")]
    if -value.as_tuple().exponent > places:
        return [Problem((field_name,), f"has more than {places} decimal places")]
    if value >= Decimal(10) ** whole:
        return [Problem((field_name,), f"is too large (at most {whole} digits before the decimal point)")]
    return []


# --- default parameters -----------------------------------------------------------------------


def _range(low: float, high: float):
    def check(value: Any) -> str | None:
        if not _is_number(value) or not low <= value <= high:
            return f"must be a number from {low:g} to {high:g}"
        return None

    return check


def _max_tokens(value: Any) -> str | None:
    if not _is_int(value) or not 0 < value <= INT_MAX:
        return "must be a positive whole number"
    return None


def _seed(value: Any) -> str | None:
    if not _is_int(value) or not SEED_MIN <= value <= SEED_MAX:
        return "must be a whole number (64-bit)"
    return None


def _stop(value: Any) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= STOP_MAX:
        return f"must be a string or a list of 1 to {STOP_MAX} strings"
    for item in items:
        if not isinstance(item, str) or not item or len(item) > STOP_CHARS_MAX or "\x00" in item:
            return f"each stop sequence must be a non-empty string of at most {STOP_CHARS_MAX} characters"
    return None


def _user(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > USER_CHARS_MAX or "\x00" in value:
        return f"must be a non-empty string of at most {USER_CHARS_MAX} characters"
    return None


# The parameters a tenant's profile may fill in, and their checks. Anything else (tools,
# response_format, logit_bias, n, stream, model, messages...) changes what a request means or
# costs, and is the caller's to send. Temperature is checked against OpenAI's range (0-2);
# Anthropic models take 0-1 and answer a larger default with a 400 naming the parameter.
DEFAULT_PARAMS: dict[str, Any] = {
    "temperature": _range(0, 2),
    "top_p": _range(0, 1),
    "max_tokens": _max_tokens,
    "presence_penalty": _range(-2, 2),
    "frequency_penalty": _range(-2, 2),
    "stop": _stop,
    "seed": _seed,
    "user": _user,
}


def default_params_clean(value: Any, *, max_tokens_cap: int | None = None) -> tuple[dict, list[Problem]]:
    """(the parameters as stored, problems). Numbers from the file's parser become floats."""
    name = "default_params"
    if not isinstance(value, dict):
        return {}, [Problem((name,), "must be an object of parameter names to values")]
    problems: list[Problem] = []
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        check = DEFAULT_PARAMS.get(key)
        if check is None:
            allowed = ", ".join(DEFAULT_PARAMS)
            problems.append(Problem((name, key), f"is not a parameter a profile may set (allowed: {allowed})"))
            continue
        message = check(item)
        if message is not None:
            problems.append(Problem((name, key), message))
            continue
        if isinstance(item, list):
            cleaned[key] = list(item)
        elif isinstance(item, str):
            cleaned[key] = item
        elif key in ("max_tokens", "seed"):
            cleaned[key] = int(item)
        else:
            cleaned[key] = _as_number(item)
    if not problems:
        problems += default_max_tokens_problems(cleaned, max_tokens_cap=max_tokens_cap)
    return cleaned, problems


def default_max_tokens_problems(params: Mapping[str, Any], *, max_tokens_cap: int | None) -> list[Problem]:
    """A default max_tokens above the tenant's own ceiling is a contradiction, not a default."""
    value = params.get("max_tokens")
    if max_tokens_cap is not None and isinstance(value, int) and value > max_tokens_cap:
        return [Problem(("default_params", "max_tokens"), f"is above the tenant's max_tokens_cap ({max_tokens_cap})")]
    return []


# --- model aliases ----------------------------------------------------------------------------


def model_aliases_shape(value: Any) -> tuple[dict[str, str], list[Problem]]:
    """(the well-formed aliases, problems): names and targets only, no catalog needed."""
    name = "model_aliases"
    if not isinstance(value, dict):
        return {}, [Problem((name,), 'must be an object of alias to catalog model name, e.g. {"fast": "gpt-4o-mini"}')]
    if len(value) > ALIASES_MAX:
        return {}, [Problem((name,), f"at most {ALIASES_MAX} aliases")]
    problems: list[Problem] = []
    good: dict[str, str] = {}
    for alias, target in value.items():
        if not isinstance(alias, str) or len(alias) > MODEL_NAME_MAX or not MODEL_NAME.match(alias):
            problems.append(
                Problem(
                    (name, alias),
                    _ALIAS_HINT,
                )
            )
            continue
        if not isinstance(target, str) or not target:
            problems.append(Problem((name, alias), "must name a catalog model (a string)"))
            continue
        good[alias] = target
    return good, problems


def model_aliases_problems(aliases: Mapping[str, str], *, scope: ModelScope) -> list[Problem]:
    """References of well-formed aliases: each target a model this tenant may use, no alias a
    catalog name (a request for "gpt-4o" must always mean the catalog's gpt-4o)."""
    problems = []
    for alias, target in aliases.items():
        if alias in scope.catalog:
            problems.append(Problem(("model_aliases", alias), "is the name of a catalog model and would shadow it"))
            continue
        refusal = scope.refusal(target)
        if refusal is not None:
            if target in aliases and target not in scope.catalog:
                refusal = f"{json.dumps(target)} is another alias; an alias must name a catalog model"
            problems.append(Problem(("model_aliases", alias), refusal))
    return problems


def model_aliases_clean(value: Any, *, scope: ModelScope) -> tuple[dict[str, str], list[Problem]]:
    aliases, problems = model_aliases_shape(value)
    problems += model_aliases_problems(aliases, scope=scope)
    return aliases, problems


# --- the other profile fields -----------------------------------------------------------------


def profile_problems(
    *,
    scope: ModelScope | None,
    model_aliases: Any = None,
    default_params: Any = None,
    max_tokens_cap: Any = None,
    log_retention_days: Any = 30,
    response_cache_seconds: Any = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """All of a tenant profile at once, as the admin form has it: (cleaned values, problems).

    `scope` None checks the aliases' shape only (their targets were checked when they were set).
    """
    cap_problems = positive_int_problems(max_tokens_cap, "max_tokens_cap")
    problems = cap_problems + positive_int_problems(
        log_retention_days, "log_retention_days", maximum=LOG_RETENTION_DAYS_MAX, nullable=False
    )
    problems += positive_int_problems(
        response_cache_seconds, "response_cache_seconds", maximum=RESPONSE_CACHE_SECONDS_MAX
    )
    aliases, alias_problems = model_aliases_shape({} if model_aliases is None else model_aliases)
    if scope is not None:
        alias_problems += model_aliases_problems(aliases, scope=scope)
    cap = None if cap_problems else max_tokens_cap
    params, param_problems = default_params_clean({} if default_params is None else default_params, max_tokens_cap=cap)
    cleaned = {"model_aliases": aliases, "default_params": params}
    return cleaned, problems + alias_problems + param_problems


# --- API key scope ----------------------------------------------------------------------------


def key_models_problems(names: Collection[str], *, scope: ModelScope) -> list[Problem]:
    """A key's models must be a subset of what its tenant may use (empty: the tenant's)."""
    problems = []
    for name in sorted(names):
        refusal = scope.refusal(name)
        if refusal is not None:
            problems.append(Problem(("allowed_models",), refusal))
    return problems


# --- platform policy --------------------------------------------------------------------------

POLICY_FIELDS = ("blocked_models", "blocked_providers", "killed_providers", "max_tokens_cap", "maintenance_message")


def policy_problems(
    *,
    catalog: Collection[str],
    blocked_models: Any = (),
    blocked_providers: Any = (),
    killed_providers: Any = (),
    max_tokens_cap: Any = None,
    maintenance_message: Any = "",
) -> list[Problem]:
    """Names that exist (catalog models, known providers), each once; a sane cap and message."""
    problems: list[Problem] = []

    def names(value: Any, field_name: str, known: Collection[str], what: str) -> None:
        if not isinstance(value, list | tuple):
            problems.append(Problem((field_name,), "must be a list"))
            return
        seen = set()
        for index, item in enumerate(value):
            if not isinstance(item, str) or item not in known:
                hint = f" (expected one of: {', '.join(PROVIDERS)})" if what == "provider" else ""
                problems.append(Problem((field_name, index), f"unknown {what} {json.dumps(item)}{hint}"))
            elif item in seen:
                problems.append(Problem((field_name, index), f"{json.dumps(item)} is listed twice"))
            seen.add(item if isinstance(item, str) else None)

    names(blocked_models, "blocked_models", catalog, "model")
    names(blocked_providers, "blocked_providers", PROVIDERS, "provider")
    names(killed_providers, "killed_providers", PROVIDERS, "provider")
    problems += positive_int_problems(max_tokens_cap, "max_tokens_cap")
    if not isinstance(maintenance_message, str):
        problems.append(Problem(("maintenance_message",), "must be a string"))
    elif len(maintenance_message) > MAINTENANCE_MESSAGE_MAX or "\x00" in maintenance_message:
        problems.append(Problem(("maintenance_message",), f"must be at most {MAINTENANCE_MESSAGE_MAX} characters"))
    return problems


# --- a catalog model's routing ---------------------------------------------------------------

FAMILY_RULE = "OpenAI and Azure deployments go together, Anthropic ones alone"


def deployment_family_problems(provider: str, deployment_providers: list[str]) -> list[Problem]:
    """Every deployment of a model speaks the model's family (the provider's wire format)."""
    family = provider_family(provider)
    return [
        Problem(
            ("deployments", index, "provider"), f"{item} does not speak the model's family ({provider}): {FAMILY_RULE}"
        )
        for index, item in enumerate(deployment_providers)
        if provider_family(item) != family
    ]


def fallbacks_problems(fallbacks: Any, *, name: str, kind: str, catalog: Mapping[str, str]) -> list[Problem]:
    """A model's fallbacks: a list of other catalog models (`catalog`: name -> kind) of its kind,
    each once. A model never falls back to itself; longer cycles are the router's to stop."""
    if not isinstance(fallbacks, list):
        return [Problem(("fallbacks",), 'must be a list of catalog model names, e.g. ["claude-sonnet-4-5"]')]
    problems, seen = [], set()
    for index, target in enumerate(fallbacks):
        where = ("fallbacks", index)
        if not isinstance(target, str) or not target:
            problems.append(Problem(where, "must be a catalog model name"))
        elif target in seen:
            problems.append(Problem(where, f"{json.dumps(target)} is listed twice"))
        elif target == name:
            problems.append(Problem(where, "a model cannot fall back to itself"))
        elif target not in catalog:
            problems.append(Problem(where, f"unknown model {json.dumps(target)} (not in the catalog)"))
        elif catalog[target] != kind:
            problems.append(
                Problem(where, f"{json.dumps(target)} is a {catalog[target]} model, this one a {kind} model")
            )
        if isinstance(target, str):
            seen.add(target)
    return problems


# --- an API key, as the key API (/v1/keys) describes it --------------------------------------

RATE_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
API_KEY_SPEC_FIELDS = ("name", "project", "rate_limit", "monthly_budget", "daily_budget", "models", "expires_at")
KEY_NAME_MAX = 100  # ApiKey.name
PROJECT_NAME = re.compile(r"^[-a-zA-Z0-9_]+$")  # Project.name is a slug
PROJECT_NAME_MAX = 64
KEY_MODELS_MAX = 500
_MONEY_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def money_text_clean(value: Any, field_name: str) -> tuple[Decimal | None, list[Problem]]:
    """A budget as the configuration file writes money: a decimal string ("2.50") or null. A JSON
    number is refused (money never goes through floats); then `positive_money_problems`."""
    if value is None:
        return None, []
    if isinstance(value, bool) or not isinstance(value, str):
        tail = ", not a JSON number (money never goes through floats)" if isinstance(value, int | float) else ""
        return None, [Problem((field_name,), f'must be a decimal string such as "2.50" (or null for none){tail}')]
    if not _MONEY_TEXT.match(value):
        return None, [Problem((field_name,), f'{json.dumps(value)} is not a plain decimal number such as "2.50"')]
    amount = Decimal(value)
    return amount, positive_money_problems(amount, field_name)


def _expiry_clean(value: Any, *, now: datetime) -> tuple[datetime | None, list[Problem]]:
    if value is None:
        return None, []
    hint = 'must be an ISO 8601 date and time with its offset, e.g. "2027-01-31T00:00:00Z" (or null for never)'
    if not isinstance(value, str) or len(value) > 64:
        return None, [Problem(("expires_at",), hint)]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None, [Problem(("expires_at",), hint)]
    if when.tzinfo is None:
        return None, [Problem(("expires_at",), f"has no offset: {hint}")]
    if when <= now:
        return None, [Problem(("expires_at",), "must be in the future")]
    return when, []


def api_key_spec_clean(body: Any, *, now: datetime) -> tuple[dict[str, Any], list[Problem]]:
    """A key's settings in the configuration file's words (the key API's body), as ApiKey fields:
    (the fields the body gives, problems). Unknown keys are problems, as in the file.

    `rate_limit` gives `requests_per_minute`, `tokens_per_minute` and `max_concurrent` (each one
    given: a whole number, or null for none); budgets are decimal strings; `models` becomes
    `allowed_models`, a list of names (checked against the tenant by `key_models_problems`);
    `project` a name (null: none); `expires_at` an aware datetime in the future (null: never).
    What the body leaves out is not in the result: a new key gets the default, a change keeps it.
    """
    if not isinstance(body, dict):
        return {}, [Problem(("body",), "must be a JSON object")]
    problems: list[Problem] = []
    cleaned: dict[str, Any] = {}
    for key in body:
        if key not in API_KEY_SPEC_FIELDS:
            problems.append(Problem((key,), f"unknown key (expected one of: {', '.join(API_KEY_SPEC_FIELDS)})"))
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > KEY_NAME_MAX or not name.isprintable():
            problems.append(Problem(("name",), f"must be a non-empty string of at most {KEY_NAME_MAX} characters"))
        else:
            cleaned["name"] = name
    if "project" in body:
        project = body["project"]
        if project is not None and (
            not isinstance(project, str) or len(project) > PROJECT_NAME_MAX or not PROJECT_NAME.match(project)
        ):
            problems.append(Problem(("project",), "must be the name of one of the tenant's projects (or null)"))
        else:
            cleaned["project"] = project
    if "rate_limit" in body:
        limits = body["rate_limit"]
        if not isinstance(limits, dict):
            problems.append(Problem(("rate_limit",), f"must be an object with {', '.join(RATE_LIMIT_FIELDS)}"))
            limits = {}
        for key, value in limits.items():
            if key not in RATE_LIMIT_FIELDS:
                expected = ", ".join(RATE_LIMIT_FIELDS)
                problems.append(Problem(("rate_limit", key), f"unknown key (expected one of: {expected})"))
                continue
            found = positive_int_problems(value, key)
            problems += [Problem(("rate_limit", key), p.message) for p in found]
            if not found:
                cleaned[key] = value
    for key in ("monthly_budget", "daily_budget"):
        if key in body:
            amount, found = money_text_clean(body[key], key)
            problems += found
            if not found:
                cleaned[key] = amount
    if "models" in body:
        models = body["models"]
        if not isinstance(models, list) or len(models) > KEY_MODELS_MAX:
            problems.append(Problem(("models",), f"must be a list of at most {KEY_MODELS_MAX} model names"))
        else:
            bad = [i for i, m in enumerate(models) if not isinstance(m, str) or not m or len(m) > MODEL_NAME_MAX]
            problems += [Problem(("models", i), "must be a model name (a string)") for i in bad]
            if not bad:
                cleaned["allowed_models"] = sorted(set(models))
    if "expires_at" in body:
        when, found = _expiry_clean(body["expires_at"], now=now)
        problems += found
        if not found:
            cleaned["expires_at"] = when
    return cleaned, problems


# --- projects and end users (issue 14) -----------------------------------------------------

PROJECTS_MAX = 1000
END_USER_LIMIT_INTS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
END_USER_LIMIT_MONEY = ("monthly_budget", "daily_budget")
END_USER_LIMIT_KEYS = (*END_USER_LIMIT_INTS, *END_USER_LIMIT_MONEY)


def _money(value: Any) -> Any:
    """A budget as the admin's JSON editor or the config file gives it: "1.00" (or a number,
    which JSON parsers hand over as Decimal or int) -> Decimal; anything else as is, refused later."""
    if isinstance(value, str):
        try:
            return Decimal(value.strip()) if _MONEY_TEXT.fullmatch(value.strip()) else value
        except ArithmeticError:  # pragma: no cover - the pattern admits only plain decimals
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return value


def project_problems(
    *,
    name: Any,
    requests_per_minute: Any = None,
    tokens_per_minute: Any = None,
    max_concurrent: Any = None,
    monthly_budget: Any = None,
) -> list[Problem]:
    """A project: a slug name (unique within its tenant: the database says so), positive limits,
    a budget above zero. The same checks in the admin and the configuration file."""
    problems = []
    if not isinstance(name, str) or not PROJECT_NAME.fullmatch(name) or len(name) > PROJECT_NAME_MAX:
        problems.append(
            Problem(("name",), f"must be a slug (letters, digits, '-', '_') of at most {PROJECT_NAME_MAX} characters")
        )
    for field_name, value in (
        ("requests_per_minute", requests_per_minute),
        ("tokens_per_minute", tokens_per_minute),
        ("max_concurrent", max_concurrent),
    ):
        problems += positive_int_problems(value, field_name)
    problems += positive_money_problems(monthly_budget, "monthly_budget")
    return problems


def end_user_limits_clean(value: Any) -> tuple[dict, list[Problem]]:
    """Tenant.end_user_limits: each of the tenant's end users' limits, all optional:
    {"requests_per_minute": 20, "tokens_per_minute": 20000, "max_concurrent": 2,
    "monthly_budget": "1.00", "daily_budget": "0.10"}. Cleaned: nulls dropped, budgets as
    decimal strings (JSON holds no Decimal). Returns (cleaned, problems)."""
    if value is None or value == {}:
        return {}, []
    if not isinstance(value, dict):
        return {}, [Problem(("end_user_limits",), "must be an object (or {} for none)")]
    problems = [
        Problem(("end_user_limits", key), f"is not a limit; allowed: {', '.join(END_USER_LIMIT_KEYS)}")
        for key in value
        if key not in END_USER_LIMIT_KEYS
    ]
    cleaned: dict[str, Any] = {}
    for key in END_USER_LIMIT_INTS:
        if value.get(key) is None:
            continue
        found = positive_int_problems(value[key], key)
        problems += [Problem(("end_user_limits", key), p.message) for p in found]
        if not found:
            cleaned[key] = int(value[key])
    for key in END_USER_LIMIT_MONEY:
        if value.get(key) is None:
            continue
        amount = _money(value[key])
        found = positive_money_problems(amount, key)
        problems += [Problem(("end_user_limits", key), p.message) for p in found]
        if not found:
            cleaned[key] = f"{amount:f}"
    return cleaned, problems
