"""The tenant configuration file: its format (a CONTRACT, docs/design.md#the-configuration-file)
and its validation. Applying it is config/apply.py, exporting it config/export.py.

It is a package of its own, above billing and tenants, because the file carries prices, plans
and budgets as well as tenant settings: it reads and writes both apps, and neither imports it.

The format
----------
A JSON object with three optional sections. Unknown keys anywhere are errors. Money and
prices are decimal STRINGS ("2.50"): a JSON number is refused, so no float ever touches money.
Lists (`providers`, `models`) are sets: order and the export's sorting mean nothing.

    {
      "models": {                          # optional: the platform ships a default catalog
                                           # (billing/migrations/0002_default_catalog.py)
        "<model name>": {                  # the name clients send, e.g. "gpt-4o"
          "provider": "openai" | "anthropic" | "azure",
          "kind": "chat" | "embedding",    # extension, optional; a new model defaults to "chat".
                                           # An embedding model serves only /v1/embeddings (OpenAI
                                           # and Azure), a chat model every other endpoint
          "upstream": "<provider model id, or the Azure deployment name>",
          "region": "eu",                  # "" = any region
          "input_per_1m": "2.50",          # USD per 1M tokens
          "output_per_1m": "10.00",
          "cached_input_per_1m": "1.25",   # optional; null = no discount (input price)
          "cache_write_per_1m": null,      # optional: a 5-minute cache write; null = input price
          "cache_write_1h_per_1m": null,   # extension, optional: a 1-hour cache write;
                                           # null = the cache_write_per_1m price
          "tiers": [                       # extension, optional: long-context prices; [] = none
            {"above_input_tokens": 200000, # a request whose input (cache reads and writes
                                           # included) is above this is billed WHOLLY at the
                                           # tier's prices (the highest tier it reaches)
             "input_per_1m": "6.00", "output_per_1m": "22.50",   # required
             "cached_input_per_1m": "0.60", "cache_write_per_1m": "7.50",
             "cache_write_1h_per_1m": "12.00"}  # optional, null: fall back as above, within the tier
          ],
          "routing": "priority",           # optional: priority | weighted | least_busy | latency | cost
          "fallbacks": ["claude-sonnet-4-5"],  # optional: catalog models tried in order when every
                                           # deployment failed; ORDERED (the export keeps the order)
          "affinity": "prefix" | null,     # optional: prompt-cache affinity; null or "" = none
          "deployments": [                 # optional: the model's WHOLE list of deployments;
                                           # replaces "upstream" and "region" (both = an error)
            {"provider": "openai", "upstream": "gpt-4o",  # required
             "region": "us",               # "" = any
             "base_url": "https://…" | null,  # null = the platform endpoint (staff only: SSRF)
             "priority": 0,                # lower first; absent = the entry's index in the list
             "weight": 1,                  # positive; the share under "weighted"
             "requests_per_minute": 500 | null, "tokens_per_minute": 200000 | null,
                                           # the provider account's quota (null = none)
             "timeout_seconds": 60 | null,  # 0.1..3600; null = GATEWAY_UPSTREAM_TIMEOUT
             "breaker_failures": 3 | null,  # 1..10000; the circuit breaker's own settings for
             "breaker_window_seconds": 10 | null,    # this deployment, 0.1..86400 seconds;
             "breaker_cooldown_seconds": 60 | null}  # absent or null = GATEWAY_BREAKER_*
          ]
        }
      },
      "plans": {                           # extension, optional
        "<plan slug>": {
          "description": "", "currency": "USD",
          "monthly_base_fee": "250.00", "included_allowance": "100.00",
          "markup_percent": "20.00", "default_monthly_budget": "1000.00" | null
        }
      },
      "tenants": {
        "<tenant slug>": {
          "name": "Tenant A",              # extension; a new tenant defaults to its slug, titled
          "status": "active" | "suspended",  # extension
          "api_key": "ta_xxx",             # stored hashed only; never exported
          "providers": ["openai", "anthropic"],  # [] = every provider
          "rate_limit": {"requests_per_minute": 100, "tokens_per_minute": 200000,
                         "max_concurrent": 20},  # each positive integer, or null = no limit
          "models": ["gpt-4", "claude-3-opus"],  # [] = every active catalog model
          "billing_plan": "enterprise",     # required for a new tenant
          "monthly_budget": "500.00" | null,  # null = the plan's default budget
          "region": "us",                  # "" = any; pins the tenant to deployments there
          "model_aliases": {"fast": "gpt-4o-mini"},  # extension: the tenant's own names for
                                           # catalog models it may use; an alias never shadows
                                           # a catalog name
          "default_params": {"temperature": 0.2},  # extension: filled in when a request leaves
                                           # them out; only temperature, top_p, max_tokens,
                                           # presence_penalty, frequency_penalty, stop, seed, user
          "max_tokens_cap": 4096 | null,   # extension: ceiling on max_tokens (null: none)
          "log_requests": false,           # extension: keep prompts and responses
          "log_retention_days": 30,        # extension: 1..3650, request logs older are deleted
          "response_cache_seconds": 300 | null  # extension: identical non-streaming requests are
                                           # answered from the tenant's cache this long (null: off)
        }
      },
      "policy": {                          # extension, optional: rules over every tenant
        "blocked_models": ["gpt-4"],       # catalog model names refused for everyone (403)
        "blocked_providers": ["azure"],    # providers refused for everyone (403)
        "killed_providers": [],            # kill switch: deployments skipped (503 if none left)
        "max_tokens_cap": 8192 | null,     # ceiling on max_tokens for everyone
        "maintenance_message": ""          # non-empty: every gateway request gets 503 with it
      }
    }

The tenant profile (model_aliases, default_params, max_tokens_cap, log_retention_days) and the
policy are validated by tenants.profiles, the same checks as the staff admin. An alias must
name a model the tenant may use after the import (its models and providers, from the file or
the database); a default max_tokens above the tenant's max_tokens_cap is an error. Numbers in
default_params are sampling parameters, not money: JSON numbers are expected there.

Import is an upsert, section by section and key by key: what the file says is set, what it
leaves out is kept (a new object gets the default), nothing is ever deleted. In detail:

- models: an entry describes the model's primary deployment (the first active one by
  priority) and its price. A new model needs provider, upstream, input_per_1m and
  output_per_1m; an embedding model may leave output_per_1m out (it is then "0": embeddings
  have no output tokens), and cannot be an Anthropic model (Anthropic has no embeddings). A
  price different from the price in force now (its tiers included: `tiers` left out keeps the
  current ones) becomes a NEW ModelPrice row, with its tiers, effective now; history is never
  edited. A referenced model must exist in the file or in
  the catalog.
- models.deployments: matched to the model's deployments by (provider, upstream, region,
  base_url); a listed one is updated (and reactivated), a new one created, one the list leaves
  out deactivated (never deleted: stored responses point at deployments). Every deployment
  speaks the model's family (openai and azure together, or anthropic alone), also after a change
  of `provider` without a list. Without `deployments` the single-deployment keys work as before.
  The export writes `deployments` for a model whose active deployments the single keys cannot
  describe (several, or one with a base_url, weight, quota or timeout), single keys otherwise.
- models.fallbacks: each a model of the file or the catalog, of the same kind, listed once,
  never the model itself (longer cycles are the router's to stop: it tries a model once).
- plans: a `billing_plan` defined neither in the file nor in the database is created with
  zero fees (and said so in the change list).
- api_key: a key this tenant already has → nothing; otherwise the tenant's previous
  "config" key is revoked and the new one stored (hashed, name "config"). A key of another
  tenant, a revoked or expired key, or one key for two tenants is an error.
- providers/models: every listed model's provider must be among the tenant's providers (when
  providers are restricted), and the tenant's aliases (from the file, else the database) must
  still name models it may use. A region-pinned tenant listing a model without a deployment in
  its region is a warning, not an error: the tenant simply cannot use that model.

Invalid input is refused whole, with every error listed at a JSON-path-like location
(`tenants.tenant_b.rate_limit.requests_per_minute: must be a positive integer`; names with
dots are bracketed: `models["gpt-4.1"].input_per_1m`). A valid file is applied in one
transaction; a dry run computes the same change list and writes nothing.

Export writes the same format with every key present (null where empty), all active catalog
models with the price in force now, all plans, all tenants (never an api_key) and the policy
(its defaults when staff never set one); keys and lists sorted, but for `fallbacks` and
`deployments`, which keep their order (by priority). Importing an export changes nothing.
"""

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.utils import timezone

