"""Settings, read from the environment once (docs/design.md#settings).

Nothing set: the embedded default (SQLite, local-memory cache, eager Celery), which is what
`make demo` runs. Production sets DATABASE_URL (PostgreSQL) and REDIS_URL.
"""

import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
_INSECURE_DEV_KEY = "django-insecure-dev-only-do-not-use-in-production"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", _INSECURE_DEV_KEY)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# Tenant API keys are stored as HMAC-SHA256(pepper, key). Changing the pepper invalidates
# every stored key, so it is its own setting rather than following SECRET_KEY rotations.
API_KEY_PEPPER = env_str("API_KEY_PEPPER", SECRET_KEY)
# Key of the HMAC that replaces end user ids on usage records for tenants that ask for it
# (Tenant.hash_end_user_ids). Changing it changes every hash: the same user is then counted,
# limited and reported as a new one. Its own setting, like the pepper.
GATEWAY_END_USER_HASH_KEY = env_str("GATEWAY_END_USER_HASH_KEY", SECRET_KEY)
# Fernet keys (comma-separated, newest first) encrypting provider credentials at rest. Unset: one
# key derived from SECRET_KEY. Rotate by putting a new key first and running
# `manage.py rotate_credentials`; old keys can be dropped once that has run.
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS")

INSTALLED_APPS = [
    "console.apps.PlatformAdminConfig",  # django.contrib.admin, with the dashboard as its home page
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tenants",
    "billing",
    "gateway",
    "config",  # the tenant configuration file: import_tenants / export_tenants
    "console",  # the staff console: on top of the others, imported by none
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so first to see a view's exception: on /v1/* it is answered as the API's JSON error.
    "gateway.middleware.ApiErrorMiddleware",
]

ROOT_URLCONF = "proxy_platform.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "proxy_platform.wsgi.application"
ASGI_APPLICATION = "proxy_platform.asgi:application"

