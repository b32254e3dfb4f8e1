"""Monitoring of the gateway: Prometheus metrics and one JSON log line per completion request (issue 6).

Where it hooks in (kept to a few lines so that the hot path stays what it was):
- `InFlight` wraps the ASGI application (proxy_platform/asgi.py): a completion request is in
  flight from its first byte in to its last byte out, streams included, client disconnects
  included. The view calls `request_attributed()` once it knows the tenant.
- `request_finished()` is called by `metering.record()` right after the usage record is written:
  the record is the request's outcome, so metrics and the log line say what the record says.
- `request_unattributed()`: requests refused before a tenant is known (401, 405), which have no
  usage record. They are counted with `tenant=""` (in PromQL, the same as no tenant label).
- `upstream_failed()`: each failed upstream attempt, by provider, also when a fallback deployment
  then answers (the usage record only shows the final outcome).

Several processes. Production runs one uvicorn process per core behind one port, so a scrape lands
on any one of them and must see them all. With PROMETHEUS_MULTIPROC_DIR set, prometheus_client
keeps every process's values in a small mmap'ed file in that directory and /metrics sums the
files (`MultiProcessCollector`): an increment stays a local memory write (no network, nothing lost
when Redis is down), counters of exited processes keep counting in the sums, and the in-flight
gauge (`livesum`) only sums processes that are alive: each process removes its own gauge file at
exit and a scrape removes those of processes that died without exiting cleanly. Counters held in
Redis were the alternative: exact across hosts too, but one network round trip per request on
the hot path, and no monitoring exactly when Redis is in trouble. Several hosts: scrape each
host's gateway; Prometheus sums over the `instance` label. Without PROMETHEUS_MULTIPROC_DIR the
metrics live in process memory, right for one process (the demo, a single worker).

Labels: tenant (slug) and model (catalog name; a name the catalog does not know is "" so that a
client cannot create series at will), plus small fixed sets (endpoint, status, error type, token
type, limit, provider, upstream failure kind). Never request ids or keys.
"""

import atexit
import glob
import hmac
import logging
import os
import re
import time
from decimal import Decimal

from django.conf import settings
from django.http import HttpRequest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from .errors import GatewayError
from .metered import Metered

__all__ = [
    "CONTENT_TYPE",
    "InFlight",
    "metrics_authorized",
    "metrics_text",
    "request_attributed",
    "request_finished",
    "request_unattributed",
    "breaker_seen",
    "upstream_attempted",
    "upstream_failed",
]

log = logging.getLogger("gateway.request")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

_TENANT_MODEL = ("tenant", "model")
REQUESTS = Counter(
    "gateway_requests", "Completion requests, by outcome (HTTP status).", [*_TENANT_MODEL, "endpoint", "status"]
)
ERRORS = Counter(
    "gateway_errors",
    "Completion requests that failed, by error type (the usage record's error_type).",
    [*_TENANT_MODEL, "endpoint", "error_type"],
)
TOKENS = Counter(
    "gateway_tokens",
    "Tokens of completion requests. The types partition the prompt: input is its uncached part, "
    "cached_input and cache_write the rest.",
    [*_TENANT_MODEL, "type"],
)
# A float, like every Prometheus value: for dashboards and alerts, never for billing. What a
# tenant pays is the Decimal sum of its usage records (billing/), exact to 1e-12 USD.
COST = Counter("gateway_cost_usd", "Provider cost of completion requests, USD (monitoring only).", _TENANT_MODEL)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from arrival to outcome of a completion request (to the end of the stream for streams).",
    [*_TENANT_MODEL, "endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge(
    "gateway_requests_in_flight",
    "Completion requests being served; tenant is empty until the key is checked.",
    ["tenant", "endpoint"],
    multiprocess_mode="livesum",
)
LIMIT_REFUSALS = Counter(
    "gateway_limit_refusals",
    "Requests refused by the tenant's own limits or its key's: "
    "429 requests_per_minute, tokens_per_minute, concurrency; 402 budget.",
    [*_TENANT_MODEL, "limit"],
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors",
    "Failed upstream calls, by provider: every failed attempt (a fallback may then answer), and streams "
    "broken after the first byte (kind=stream).",
    [*_TENANT_MODEL, "provider", "kind"],
)

UPSTREAM_ATTEMPTS = Counter(
    "gateway_upstream_attempts",
    "Upstream attempts by deployment and outcome: ok, a failure kind (ProviderError.kind), or skipped "
    "without a call: breaker_open, quota (the provider account's own requests/tokens per minute).",
    ["model", "deployment", "provider", "outcome"],
)
FALLBACKS = Counter(
    "gateway_fallbacks",
    "Requests answered by a fallback model (CatalogModel.fallbacks) because every deployment of the "
    "asked-for model failed or was out of rotation.",
    ["model", "fallback"],
)
BREAKER_STATE = Gauge(
    "gateway_breaker_state",
    "A deployment's circuit breaker as this process last saw it: 0 closed, 1 open, 2 half-open (a probe decides).",
    ["model", "deployment"],
    multiprocess_mode="mostrecent",
)