from billing.models import MONEY_DIGITS, PRICE_DIGITS
from tenants.keys import key_hash, key_is_well_formed
from tenants.models import ApiKey, CatalogModel, Deployment, Provider, Tenant, provider_family
from tenants.profiles import (
    FAMILY_RULE,
    LOG_RETENTION_DAYS_MAX,
    POLICY_FIELDS,
    PROJECT_NAME,
    PROJECT_NAME_MAX,
    PROJECTS_MAX,
    RESPONSE_CACHE_SECONDS_MAX,
    ModelScope,
    Problem,
    default_max_tokens_problems,
    default_params_clean,
    deployment_family_problems,
    end_user_limits_clean,
    model_aliases_problems,
    model_aliases_shape,
    policy_problems,
    positive_int_problems,
    positive_money_problems,
)

CONFIG_KEY_NAME = "config"

TOP_KEYS = ("models", "plans", "tenants", "policy")
MODEL_KEYS = (
    "provider",
    "kind",
    "upstream",
    "region",
    "input_per_1m",
    "output_per_1m",
    "cached_input_per_1m",
    "cache_write_per_1m",
    "cache_write_1h_per_1m",
    "tiers",
    "routing",
    "fallbacks",
    "affinity",
    "deployments",
)
# A deployment's circuit breaker settings (Deployment.breaker_*; null: the GATEWAY_BREAKER_* settings).
BREAKER_KEYS = ("breaker_failures", "breaker_window_seconds", "breaker_cooldown_seconds")
DEPLOYMENT_KEYS = (
    "provider",
    "upstream",
    "region",
    "base_url",
    "priority",
    "weight",
    "requests_per_minute",
    "tokens_per_minute",
    "timeout_seconds",
    *BREAKER_KEYS,
)
DEPLOYMENT_SETTINGS = (
    "priority",
    "weight",
    "requests_per_minute",
    "tokens_per_minute",
    "timeout_seconds",
    *BREAKER_KEYS,
)
ROUTING_KEYS = ("routing", "fallbacks", "affinity")
SINGLE_DEPLOYMENT_KEYS = ("upstream", "region")
PRICE_KEYS = ("input_per_1m", "output_per_1m", "cached_input_per_1m", "cache_write_per_1m", "cache_write_1h_per_1m")
NULLABLE_PRICE_KEYS = ("cached_input_per_1m", "cache_write_per_1m", "cache_write_1h_per_1m")
TIER_KEYS = ("above_input_tokens", *PRICE_KEYS)
PLAN_MONEY_KEYS = ("monthly_base_fee", "included_allowance", "default_monthly_budget")
PLAN_KEYS = ("description", "currency", *PLAN_MONEY_KEYS, "markup_percent")
RATE_LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
TENANT_KEYS = (
    "name",
    "status",
    "api_key",
    "providers",
    "rate_limit",
    "models",
    "billing_plan",
    "monthly_budget",
    "region",
    "model_aliases",
    "default_params",
    "max_tokens_cap",
    "log_requests",
    "log_retention_days",
    "response_cache_seconds",
    "projects",
    "end_user_limits",
    "hash_end_user_ids",
)
PROJECT_KEYS = ("monthly_budget", "rate_limit")
END_USER_KEYS = ("end_user_limits", "hash_end_user_ids")
API_KEY_KEYS = ("key", "project", "daily_budget")
PROFILE_KEYS = (
    "model_aliases",
    "default_params",
    "max_tokens_cap",
    "log_requests",
    "log_retention_days",
    "response_cache_seconds",
)
POLICY_KEYS = POLICY_FIELDS
POLICY_LIST_KEYS = ("blocked_models", "blocked_providers", "killed_providers")

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")  # Django's validate_slug
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_MODEL_NAME_HINT = "a model name (letters, digits, '.', '_', ':', '/', '-')"
_SLUG_HINT = "a slug (letters, digits, '-', '_')"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_NO_SPACE = re.compile(r"^\S+$")
_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_PLAIN_PATH_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_INT = 2_147_483_647  # PositiveIntegerField on PostgreSQL
_PROVIDERS = tuple(sorted(p.value for p in Provider))
_KINDS = tuple(k.value for k in CatalogModel.Kind)
_ROUTINGS = tuple(r.value for r in CatalogModel.Routing)
_PRIORITY_MAX = 32767  # PositiveSmallIntegerField
_TIMEOUT_MIN, _TIMEOUT_MAX = Decimal("0.1"), Decimal(3600)  # Deployment.timeout_seconds validators
_BREAKER_MIN, _BREAKER_MAX = Decimal("0.1"), Decimal(86400)  # Deployment.breaker_*_seconds validators
_BREAKER_FAILURES_MAX = 10_000  # Deployment.breaker_failures validators
_MARKUP_DIGITS = {"max_digits": 6, "decimal_places": 2}  # Plan.markup_percent


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in a configuration document, at a JSON-path-like location."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigInvalid(Exception):
    """The document was refused; `errors` lists every problem found."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} error(s) in the configuration; nothing was changed")


def config_parse(*, text: str) -> Any:
    """JSON text → document. Floats become Decimal (so they can be refused by name, not rounded),
    duplicate object keys and NaN/Infinity are errors rather than silently collapsed."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        result: dict = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {json.dumps(key)}")
            result[key] = value
        return result

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(text, parse_float=Decimal, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        hint = ""
        if "\u00a0" in text:  # what a copy from a web page (the product description) brings along
            hint = " (the file contains non-breaking spaces, U+00A0: replace them with ordinary spaces)"
        raise ConfigInvalid([ConfigError("$", f"not valid JSON: {exc}{hint}")]) from exc


def config_validate(*, document: Any) -> list[ConfigError]:
    """Every error in the document (empty list: valid). Reads the database, writes nothing."""
    return document_check(document).errors


def config_warnings(*, document: Any) -> list[ConfigError]:
    """Things that are allowed but probably not meant, e.g. a model out of the tenant's region."""
    return document_check(document).warnings


# --------------------------------------------------------------------------------------------
# Validation: shape first (pure), then references (database); every error collected.
# --------------------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def _render(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_PATH_PART.match(part):
            out += f".{part}" if out else part
        else:  # model names like "gpt-4.1" would make a dotted path ambiguous
            out += f"[{json.dumps(part)}]"
    return out or "$"


@dataclass
class Config:
    """The parsed document: per object, only the keys the file gives (absent = keep)."""

    models: dict[str, dict[str, Any]]
    plans: dict[str, dict[str, Any]]
    tenants: dict[str, dict[str, Any]]
    policy: dict[str, Any]


class _Checked:
    def __init__(self) -> None:
        self.config = Config(models={}, plans={}, tenants={}, policy={})
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []
        self.bad_paths: set[Path] = set()  # reported already: later checks stay quiet about them

    def error(self, path: Path, message: str) -> None:
        self.errors.append(ConfigError(_render(path), message))
        self.bad_paths.add(path)

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(ConfigError(_render(path), message))

    def problems(self, path: Path, problems: Iterable[Problem]) -> None:
        """Problems found by tenants.profiles, under `path` (their own path starts with the key)."""
        for problem in problems:
            self.error((*path, *problem.path), problem.message)


_INVALID = object()  # a value that already produced an error
MISSING = object()  # a key the file leaves out: keep the current value


def document_check(document: Any) -> _Checked:
    checked = _Checked()
    root = _object(checked, document, (), TOP_KEYS)
    if root is None:
        return checked
    sections = (
        ("models", _MODEL_NAME, 100, _MODEL_NAME_HINT, _model_entry, checked.config.models),
        ("plans", _SLUG, 64, _SLUG_HINT, _plan_entry, checked.config.plans),
        ("tenants", _SLUG, 64, _SLUG_HINT, _tenant_entry, checked.config.tenants),
    )
    for section, pattern, max_length, what, parse, into in sections:
        if section in root:
            for name, raw in _mapping(checked, root[section], (section,), pattern, max_length, what).items():
                into[name] = parse(checked, raw, (section, name))
    if "policy" in root:
        checked.config.policy = _policy_entry(checked, root["policy"], ("policy",))
    _check_duplicate_keys(checked)
    _check_references(checked)
    return checked


def _object(checked: _Checked, value: Any, path: Path, allowed: Iterable[str]) -> dict | None:
    if not isinstance(value, dict):
        checked.error(path, "must be an object")
        return None
    allowed = tuple(allowed)
    for key in value:
        if key not in allowed:
            checked.error((*path, key), f"unknown key (expected one of: {', '.join(allowed)})")
    return value


def _mapping(checked: _Checked, value: Any, path: Path, key_pattern: re.Pattern, max_length: int, what: str) -> dict:
    # `what` describes a valid name, e.g. "a slug (letters, digits, '-', '_')".
    """A section like `tenants`: an object whose keys are names; bad names are reported."""
    if not isinstance(value, dict):
        checked.error(path, "must be an object")
        return {}
    good = {}
    for key, entry in value.items():
        if len(key) > max_length or not key_pattern.match(key):
            checked.error((*path, key), f"is not {what}, at most {max_length} characters")
        else:
            good[key] = entry
    return good


def _decimal(
    checked: _Checked, value: Any, path: Path, *, digits: dict, nullable: bool, what: str = "a decimal string"
) -> Any:
    example = '"2.50"'
    if value is None:
        if nullable:
            return None
        checked.error(path, f"must be {what} such as {example}, not null")
        return _INVALID
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, (int, float, Decimal)):
            checked.error(
                path, f"must be {what} such as {example}, not a JSON number (money never goes through floats)"
            )
        else:
            checked.error(path, f"must be {what} such as {example}")
        return _INVALID
    if not _DECIMAL.match(value):
        checked.error(path, f"{json.dumps(value)} is not a plain decimal number such as {example}")
        return _INVALID
    try:
        number = Decimal(value)
    except InvalidOperation:  # pragma: no cover - the pattern already guarantees a valid Decimal
        checked.error(path, "is not a decimal number")
        return _INVALID
    if number < 0:
        checked.error(path, "must not be negative")
        return _INVALID
    places = digits["decimal_places"]
    whole_digits = digits["max_digits"] - places
    if -number.as_tuple().exponent > places:
        checked.error(path, f"has more than {places} decimal places")
        return _INVALID
    if number >= Decimal(10) ** whole_digits:
        checked.error(path, f"is too large (at most {whole_digits} digits before the decimal point)")
        return _INVALID
    return number