DATABASES = {"default": dj_database_url.parse(env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))}
# A streaming replica (docs/database.md): reports read there, inside `reading_replica()` only
# (proxy_platform/replicas.py); money decisions and every write stay on "default".
DATABASE_REPLICA_URL = env_str("DATABASE_REPLICA_URL")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = dj_database_url.parse(DATABASE_REPLICA_URL)
    # In tests without a replica of their own, "replica" is the test database itself.
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["proxy_platform.replicas.ReplicaRouter"]
# Behind PgBouncer in transaction pooling mode (docs/database.md): each transaction, or each
# statement in autocommit, may run on another server connection, so nothing may outlive one.
DATABASE_PGBOUNCER = env_bool("DATABASE_PGBOUNCER", False)
for _database in DATABASES.values():
    if _database["ENGINE"] == "django.db.backends.postgresql":
        # A pool instead of persistent connections: under ASGI every request may land on another
        # thread, and the pool hands connections back when Django closes them.
        # Bounded waits (README "Operations"): a PostgreSQL that is down or unreachable costs a
        # request about DATABASE_POOL_TIMEOUT seconds (the wait for a pooled connection;
        # psycopg_pool's own default is 30 s), a new connection DATABASE_CONNECT_TIMEOUT (libpq's
        # connect_timeout, 2 s at least), and one that hangs mid-query GATEWAY_DB_TIMEOUT
        # (gateway/db.py). The replica gets a pool of the same size as the primary's.
        _database.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", 2),
            "max_size": env_int("DATABASE_POOL_MAX", 10),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 2.0),
        }
        _database["OPTIONS"].setdefault("connect_timeout", env_int("DATABASE_CONNECT_TIMEOUT", 2))
        # Server side, for every process on these settings (so the rollups too): off unless set.
        if env_int("DATABASE_STATEMENT_TIMEOUT_MS", 0) > 0:
            if DATABASE_PGBOUNCER:
                # PgBouncer refuses a client whose startup packet carries `options`.
                raise ImproperlyConfigured(
                    "DATABASE_STATEMENT_TIMEOUT_MS cannot be sent through PgBouncer: set "
                    "statement_timeout on the database role instead (docs/database.md)."
                )
            _database["OPTIONS"]["options"] = f"-c statement_timeout={env_int('DATABASE_STATEMENT_TIMEOUT_MS', 0)}"
        if DATABASE_PGBOUNCER:
            # A named cursor (QuerySet.iterator()) lives as long as its session, not its transaction.
            _database["DISABLE_SERVER_SIDE_CURSORS"] = True
            # A prepared statement lives in one server connection, which the next transaction may
            # not get (PgBouncer before 1.21 does not track them). Django's default already, pinned
            # here so that OPTIONS cannot turn it on.
            _database["OPTIONS"]["prepare_threshold"] = None
            _database["OPTIONS"].pop("server_side_binding", None)
    elif _database["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the demo's gateway write usage while the admin reads it.
        _database.setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"
        _database["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
        _database["OPTIONS"]["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
# Redis Cluster (entry nodes: REDIS_URL's host, or several comma-separated) or Sentinel (the
# sentinels, and the primary's name): docs/redis.md. Every client is made by
# proxy_platform/redis_clients.py.
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
REDIS_SENTINELS = env_list("REDIS_SENTINELS")
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "mymaster")
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's RedisCache with one connection pool per process (see proxy_platform/cache.py),
            # whose client comes from proxy_platform/redis_clients.py (plain, Cluster or Sentinel).
            "BACKEND": "proxy_platform.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            # A Redis that accepts connections but never answers must not hang a request.
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: Redis as broker in production; without REDIS_URL tasks run eagerly in process.
# Every billing task is idempotent (unique constraints, locked rows, upserts), so a message
# is acknowledged only once its task is done, and a worker killed mid-task hands it back.
# Celery (kombu) does not speak Redis Cluster: with REDIS_CLUSTER, CELERY_BROKER_URL names a plain
# Redis (or another broker). With Sentinel the default is kombu's `sentinel://` URLs.
_SENTINEL_BROKER = ""
if REDIS_SENTINELS and REDIS_URL:
    from urllib.parse import urlsplit as _urlsplit

    _redis = _urlsplit(REDIS_URL)
    _auth = f":{_redis.password}@" if _redis.password else ""
    _db = _redis.path.strip("/") or "0"
    _SENTINEL_BROKER = ";".join(f"sentinel://{_auth}{node}/{_db}" for node in REDIS_SENTINELS)
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or _SENTINEL_BROKER or REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = not CELERY_RESULT_BACKEND
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# An unacknowledged message goes back to the queue after this long (a worker that died).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
if CELERY_BROKER_URL.startswith("sentinel://"):
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = REDIS_SENTINEL_MASTER
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "rollup-usage": {
        "task": "billing.tasks.rollup_usage",
        "schedule": env_float("BILLING_ROLLUP_INTERVAL_SECONDS", 600.0),
    },
    "close-invoice-periods": {
        # Daily: refresh the drafts of the open month and of a month in grace, finalize a month
        # whose grace period has passed.
        "task": "billing.tasks.close_invoice_periods",
        "schedule": crontab(minute=30, hour=2),
    },
    "check-budgets": {"task": "billing.tasks.check_budgets", "schedule": 900.0},
    "apply-usage-retention": {"task": "billing.tasks.apply_usage_retention", "schedule": crontab(minute=0, hour=4)},
    # PostgreSQL: this month's usage partition and the next BILLING_USAGE_PARTITIONS_AHEAD ones.
    "ensure-usage-partitions": {
        "task": "billing.tasks.ensure_usage_partitions",
        "schedule": crontab(minute=45, hour=3),
    },
    # Prompts and responses are kept only as long as each tenant's log_retention_days.
    # The Redis budget counters (gateway/limits/) reset to the database's month-to-date spend.
    "reconcile-budget-counters": {"task": "gateway.tasks.reconcile_budget_counters", "schedule": 300.0},
    # Usage records spooled through a database outage are written; requests whose process died
    # are recorded as `interrupted` and their limits given back (gateway/journal.py).
    "reconcile-requests": {
        "task": "gateway.tasks.reconcile_requests",
        "schedule": env_float("GATEWAY_RECONCILE_INTERVAL_SECONDS", 60.0),
    },
    "purge-request-logs": {"task": "tenants.tasks.purge_expired_request_logs", "schedule": crontab(minute=15, hour=4)},
}
# Days after a month ends during which its invoices stay drafts (late usage still comes in).
BILLING_INVOICE_GRACE_DAYS = env_int("BILLING_INVOICE_GRACE_DAYS", 3)
# How far back each rollup run looks for days whose usage changed (late records).
BILLING_ROLLUP_LOOKBACK_DAYS = env_int("BILLING_ROLLUP_LOOKBACK_DAYS", 40)
# Raw usage records older than this many days are deleted once rolled up and invoiced; 0 keeps them.
BILLING_USAGE_RETENTION_DAYS = env_int("BILLING_USAGE_RETENTION_DAYS", 0)
# Usage partitions (PostgreSQL) created ahead of this month by the daily beat job.
BILLING_USAGE_PARTITIONS_AHEAD = env_int("BILLING_USAGE_PARTITIONS_AHEAD", 2)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# ISO dates in the admin (Y-m-d H:i), see proxy_platform/formats/en/formats.py.
FORMAT_MODULE_PATH = ["proxy_platform.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# uvicorn serves no static files; in the demo and in DEBUG the ASGI app does (see asgi.py).
SERVE_STATIC = env_bool("SERVE_STATIC", DEBUG)

# Provider credentials and endpoints, by the SDKs' own names (docs/design.md#settings).
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL")
AZURE_OPENAI_API_KEY = env_str("AZURE_OPENAI_API_KEY")
AZURE_OPENAI_ENDPOINT = env_str("AZURE_OPENAI_ENDPOINT")
OPENAI_API_VERSION = env_str("OPENAI_API_VERSION", "2024-10-21")

# Gateway tuning.
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024)
GATEWAY_UPSTREAM_TIMEOUT = env_float("GATEWAY_UPSTREAM_TIMEOUT", 120.0)
GATEWAY_UPSTREAM_CONNECT_TIMEOUT = env_float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 5.0)
# The SDKs' own retries within one upstream call (0: none). The gateway's retry policy below is
# the one that knows the deadline and the other deployments; SDK retries would multiply it.
GATEWAY_UPSTREAM_MAX_RETRIES = env_int("GATEWAY_UPSTREAM_MAX_RETRIES", 0)
# How long a key or tenant configuration may be served from the in-process cache. A revoked
# key stops working on every process within this many seconds (docs/design.md#the-hot-path).
GATEWAY_AUTH_CACHE_SECONDS = env_float("GATEWAY_AUTH_CACHE_SECONDS", 4.0)
# How many keys (by digest, unknown ones too) and tenants one gateway process keeps in memory at
# most, the least recently used dropped first (gateway/lru.py, docs/scaling.md): memory bounded
# whatever the number of keys. A dropped entry costs one query at its next use.
GATEWAY_KEY_CACHE_SIZE = env_int("GATEWAY_KEY_CACHE_SIZE", 20_000)
GATEWAY_TENANT_CACHE_SIZE = env_int("GATEWAY_TENANT_CACHE_SIZE", 5_000)
# The response cache's entries kept in process memory when there is no REDIS_URL (the demo).
GATEWAY_RESPONSE_CACHE_MEMORY_SIZE = env_int("GATEWAY_RESPONSE_CACHE_MEMORY_SIZE", 10_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES
# Limits (gateway/limits/): the tokens-per-minute window, the age after which a slot or budget
# hold of a crashed process is dropped, Redis timeouts, and the output reserved for a budget
# check when a request sets no max_tokens.
GATEWAY_LIMIT_WINDOW_SECONDS = env_int("GATEWAY_LIMIT_WINDOW_SECONDS", 60)
GATEWAY_CONCURRENCY_HORIZON_SECONDS = env_int("GATEWAY_CONCURRENCY_HORIZON_SECONDS", 900)
GATEWAY_LIMITS_REDIS_TIMEOUT = env_float("GATEWAY_LIMITS_REDIS_TIMEOUT", 0.5)
GATEWAY_DEFAULT_OUTPUT_RESERVE = env_int("GATEWAY_DEFAULT_OUTPUT_RESERVE", 4096)
# Routing (gateway/routing/, docs/routing.md): a deployment's circuit breaker opens after this many
# failures (timeouts, 5xx, provider 429s, connection errors) within the window, stays open for the
# cooldown, then lets one probe request decide. The latency strategy explores at this probability.
GATEWAY_BREAKER_FAILURES = env_int("GATEWAY_BREAKER_FAILURES", 5)
GATEWAY_BREAKER_WINDOW_SECONDS = env_float("GATEWAY_BREAKER_WINDOW_SECONDS", 30.0)
GATEWAY_BREAKER_COOLDOWN_SECONDS = env_float("GATEWAY_BREAKER_COOLDOWN_SECONDS", 30.0)
GATEWAY_ROUTING_EXPLORATION = env_float("GATEWAY_ROUTING_EXPLORATION", 0.05)
# How often a gateway process's routing view meets the shared state (gateway/routing/store.py
# RoutingView): its batched success reports go out, the breakers, latencies and other processes'
# attempts in flight come back.
GATEWAY_ROUTING_SYNC_SECONDS = env_float("GATEWAY_ROUTING_SYNC_SECONDS", 0.1)
# Retries and fallbacks (gateway/routing/retry.py): after every deployment of the model and of its
# fallbacks failed, the ones whose failure may pass (timeouts, connection errors, 5xx, provider
# 429/529) are tried again this many more rounds, after a backoff with full jitter (base, cap),
# never sooner than a provider's retry-after (one longer than its cap: not retried), and all of it
# within the request's deadline (then the caller gets the last upstream error).
GATEWAY_RETRIES = env_int("GATEWAY_RETRIES", 1)
GATEWAY_RETRY_BACKOFF_SECONDS = env_float("GATEWAY_RETRY_BACKOFF_SECONDS", 0.25)
GATEWAY_RETRY_BACKOFF_MAX_SECONDS = env_float("GATEWAY_RETRY_BACKOFF_MAX_SECONDS", 4.0)
GATEWAY_RETRY_AFTER_MAX_SECONDS = env_float("GATEWAY_RETRY_AFTER_MAX_SECONDS", 10.0)
GATEWAY_REQUEST_DEADLINE_SECONDS = env_float("GATEWAY_REQUEST_DEADLINE_SECONDS", 180.0)
# A seed for the random draws of `weighted` and `latency` (repeatable tests); unset: random.
GATEWAY_ROUTING_SEED = env_int("GATEWAY_ROUTING_SEED", 0) or None
# Prompt-cache affinity (`affinity: "prefix"` of a model): a tenant's requests whose prompts share
# this many leading tokens go to the same deployment while it is in rotation (0: affinity off).
GATEWAY_AFFINITY_PREFIX_TOKENS = env_int("GATEWAY_AFFINITY_PREFIX_TOKENS", 1024)
# Betas a caller may name in `anthropic-beta` on top of the built-in list (gateway/betas.py):
# comma-separated names; any other beta is a 400 naming the header.
GATEWAY_ANTHROPIC_BETAS = env_list("GATEWAY_ANTHROPIC_BETAS")
# The longest a request waits on one database call of the gateway (gateway/db.py), then 503 (or,
# for a usage record, the journal). Redis calls are bounded by GATEWAY_LIMITS_REDIS_TIMEOUT.
GATEWAY_DB_TIMEOUT = env_float("GATEWAY_DB_TIMEOUT", 3.0)
# A usage record that goes alone (no request log, key touch or budget check) is written on a
# PostgreSQL connection of the event loop's own (two per process), not through a worker thread
# and the pool: less CPU per request. Off: every write through the pool.
GATEWAY_DB_DIRECT = env_bool("GATEWAY_DB_DIRECT", True)
# The reconciler (gateway/journal.py, `manage.py reconcile_requests`): a write-ahead trace older
# than this with no usage record is a request whose process died; recorded as `interrupted`.
# Longer than any request should last: a live request's real record replaces an interrupted one.
GATEWAY_RECONCILE_AFTER_SECONDS = env_float("GATEWAY_RECONCILE_AFTER_SECONDS", 600.0)
# django-ratelimit guards (fixed windows on the Django cache): the tenant's REST endpoints
# (templates, logs, usage; per tenant and group of endpoints, gateway/throttle.py) and the staff
# admin's login (per client address and per username, proxy_platform/login_guard.py). Empty: off.
GATEWAY_TENANT_API_RATE = env_str("GATEWAY_TENANT_API_RATE", "600/m")
ADMIN_LOGIN_RATE = env_str("ADMIN_LOGIN_RATE", "10/m")

# Monitoring (gateway/observability.py). /metrics shows tenants' names, traffic and costs, so it
# wants `Authorization: Bearer <GATEWAY_METRICS_TOKEN>`; without a token it is open in DEBUG only.
# Several gateway processes on one host share their counters through PROMETHEUS_MULTIPROC_DIR, an
# environment variable read by prometheus_client itself (README "Operations").
GATEWAY_METRICS_TOKEN = env_str("GATEWAY_METRICS_TOKEN")
# One JSON line per completion request (logger `gateway.request`), whatever LOG_LEVEL says.
GATEWAY_REQUEST_LOG = env_bool("GATEWAY_REQUEST_LOG", True)

# Every line on stderr is one JSON object (proxy_platform/jsonlog.py): Django's, the gateway's,
# uvicorn's (from the moment Django is loaded; `--log-config proxy_platform/uvicorn_logging.json`
# covers the lines before, a --workers parent, and sends the access log to stderr too) and
# Celery's (proxy_platform/celery.py).
LOGGING_CONFIG = "proxy_platform.jsonlog.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "proxy_platform.jsonlog.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's defaults print plain text in DEBUG (and mail admins otherwise): to the root instead.
        "django": {"handlers": [], "propagate": True},
        "django.server": {"handlers": [], "propagate": True},
        # A 4xx is already in the gateway's request line; 5xx and unhandled exceptions still come here.
        "django.request": {"level": "ERROR"},
        "gateway.request": {"level": "INFO" if GATEWAY_REQUEST_LOG else "CRITICAL"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
    # Probes and scrapers talk plain HTTP to the process from inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
    # Behind a TLS-terminating load balancer, trust its X-Forwarded-Proto (only set this when the
    # balancer overwrites the header: a client could otherwise claim https).
    if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