_LIMITS = {
    "rate_limit_requests": "requests_per_minute",
    "rate_limit_tokens": "tokens_per_minute",
    "concurrency_limit": "concurrency",
    "budget_exhausted": "budget",
}
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/responses": "responses",
}
_FLIGHT = "gateway.flight"  # the ASGI scope key under which InFlight leaves the request's _Flight

_problems = logging.getLogger(__name__)
_last_problem = -3600.0


def _trouble() -> None:
    """Monitoring must never fail a request: a broken metrics directory is logged (once a minute) and skipped."""
    global _last_problem
    now = time.monotonic()
    if now - _last_problem >= 60:
        _last_problem = now
        _problems.warning("metrics or request log line failed; requests are served regardless", exc_info=True)


# Labelled children, cached: `metric.labels()` takes a lock and builds a key on every call.
_children: dict[tuple, object] = {}


def _child(metric, *values: str):
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


# --- in flight ---


class _Flight:
    __slots__ = ("_gauge", "endpoint", "started")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.started = time.perf_counter()
        self._gauge = None
        try:
            gauge = _child(IN_FLIGHT, "", endpoint)
            gauge.inc()
            self._gauge = gauge
        except Exception:
            _trouble()

    def attribute(self, tenant: str) -> None:
        if self._gauge is None:
            return
        try:
            gauge = _child(IN_FLIGHT, tenant, self.endpoint)
            gauge.inc()
            self._gauge.dec()
            self._gauge = gauge
        except Exception:
            _trouble()

    def land(self) -> None:
        if self._gauge is None:
            return
        try:
            self._gauge.dec()
        except Exception:
            _trouble()


class InFlight:
    """ASGI wrapper around the Django application: counts completion requests in flight.

    Django's ASGI handler returns only once the response is sent to its end (or the client is
    gone), so `finally` here is the one place where every completion request ends.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        endpoint = _ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            return await self.app(scope, receive, send)
        flight = scope[_FLIGHT] = _Flight(endpoint)
        try:
            return await self.app(scope, receive, send)
        finally:
            flight.land()


def _flight(request: HttpRequest) -> _Flight | None:
    scope = getattr(request, "scope", None)
    return scope.get(_FLIGHT) if scope is not None else None


def request_attributed(request: HttpRequest, *, tenant: str) -> None:
    """The request's key is known: from now on it is in flight for its tenant."""
    flight = _flight(request)
    if flight is not None:
        flight.attribute(tenant)


# --- outcomes ---


def request_finished(metered: Metered, *, cost: Decimal | None) -> None:
    """A request of a known tenant has its outcome: count it and write its log line.

    `cost` is the usage record's cost, or None when the record could not be written.
    """
    # The provider is set exactly when the model resolved in the catalog (lifecycle.Call.metered).
    model = metered.model if metered.provider else ""
    try:
        _count(metered, model, cost)
    except Exception:
        _trouble()
    try:
        if log.isEnabledFor(logging.INFO):
            _write_line(metered, cost)
    except Exception:
        _trouble()


def _count(metered: Metered, model: str, cost: Decimal | None) -> None:
    tenant = metered.tenant_slug
    endpoint = metered.endpoint
    error_type = metered.error_type
    _child(REQUESTS, tenant, model, endpoint, str(metered.status_code)).inc()
    if error_type:
        _child(ERRORS, tenant, model, endpoint, error_type).inc()
        limit = _LIMITS.get(error_type)
        if limit is not None:
            _child(LIMIT_REFUSALS, tenant, model, limit).inc()
        elif error_type == "upstream_stream_error":
            _child(UPSTREAM_ERRORS, tenant, model, metered.provider, "stream").inc()
    tokens = metered.tokens
    for kind, count in (
        ("input", tokens.input - tokens.cached_input - tokens.cache_write),
        ("cached_input", tokens.cached_input),
        ("cache_write", tokens.cache_write),
        ("output", tokens.output),
    ):
        if count:
            _child(TOKENS, tenant, model, kind).inc(count)
    if cost:
        _child(COST, tenant, model).inc(float(cost))
    _child(DURATION, tenant, model, endpoint).observe(metered.latency_ms / 1000)