def _positive_int(checked: _Checked, value: Any, path: Path) -> Any:
    if value is None:
        return None  # null: no limit of the tenant's own
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_INT:
        checked.error(path, "must be a positive integer (or null for no limit)")
        return _INVALID
    return value


def _string(
    checked: _Checked,
    value: Any,
    path: Path,
    *,
    max_length: int,
    pattern: re.Pattern | None = None,
    hint: str = "",
    empty: bool = True,
) -> Any:
    if not isinstance(value, str):
        checked.error(path, "must be a string")
        return _INVALID
    if not value:
        if empty:
            return value
        checked.error(path, "must not be empty")
        return _INVALID
    if len(value) > max_length:
        checked.error(path, f"is longer than {max_length} characters")
        return _INVALID
    if pattern is not None and not pattern.match(value):
        checked.error(path, f"{json.dumps(value)} is not {hint}" if hint else "has characters that are not allowed")
        return _INVALID
    return value


def _provider(checked: _Checked, value: Any, path: Path) -> Any:
    if value not in _PROVIDERS:
        checked.error(path, f"unknown provider {json.dumps(value)} (expected one of: {', '.join(_PROVIDERS)})")
        return _INVALID
    return value


def _kind(checked: _Checked, value: Any, path: Path) -> Any:
    if value not in _KINDS:
        checked.error(path, f"unknown kind {json.dumps(value)} (expected one of: {', '.join(_KINDS)})")
        return _INVALID
    return value