def _write_line(metered: Metered, cost: Decimal | None) -> None:
    tokens = metered.tokens
    log.info(
        "%s %s",
        metered.endpoint,
        metered.status_code,
        extra={
            "fields": {
                "request_id": metered.request_id,
                "tenant": metered.tenant_slug,
                "key_id": metered.api_key_id,
                "endpoint": metered.endpoint,
                "model": metered.model,
                "requested_model": metered.requested_model or None,
                "provider": metered.provider or None,
                "deployment": metered.deployment_id,
                "upstream_model": metered.upstream_model or None,
                "status": metered.status_code,
                "error_type": metered.error_type or None,
                "input_tokens": tokens.input,
                "cached_input_tokens": tokens.cached_input,
                "cache_write_tokens": tokens.cache_write,
                "cache_write_1h_tokens": tokens.cache_write_1h,
                "output_tokens": tokens.output,
                # Exact, as a decimal string: the line may be summed by log tooling.
                "cost": None if cost is None else format(cost, "f"),
                "latency_ms": metered.latency_ms,
                "streamed": metered.streamed,
                "estimated": metered.estimated,
                "cache_hit": metered.cache_hit,
            }
        },
    )


# The request line's fields that nobody knows before the key is checked: the same keys on every line.
_NOT_ATTRIBUTED = dict.fromkeys(
    (
        "tenant",
        "key_id",
        "model",
        "requested_model",
        "provider",
        "deployment",
        "upstream_model",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "cost",
        "streamed",
        "estimated",
        "cache_hit",
    )
)


def request_unattributed(request: HttpRequest, *, request_id: str, endpoint: str, error: GatewayError) -> None:
    """A request refused before a tenant was known (no key, a bad key, a wrong method): no usage record."""
    flight = _flight(request)
    latency_ms = int((time.perf_counter() - flight.started) * 1000) if flight is not None else 0
    try:
        _child(REQUESTS, "", "", endpoint, str(error.status)).inc()
        _child(ERRORS, "", "", endpoint, error.code).inc()
        _child(DURATION, "", "", endpoint).observe(latency_ms / 1000)
    except Exception:
        _trouble()
    try:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s",
                endpoint,
                error.status,
                extra={
                    "fields": {
                        **_NOT_ATTRIBUTED,
                        "request_id": request_id,
                        "endpoint": endpoint,
                        "status": error.status,
                        "error_type": error.code,
                        "latency_ms": latency_ms,
                    }
                },
            )
    except Exception:
        _trouble()


def upstream_failed(*, tenant: str, model: str, provider: str, kind: str) -> None:
    """One upstream attempt failed before its first byte (ProviderError.kind)."""
    try:
        _child(UPSTREAM_ERRORS, tenant, model, provider, kind).inc()
    except Exception:
        _trouble()


def upstream_attempted(*, model: str, deployment: int, provider: str, outcome: str) -> None:
    """One attempt on a deployment, or one skipped by routing (gateway/routing/)."""
    try:
        _child(UPSTREAM_ATTEMPTS, model, str(deployment), provider, outcome).inc()
    except Exception:
        _trouble()


def fallback_answered(*, asked: str, answered: str) -> None:
    """A request for `asked` was answered by its fallback model `answered`."""
    try:
        _child(FALLBACKS, asked, answered).inc()
    except Exception:
        _trouble()


def breaker_seen(*, model: str, deployment: int, state: str) -> None:
    """A deployment's breaker state as routing last read or left it: closed, open or half_open."""
    try:
        _child(BREAKER_STATE, model, str(deployment)).set({"closed": 0, "open": 1, "half_open": 2}[state])
    except Exception:
        _trouble()


# --- /metrics ---


def metrics_authorized(request: HttpRequest) -> bool:
    """`Authorization: Bearer <GATEWAY_METRICS_TOKEN>`; without a token configured, DEBUG only."""
    token = settings.GATEWAY_METRICS_TOKEN
    if not token:
        return settings.DEBUG
    authorization = request.headers.get("authorization", "")
    presented = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return hmac.compare_digest(presented.encode(), token.encode())


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def _forget_dead_processes(path: str) -> None:
    """Live gauges of processes that died without exiting cleanly (SIGKILL, OOM) must not count."""
    own = os.getpid()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(name)
        if match is None or int(match.group(1)) == own:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass  # alive, under another user


def metrics_text() -> bytes:
    """The Prometheus text exposition: every gateway process of this host in multiprocess mode."""
    if not _MULTIPROCESS_DIR:
        return generate_latest(REGISTRY)
    _forget_dead_processes(_MULTIPROCESS_DIR)
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=_MULTIPROCESS_DIR)
    return generate_latest(registry)


if _MULTIPROCESS_DIR:
    os.makedirs(_MULTIPROCESS_DIR, exist_ok=True)
    # A live gauge left by an earlier process with this pid would be read back as our own.
    prometheus_multiprocess.mark_process_dead(os.getpid(), _MULTIPROCESS_DIR)
    # A clean exit takes this process's in-flight gauge out of the sums at once; its counters stay.
    # (The pid is read at exit: a process forked after this import is another process.)
    atexit.register(lambda: prometheus_multiprocess.mark_process_dead(os.getpid(), _MULTIPROCESS_DIR))