def _region(checked: _Checked, value: Any, path: Path) -> Any:
    hint = 'a region (lower-case letters, digits, "-"), or "" for any'
    return _string(checked, value, path, max_length=32, pattern=_REGION, hint=hint)


def _keep_valid(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if value is not _INVALID}


def _model_entry(checked: _Checked, raw: Any, path: Path) -> dict[str, Any]:
    obj = _object(checked, raw, path, MODEL_KEYS)
    if obj is None:
        return {}
    entry: dict[str, Any] = {}
    if "provider" in obj:
        entry["provider"] = _provider(checked, obj["provider"], (*path, "provider"))
    if "kind" in obj:
        entry["kind"] = _kind(checked, obj["kind"], (*path, "kind"))
    if "upstream" in obj:
        entry["upstream"] = _upstream(checked, obj["upstream"], (*path, "upstream"))
    if "region" in obj:
        entry["region"] = _region(checked, obj["region"], (*path, "region"))
    _prices(checked, obj, path, entry)
    if "tiers" in obj:
        entry["tiers"] = _tiers(checked, obj["tiers"], (*path, "tiers"))
    if "routing" in obj:
        if obj["routing"] in _ROUTINGS:
            entry["routing"] = obj["routing"]
        else:
            checked.error((*path, "routing"), f"must be one of: {', '.join(_ROUTINGS)}")
    if "affinity" in obj:
        if obj["affinity"] in (None, "", CatalogModel.Affinity.PREFIX):
            entry["affinity"] = obj["affinity"] or ""
        else:
            checked.error((*path, "affinity"), 'must be "prefix", or null for none')
    if "fallbacks" in obj:
        entry["fallbacks"] = _name_list(
            checked,
            obj["fallbacks"],
            (*path, "fallbacks"),
            lambda c, v, p: _string(c, v, p, max_length=100, pattern=_MODEL_NAME, hint=_MODEL_NAME_HINT, empty=False),
        )
    if "deployments" in obj:
        for key in SINGLE_DEPLOYMENT_KEYS:
            if key in obj:
                checked.error((*path, key), '"deployments" replaces the single-deployment keys: give one or the other')
        entry["deployments"] = _deployments(checked, obj["deployments"], (*path, "deployments"))
    return _keep_valid(entry)


def _upstream(checked: _Checked, value: Any, path: Path) -> Any:
    """A provider's model id or Azure deployment name (Deployment.upstream)."""
    return _string(checked, value, path, max_length=200, pattern=_NO_SPACE, hint="a name without spaces", empty=False)


def _deployments(checked: _Checked, value: Any, path: Path) -> Any:
    """The model's whole list of deployments. Each item's priority is its index unless given."""
    if not isinstance(value, list) or not value:
        checked.error(path, "must be a non-empty list of deployments")
        return _INVALID
    deployments, valid, targets = [], True, set()
    for index, raw in enumerate(value):
        where = (*path, index)
        obj = _object(checked, raw, where, DEPLOYMENT_KEYS)
        if obj is None:
            valid = False
            continue
        item: dict[str, Any] = {"index": index, "region": "", "base_url": "", "priority": index, "weight": 1}
        item.update(dict.fromkeys(("requests_per_minute", "tokens_per_minute", "timeout_seconds", *BREAKER_KEYS)))
        for key in ("provider", "upstream"):
            if key not in obj:
                checked.error(where, f"a deployment needs {json.dumps(key)}")
                valid = False
        if "provider" in obj:
            item["provider"] = _provider(checked, obj["provider"], (*where, "provider"))
        if "upstream" in obj:
            item["upstream"] = _upstream(checked, obj["upstream"], (*where, "upstream"))
        if "region" in obj:
            item["region"] = _region(checked, obj["region"], (*where, "region"))
        if "base_url" in obj:
            item["base_url"] = _base_url(checked, obj["base_url"], (*where, "base_url"))
        for key, maximum in (("priority", _PRIORITY_MAX), ("weight", _MAX_INT)):
            if key in obj:
                number = obj[key]
                low = 0 if key == "priority" else 1
                if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= maximum:
                    what = "a positive integer"
                    if key == "priority":
                        what = "a non-negative integer (lower is tried first)"
                    checked.error((*where, key), f"must be {what}")
                    item[key] = _INVALID
                else:
                    item[key] = number
        for key in ("requests_per_minute", "tokens_per_minute"):
            if key in obj:
                item[key] = _positive_int(checked, obj[key], (*where, key))
        if "timeout_seconds" in obj:
            item["timeout_seconds"] = _timeout(checked, obj["timeout_seconds"], (*where, "timeout_seconds"))
        if "breaker_failures" in obj:
            item["breaker_failures"] = _breaker_failures(checked, obj["breaker_failures"], (*where, "breaker_failures"))
        for key in ("breaker_window_seconds", "breaker_cooldown_seconds"):
            if key in obj:
                item[key] = _seconds(checked, obj[key], (*where, key), low=_BREAKER_MIN, high=_BREAKER_MAX)
        if any(v is _INVALID for v in item.values()):
            valid = False
            continue
        if "provider" not in item or "upstream" not in item:
            continue
        target = (item["provider"], item["upstream"], item["region"], item["base_url"])
        if target in targets:
            checked.error(where, "the same provider, upstream, region and base_url as an earlier deployment")
            valid = False
            continue
        targets.add(target)
        deployments.append(item)
    return deployments if valid else _INVALID


def _base_url(checked: _Checked, value: Any, path: Path) -> Any:
    if value is None or value == "":
        return ""  # the platform endpoint from the environment
    if not isinstance(value, str) or len(value) > 200:
        checked.error(path, "must be an http(s) URL of at most 200 characters, or null for the platform endpoint")
        return _INVALID
    try:
        URLValidator(schemes=["http", "https"])(value)
    except ValidationError:
        checked.error(path, f"{json.dumps(value)} is not an http(s) URL")
        return _INVALID
    return value


def _timeout(checked: _Checked, value: Any, path: Path) -> Any:
    return _seconds(checked, value, path, low=_TIMEOUT_MIN, high=_TIMEOUT_MAX)  # null: GATEWAY_UPSTREAM_TIMEOUT


def _seconds(checked: _Checked, value: Any, path: Path, *, low: Decimal, high: Decimal) -> Any:
    if value is None:
        return None  # the setting's default
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or not low <= value <= high:
        checked.error(path, f"must be a number of seconds from {low} to {high} (or null for the default)")
        return _INVALID
    return float(value)


def _breaker_failures(checked: _Checked, value: Any, path: Path) -> Any:
    if value is None:
        return None  # GATEWAY_BREAKER_FAILURES
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _BREAKER_FAILURES_MAX:
        checked.error(path, f"must be an integer from 1 to {_BREAKER_FAILURES_MAX} (or null for the default)")
        return _INVALID
    return value


def _prices(checked: _Checked, obj: dict, path: Path, entry: dict[str, Any]) -> None:
    for key in PRICE_KEYS:
        if key in obj:
            nullable = key in NULLABLE_PRICE_KEYS
            entry[key] = _decimal(checked, obj[key], (*path, key), digits=PRICE_DIGITS, nullable=nullable)


def _tiers(checked: _Checked, value: Any, path: Path) -> Any:
    """Long-context tiers: a list of objects, each with every price key (the optional ones may be
    left out: null), sorted by threshold; two tiers with one threshold are an error."""
    if not isinstance(value, list):
        checked.error(path, "must be a list of tiers (or [] for none)")
        return _INVALID
    tiers, valid = [], True
    for index, raw in enumerate(value):
        where = (*path, index)
        obj = _object(checked, raw, where, TIER_KEYS)
        if obj is None:
            valid = False
            continue
        tier: dict[str, Any] = dict.fromkeys(NULLABLE_PRICE_KEYS)
        _prices(checked, obj, where, tier)
        for key in ("above_input_tokens", "input_per_1m", "output_per_1m"):
            if key not in obj:
                checked.error(where, f"a tier needs {json.dumps(key)}")
                valid = False
        above = obj.get("above_input_tokens")
        if "above_input_tokens" in obj:
            if isinstance(above, bool) or not isinstance(above, int) or not 0 < above <= _MAX_INT:
                checked.error((*where, "above_input_tokens"), "must be a positive integer (prompt tokens)")
                valid = False
            elif any(t["above_input_tokens"] == above for t in tiers):
                checked.error((*where, "above_input_tokens"), f"another tier starts above {above} too")
                valid = False
            tier["above_input_tokens"] = above
        if any(v is _INVALID for v in tier.values()):
            valid = False
        tiers.append(tier)
    if not valid:
        return _INVALID
    return sorted(tiers, key=lambda t: t["above_input_tokens"])


def _plan_entry(checked: _Checked, raw: Any, path: Path) -> dict[str, Any]:
    obj = _object(checked, raw, path, PLAN_KEYS)
    if obj is None:
        return {}
    entry: dict[str, Any] = {}
    if "description" in obj:
        entry["description"] = _string(checked, obj["description"], (*path, "description"), max_length=200)
    if "currency" in obj:
        entry["currency"] = _string(
            checked,
            obj["currency"],
            (*path, "currency"),
            max_length=3,
            pattern=_CURRENCY,
            hint='a currency code such as "USD"',
            empty=False,
        )
    for key in PLAN_MONEY_KEYS:
        if key in obj:
            nullable = key == "default_monthly_budget"
            entry[key] = _decimal(checked, obj[key], (*path, key), digits=MONEY_DIGITS, nullable=nullable)
    if "markup_percent" in obj:
        entry["markup_percent"] = _decimal(
            checked, obj["markup_percent"], (*path, "markup_percent"), digits=_MARKUP_DIGITS, nullable=False
        )
    return _keep_valid(entry)


def _tenant_entry(checked: _Checked, raw: Any, path: Path) -> dict[str, Any]:
    obj = _object(checked, raw, path, TENANT_KEYS)
    if obj is None:
        return {}
    entry: dict[str, Any] = {}
    if "name" in obj:
        entry["name"] = _string(checked, obj["name"], (*path, "name"), max_length=200, empty=False)
    if "status" in obj:
        statuses = [s.value for s in Tenant.Status]
        if obj["status"] in statuses:
            entry["status"] = obj["status"]
        else:
            checked.error((*path, "status"), f"must be one of: {', '.join(statuses)}")
    if "api_key" in obj:
        key = obj["api_key"]
        if isinstance(key, dict):
            # {"key": "...", "project": "search", "daily_budget": "5.00"}: the key with its project and daily budget.
            _api_key_object(checked, key, (*path, "api_key"), entry)
            key = key.get("key")
        # The key itself never appears in a message: error output ends up in logs and tickets.
        if not isinstance(key, str):
            checked.error((*path, "api_key"), 'must be a string (or an object with "key")')
        elif not key_is_well_formed(key):
            checked.error((*path, "api_key"), "is not a usable key (characters, length or checksum)")
        else:
            entry["api_key"] = key
    if "providers" in obj:
        entry["providers"] = _name_list(checked, obj["providers"], (*path, "providers"), _provider)
    if "models" in obj:
        entry["models"] = _name_list(
            checked,
            obj["models"],
            (*path, "models"),
            lambda c, v, p: _string(c, v, p, max_length=100, pattern=_MODEL_NAME, hint=_MODEL_NAME_HINT, empty=False),
        )
    if "rate_limit" in obj:
        limits = _object(checked, obj["rate_limit"], (*path, "rate_limit"), RATE_LIMIT_KEYS)
        for key in RATE_LIMIT_KEYS:
            if limits is not None and key in limits:
                entry[key] = _positive_int(checked, limits[key], (*path, "rate_limit", key))
    if "billing_plan" in obj:
        entry["billing_plan"] = _string(
            checked,
            obj["billing_plan"],
            (*path, "billing_plan"),
            max_length=64,
            pattern=_SLUG,
            hint=_SLUG_HINT,
            empty=False,
        )
    if "monthly_budget" in obj:
        entry["monthly_budget"] = _decimal(
            checked, obj["monthly_budget"], (*path, "monthly_budget"), digits=MONEY_DIGITS, nullable=True
        )
    if "region" in obj:
        entry["region"] = _region(checked, obj["region"], (*path, "region"))
    if "projects" in obj:
        entry["projects"] = _projects(checked, obj["projects"], (*path, "projects"))
    if "end_user_limits" in obj:
        limits, problems = end_user_limits_clean(obj["end_user_limits"])
        checked.problems(path, problems)
        entry["end_user_limits"] = _INVALID if problems else limits
    if "hash_end_user_ids" in obj:
        if isinstance(obj["hash_end_user_ids"], bool):
            entry["hash_end_user_ids"] = obj["hash_end_user_ids"]
        else:
            checked.error((*path, "hash_end_user_ids"), "must be true or false")
    _profile_entry(checked, obj, path, entry)
    return _keep_valid(entry)


def _projects(checked: _Checked, value: Any, path: Path) -> Any:
    """`"projects": {"search": {"monthly_budget": "50.00", "rate_limit": {...}}}`: per project, only
    what the file gives (absent = keep). The checks are tenants.profiles' (as in the admin)."""
    found = _mapping(checked, value, path, PROJECT_NAME, PROJECT_NAME_MAX, "a project name (letters, digits, '-', '_')")
    if len(found) > PROJECTS_MAX:
        checked.error(path, f"at most {PROJECTS_MAX} projects")
        return _INVALID
    projects: dict[str, dict[str, Any]] = {}
    for name, raw in found.items():
        where = (*path, name)
        obj = _object(checked, raw, where, PROJECT_KEYS)
        if obj is None:
            continue
        project: dict[str, Any] = {}
        if "rate_limit" in obj:
            limits = _object(checked, obj["rate_limit"], (*where, "rate_limit"), RATE_LIMIT_KEYS)
            for key in RATE_LIMIT_KEYS:
                if limits is not None and key in limits:
                    project[key] = _positive_int(checked, limits[key], (*where, "rate_limit", key))
        if "monthly_budget" in obj:
            budget = _decimal(
                checked, obj["monthly_budget"], (*where, "monthly_budget"), digits=MONEY_DIGITS, nullable=True
            )
            if budget is not _INVALID:
                problems = positive_money_problems(budget, "monthly_budget")
                checked.problems(where, problems)
                budget = _INVALID if problems else budget
            project["monthly_budget"] = budget
        projects[name] = _keep_valid(project)
    return projects


def _api_key_object(checked: _Checked, obj: dict, path: Path, entry: dict[str, Any]) -> None:
    _object(checked, obj, path, API_KEY_KEYS)
    if "project" in obj:
        project = obj["project"]
        if project is None:
            entry["api_key_project"] = None
        else:
            entry["api_key_project"] = _string(
                checked,
                project,
                (*path, "project"),
                max_length=PROJECT_NAME_MAX,
                pattern=PROJECT_NAME,
                hint="a project name (letters, digits, '-', '_')",
                empty=False,
            )
    if "daily_budget" in obj:
        budget = _decimal(checked, obj["daily_budget"], (*path, "daily_budget"), digits=MONEY_DIGITS, nullable=True)
        if budget is not _INVALID:
            problems = positive_money_problems(budget, "daily_budget")
            checked.problems(path, problems)
            budget = _INVALID if problems else budget
        entry["api_key_daily_budget"] = budget


def _profile_entry(checked: _Checked, obj: dict, path: Path, entry: dict[str, Any]) -> None:
    """The tenant's profile keys, shape only; references and the cap are checked later."""
    if "model_aliases" in obj:
        aliases, problems = model_aliases_shape(obj["model_aliases"])
        checked.problems(path, problems)
        # Well-formed aliases are kept even next to bad ones, so that their targets are checked too.
        entry["model_aliases"] = aliases if aliases or not problems else _INVALID
    if "default_params" in obj:
        params, problems = default_params_clean(obj["default_params"])
        checked.problems(path, problems)
        entry["default_params"] = _INVALID if problems else params
    for key, maximum, nullable in (
        ("max_tokens_cap", _MAX_INT, True),
        ("log_retention_days", LOG_RETENTION_DAYS_MAX, False),
        ("response_cache_seconds", RESPONSE_CACHE_SECONDS_MAX, True),
    ):
        if key in obj:
            problems = positive_int_problems(obj[key], key, maximum=maximum, nullable=nullable)
            checked.problems(path, problems)
            entry[key] = _INVALID if problems else obj[key]
    if "log_requests" in obj:
        if isinstance(obj["log_requests"], bool):
            entry["log_requests"] = obj["log_requests"]
        else:
            checked.error((*path, "log_requests"), "must be true or false")


def _policy_entry(checked: _Checked, raw: Any, path: Path) -> dict[str, Any]:
    """The policy's shape; its names are checked against the catalog with the references."""
    obj = _object(checked, raw, path, POLICY_KEYS)
    if obj is None:
        return {}
    return {key: obj[key] for key in POLICY_KEYS if key in obj}


def _name_list(checked: _Checked, value: Any, path: Path, item) -> Any:
    if not isinstance(value, list):
        checked.error(path, "must be a list")
        return _INVALID
    names: list[tuple[int, str]] = []
    seen: set[str] = set()
    for index, raw in enumerate(value):
        name = item(checked, raw, (*path, index))
        if name is _INVALID:
            continue
        if name in seen:
            checked.error((*path, index), f"{json.dumps(name)} is listed twice")
        else:
            seen.add(name)
            names.append((index, name))
    # Indexes are kept so that reference errors can point at the item in the file. Bad items
    # are dropped but the rest is kept, so that their references are checked (and reported) too.
    return names


def _check_duplicate_keys(checked: _Checked) -> None:
    owners: dict[str, str] = {}
    for slug, entry in checked.config.tenants.items():
        key = entry.get("api_key")
        if key is None:
            continue
        if key in owners:
            checked.error(("tenants", slug, "api_key"), f"is the same key as tenants.{owners[key]}.api_key")
            del entry["api_key"]  # reported once; the reference check must not report it again
        else:
            owners[key] = slug


def _check_references(checked: _Checked) -> None:
    """Checks that need the database: models, keys, the state of existing tenants."""
    config = checked.config
    catalog = {m.name: m for m in CatalogModel.objects.prefetch_related("deployments")}
    tenants = {
        t.slug: t
        for t in Tenant.objects.filter(slug__in=config.tenants)
        .select_related("subscription")
        .prefetch_related("allowed_models")
    }

    for name, entry in config.models.items():
        kind = entry.get("kind", catalog[name].kind if name in catalog else CatalogModel.Kind.CHAT)
        if name not in catalog:
            needed = ("provider", "upstream", "input_per_1m")
            kind_known = ("models", name, "kind") not in checked.bad_paths
            if kind != CatalogModel.Kind.EMBEDDING and kind_known:  # an embedding model's output price defaults to 0
                needed += ("output_per_1m",)
            if _deployments_given(checked, entry, name):
                needed = tuple(key for key in needed if key != "upstream")
            for key in needed:
                if key not in entry and ("models", name, key) not in checked.bad_paths:
                    checked.error(("models", name), f"a new model needs {json.dumps(key)}")
        provider = entry.get("provider", catalog[name].provider if name in catalog else None)
        if kind == CatalogModel.Kind.EMBEDDING and provider == Provider.ANTHROPIC:
            checked.error(("models", name, "kind"), "an anthropic model cannot be an embedding model")
        if provider is not None:
            _check_families(checked, name, entry, provider, catalog.get(name))
        for index, target in entry.get("fallbacks", ()):
            where = ("models", name, "fallbacks", index)
            if target == name:
                checked.error(where, "a model cannot fall back to itself")
            elif target not in catalog and target not in config.models:
                checked.error(
                    where, f"unknown model {json.dumps(target)} (neither in the file's models nor in the catalog)"
                )
            else:
                target_kind = config.models.get(target, {}).get(
                    "kind", catalog[target].kind if target in catalog else CatalogModel.Kind.CHAT
                )
                if target_kind != kind:
                    checked.error(where, f"{json.dumps(target)} is a {target_kind} model, this one a {kind} model")

    def model_provider(name: str) -> str | None:
        entry = config.models.get(name, {})
        if "provider" in entry:
            return entry["provider"]
        return catalog[name].provider if name in catalog else None

    def model_regions(name: str) -> set[str]:
        if "deployments" in config.models.get(name, {}):  # the file's list is the whole set
            return {item["region"] for item in config.models[name]["deployments"]}
        regions = set()
        deployments = [d for d in catalog[name].deployments.all() if d.active] if name in catalog else []
        primary = primary_deployment(deployments)
        for deployment in deployments:
            regions.add(deployment.region)
        if name in config.models:
            entry = config.models[name]
            if primary is not None and "region" in entry:
                regions.discard(primary.region)  # the file moves the primary deployment
            regions.add(entry.get("region", primary.region if primary else ""))
        return regions

    # The catalog as it will be after the import: the file's models are created or activated.
    scope_catalog = {name: model.provider for name, model in catalog.items()}
    for name, entry in config.models.items():
        if "provider" in entry or name not in scope_catalog:
            scope_catalog[name] = entry.get("provider", "")
    scope_active = {name for name, model in catalog.items() if model.active} | set(config.models)

    if config.policy:
        problems = policy_problems(catalog=set(scope_catalog), **config.policy)
        checked.problems(("policy",), problems)
        if problems:
            config.policy = {}

    hashes = {
        slug: key_hash(entry["api_key"], pepper=settings.API_KEY_PEPPER)
        for slug, entry in config.tenants.items()
        if "api_key" in entry
    }
    keys = {k.key_hash: k for k in ApiKey.objects.filter(key_hash__in=hashes.values()).select_related("tenant")}
    now = timezone.now()

    for slug, entry in config.tenants.items():
        path: Path = ("tenants", slug)
        tenant = tenants.get(slug)
        if tenant is None and "billing_plan" not in entry and (*path, "billing_plan") not in checked.bad_paths:
            checked.error(path, 'a new tenant needs "billing_plan"')
        elif (
            tenant is not None
            and "monthly_budget" in entry
            and "billing_plan" not in entry
            and getattr(tenant, "subscription", None) is None
        ):
            checked.error((*path, "monthly_budget"), 'the tenant has no plan yet: give "billing_plan" too')

        if entry.get("api_key_project") is not None:
            known = set(entry.get("projects", {}))
            if tenant is not None:
                known |= set(tenant.projects.values_list("name", flat=True))
            if entry["api_key_project"] not in known:
                checked.error(
                    (*path, "api_key", "project"),
                    f"unknown project {json.dumps(entry['api_key_project'])} (neither in the file nor in the tenant)",
                )
        if slug in hashes and hashes[slug] in keys:
            key = keys[hashes[slug]]
            if key.tenant.slug != slug:
                checked.error((*path, "api_key"), "belongs to another tenant")
            elif key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
                checked.error((*path, "api_key"), "was revoked or has expired and cannot be used again")

        # Effective sets after the import: what the file says, else what the tenant has.
        if "models" in entry:
            listed = entry["models"]
            models_path: Path | None = (*path, "models")
        else:
            listed = [(None, m.name) for m in tenant.allowed_models.all()] if tenant else []
            models_path = None
        if "providers" in entry:
            providers = {name for _, name in entry["providers"]}
        else:
            providers = set(tenant.allowed_providers or []) if tenant else set()
        region = entry.get("region", tenant.region if tenant else "")

        for index, name in listed:
            where = (*models_path, index) if models_path else (*path, "providers")
            if name not in catalog and name not in config.models:
                checked.error(
                    where, f"unknown model {json.dumps(name)} (neither in the file's models nor in the catalog)"
                )
                continue
            provider = model_provider(name)
            if providers and provider not in providers:
                checked.error(
                    where, f"model {json.dumps(name)} is served by {provider}, not among the tenant's providers"
                )
            if region and models_path and region not in model_regions(name):
                checked.warn(
                    where, f"model {json.dumps(name)} has no deployment in region {region}; this tenant cannot use it"
                )

        after = ModelScope(
            catalog=scope_catalog, active=scope_active, models={name for _, name in listed}, providers=providers
        )
        _check_profile(checked, path, entry, tenant, scope=after)


def _deployments_given(checked: _Checked, entry: dict, name: str) -> bool:
    """The file gives the model's deployments (valid or not: a bad list is reported already)."""
    return "deployments" in entry or any(p[:3] == ("models", name, "deployments") for p in checked.bad_paths)


def _check_families(checked: _Checked, name: str, entry: dict, provider: str, model: CatalogModel | None) -> None:
    """Every deployment of a model speaks the model's family: OpenAI and Azure together, Anthropic alone."""
    family = provider_family(provider)
    if "deployments" in entry:  # a valid list: every item is there, at its index
        checked.problems(
            ("models", name), deployment_family_problems(provider, [d["provider"] for d in entry["deployments"]])
        )
        return
    if model is None or _deployments_given(checked, entry, name):
        return
    # The file keeps the model's other deployments: a change of provider must suit them too.
    active = [d for d in model.deployments.all() if d.active]
    primary = primary_deployment(active)
    for deployment in active:
        if deployment is not primary and provider_family(deployment.provider) != family:
            checked.error(
                ("models", name, "provider"),
                f"the model's deployment {deployment.provider}:{deployment.upstream} does not speak {provider}'s "
                f'family ({FAMILY_RULE}): give the whole "deployments" list',
            )


def _check_profile(checked: _Checked, path: Path, entry: dict, tenant: Tenant | None, *, scope: ModelScope) -> None:
    """Aliases against the tenant's models after the import; the default max_tokens under the cap."""
    if "model_aliases" in entry:
        checked.problems(path, model_aliases_problems(entry["model_aliases"], scope=scope))
    elif tenant is not None and ("models" in entry or "providers" in entry):
        # The file narrows the tenant's models: the aliases it keeps must still point somewhere.
        # Only those this file breaks: one broken before (a catalog edit) is not the file's doing.
        aliases = tenant.model_aliases or {}
        before = dataclasses.replace(
            scope,
            models={m.name for m in tenant.allowed_models.all()},
            providers=set(tenant.allowed_providers or []),
        )
        broken_before = {problem.path[1] for problem in model_aliases_problems(aliases, scope=before)}
        where = (*path, "models" if "models" in entry else "providers")
        for problem in model_aliases_problems(aliases, scope=scope):
            if problem.path[1] not in broken_before:
                checked.error(where, f"alias {json.dumps(problem.path[1])}: {problem.message}")
    if "default_params" in entry or "max_tokens_cap" in entry:
        params = entry.get("default_params", tenant.default_params if tenant else {}) or {}
        cap = entry.get("max_tokens_cap", tenant.max_tokens_cap if tenant else None)
        checked.problems(path, default_max_tokens_problems(params, max_tokens_cap=cap))


# --- the file's own formats, shared by apply and export ---------------------------------------


def decimal_text(value: Decimal | None) -> str | None:
    """Decimal → the shortest string with at least two places: 30.000000 → "30.00", 0.075 stays."""
    if value is None:
        return None
    normal = value.normalize()
    if normal.as_tuple().exponent > -2:
        normal = value.quantize(Decimal("0.01"))
    return f"{normal:f}"


def primary_deployment(deployments: list[Deployment]) -> Deployment | None:
    """The deployment the file's model entry describes: first active by priority, else first."""
    ordered = sorted(deployments, key=lambda d: (not d.active, d.priority, d.id))
    return ordered[0] if ordered else None
