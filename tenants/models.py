"""Tenants, their API keys, and the model catalog they are allowed to use.

The catalog lives here (not in the gateway) because a tenant's configuration refers to it:
which models a tenant may call is tenant data. Prices of those models belong to billing.
"""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

# Fees, budgets, invoice amounts. Defined here, the bottom of the import chain, so that a key's
# budget and billing's money (billing.models re-exports it) cannot drift apart.
MONEY_DIGITS = {"max_digits": 14, "decimal_places": 2}


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    AZURE = "azure", "Azure OpenAI"


def provider_family(provider: str) -> str:
    """The wire family a provider speaks: "anthropic", or "openai" (OpenAI and Azure OpenAI).
    Every deployment of a catalog model speaks its model's family."""
    return "anthropic" if provider == Provider.ANTHROPIC else "openai"


class Tenant(models.Model):
    """An organisation that calls LLMs through the gateway with its own keys and limits.

    Limits left empty mean "no limit of the tenant's own". An empty `allowed_providers` or an
    empty `allowed_models` means every active catalog entry.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=64, unique=True, help_text="Stable identifier, used in the config file.")
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    allowed_providers = models.JSONField(default=list, blank=True, help_text='e.g. ["openai", "anthropic"]')
    allowed_models = models.ManyToManyField("CatalogModel", blank=True, related_name="tenants")
    region = models.CharField(max_length=32, blank=True, help_text="Pin to deployments in this region; empty: any.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    model_aliases = models.JSONField(
        default=dict, blank=True, help_text='The tenant\'s own names for catalog models: {"fast": "gpt-4o-mini"}.'
    )
    default_params = models.JSONField(
        default=dict,
        blank=True,
        help_text='Request parameters applied when the request leaves them out: {"temperature": 0.2}.',
    )
    max_tokens_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="Ceiling on max_tokens; a request asking for more is capped."
    )
    log_requests = models.BooleanField(default=False, help_text="Store prompts and responses for this tenant.")
    log_retention_days = models.PositiveSmallIntegerField(default=30)
    response_cache_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Answer an identical non-streaming request of this tenant from the cache for this many "
        "seconds; empty: no cache. Never shared between tenants.",
    )
    # db_default on new columns: a process still running the code before them can go on inserting.
    end_user_limits = models.JSONField(
        default=dict,
        db_default={},
        blank=True,
        help_text="Default limits of each of the tenant's end users: "
        '{"requests_per_minute": 20, "tokens_per_minute": 20000, "max_concurrent": 2, '
        '"monthly_budget": "1.00", "daily_budget": "0.10"}.',
    )
    hash_end_user_ids = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Record a keyed hash of the end user id instead of the id itself.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Project(models.Model):
    """A team or product inside a tenant, with its own limits and monthly budget (all optional).

    A key belongs to at most one project; its requests count against the project's limits as
    well as the tenant's and the key's own (the strictest wins), and are attributed to it.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="projects")
    name = models.SlugField(max_length=64, help_text="Unique within the tenant; the key in the config file.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    monthly_budget = models.DecimalField(
        **MONEY_DIGITS, null=True, blank=True, help_text="USD the project may spend per UTC month; empty: no cap."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="project_unique_name"),
            models.CheckConstraint(
                condition=Q(monthly_budget__isnull=True) | Q(monthly_budget__gt=0), name="project_budget_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name}"


class ApiKey(models.Model):
    """A tenant's key to the gateway. Only a keyed hash of the secret is stored (docs/design.md#security).

    `prefix` and `last4` are kept so that staff and the tenant can recognise a key without
    the secret: "tpk_AbCd…wxyz". An imported key keeps less, or nothing when it is short
    (`tenants.keys.key_display_parts`): "…wxyz", "…".
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, null=True, blank=True, related_name="api_keys")
    name = models.CharField(max_length=100, default="default")
    is_admin = models.BooleanField(
        default=False,
        db_default=False,
        help_text="A tenant admin key manages the tenant's own keys (/v1/keys) and cannot call models.",
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.ManyToManyField(
        "CatalogModel",
        blank=True,
        related_name="+",
        help_text="Narrower than the tenant's models; empty: the tenant's.",
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    monthly_budget = models.DecimalField(
        **MONEY_DIGITS,
        null=True,
        blank=True,
        help_text="USD this key may spend per UTC month, on top of the tenant's budget; empty: none of its own.",
    )
    daily_budget = models.DecimalField(
        **MONEY_DIGITS,
        null=True,
        blank=True,
        help_text="USD this key may spend per UTC day (resets at 00:00 UTC); empty: none of its own.",
    )

    class Meta:
        ordering = ["tenant", "created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_budget__isnull=True) | Q(monthly_budget__gt=0), name="apikey_budget_positive"
            ),
            models.CheckConstraint(
                condition=Q(daily_budget__isnull=True) | Q(daily_budget__gt=0), name="apikey_daily_budget_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.display}"

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last4}"

    def status_at(self, when) -> str:
        if self.revoked_at is not None and self.revoked_at <= when:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= when:
            return "expired"
        return "active"


class CatalogModel(models.Model):
    """A model name tenants can ask for, e.g. "gpt-4o" or "claude-sonnet-4-5".

    The name is ours (what the client sends); each deployment says where it really runs.
    `api_format` is the wire family of the model's provider, which decides translation.
    `kind` says which endpoints may use it: a chat model answers /v1/chat/completions and
    /v1/messages (and /v1/responses), an embedding model only /v1/embeddings.
    """

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDING = "embedding", "Embedding"

    class Routing(models.TextChoices):
        PRIORITY = "priority", "Priority (lowest first, the next on failure)"
        WEIGHTED = "weighted", "Weighted (random by weight)"
        LEAST_BUSY = "least_busy", "Least busy (fewest requests in flight)"
        LATENCY = "latency", "Latency (lowest recent latency)"
        COST = "cost", "Cost (cheapest deployment first)"

    class Affinity(models.TextChoices):
        NONE = "", "None"
        PREFIX = "prefix", "Prompt prefix (keep a tenant's shared prefixes on one deployment)"

    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    kind = models.CharField(
        max_length=16,
        choices=Kind.choices,
        default=Kind.CHAT,
        help_text="Chat: /v1/chat/completions, /v1/messages. Embedding: /v1/embeddings only.",
    )
    active = models.BooleanField(default=True)
    context_window = models.PositiveIntegerField(null=True, blank=True)
    routing = models.CharField(
        max_length=16,
        choices=Routing.choices,
        default=Routing.PRIORITY,
        help_text="How a request picks among the model's deployments (after region pinning).",
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text='Catalog model names tried in order when every deployment failed, e.g. ["claude-sonnet-4-5"].',
    )
    affinity = models.CharField(
        max_length=16,
        choices=Affinity.choices,
        default=Affinity.NONE,
        blank=True,
        help_text="Prompt-cache affinity: a tenant's requests sharing a prefix go to the same deployment.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "catalog model"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == self.Kind.EMBEDDING and self.provider == Provider.ANTHROPIC:
            raise ValidationError({"kind": "Anthropic has no embedding models."})


class Deployment(models.Model):
    """Where a catalog model runs: a provider, the upstream model (or Azure deployment) name,
    a region, and optionally a base URL set by staff (never by tenants: SSRF).
    """

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="deployments")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    upstream = models.CharField(max_length=200, help_text="Provider model id, or the Azure deployment name.")
    region = models.CharField(max_length=32, blank=True)
    base_url = models.URLField(blank=True, help_text="Empty: the platform endpoint from the environment.")
    priority = models.PositiveSmallIntegerField(default=0, help_text="Lower is tried first.")
    weight = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Share of traffic under weighted routing."
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="The provider account's request quota; empty: none."
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="The provider account's token quota; empty: none."
    )
    timeout_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="Upstream timeout; empty: GATEWAY_UPSTREAM_TIMEOUT.",
    )
    # The circuit breaker's settings for this deployment (a provider account with its own habits);
    # empty: GATEWAY_BREAKER_FAILURES, _WINDOW_SECONDS, _COOLDOWN_SECONDS.
    breaker_failures = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(10_000)],
        help_text="Failures within the window that take it out of rotation; empty: GATEWAY_BREAKER_FAILURES.",
    )
    breaker_window_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(86_400)],
        help_text="The window its failures are counted in; empty: GATEWAY_BREAKER_WINDOW_SECONDS.",
    )
    breaker_cooldown_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(86_400)],
        help_text="How long it stays out of rotation before a probe; empty: GATEWAY_BREAKER_COOLDOWN_SECONDS.",
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["model", "priority", "id"]
        constraints = [
            # base_url is part of the target: two accounts (or two endpoints) of one provider
            # serving the same upstream model are two deployments.
            models.UniqueConstraint(
                fields=["model", "provider", "upstream", "region", "base_url"], name="deployment_unique_target"
            ),
            models.CheckConstraint(condition=Q(weight__gte=1), name="deployment_weight_positive"),
            models.CheckConstraint(
                condition=Q(provider__in=[p.value for p in Provider]), name="deployment_provider_known"
            ),
        ]

    def __str__(self) -> str:
        where = f" @{self.region}" if self.region else ""
        return f"{self.model.name} → {self.provider}:{self.upstream}{where}"


class PromptTemplate(models.Model):
    """A tenant's named, versioned prompt: chat messages with `{{variable}}` placeholders.

    Versions are immutable: editing a template means adding version n+1. A request names a
    template (and optionally a version; the latest otherwise) and passes the variables.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="templates")
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField(default=1)
    description = models.CharField(max_length=200, blank=True)
    messages = models.JSONField(help_text='[{"role": "system", "content": "You answer as {{persona}}."}]')
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name", "version"], name="template_unique_version"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name} v{self.version}"


class RequestLog(models.Model):
    """Prompt and response of one request, kept only for tenants that turned logging on, and
    only for their retention period. Billing never depends on it: purging it loses no money.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="request_logs")
    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=16)
    status_code = models.PositiveSmallIntegerField()
    request = models.JSONField()
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="requestlog_tenant_recent")]

    def __str__(self) -> str:
        return self.request_id


class StoredResponse(models.Model):
    """A Responses API response (`POST /v1/responses`) that a tenant may read, delete or continue.

    Per-tenant data with the tenant's log retention (`expires_at`), purged with the request logs.
    For an OpenAI or Azure model the provider keeps the response and this row says whose it is and
    which deployment holds it (`kept_by_gateway` false: reads and continuations go there); for a
    translated model (Anthropic) the gateway keeps the conversation itself: `input_items` and the
    `response` object, and a continuation rebuilds the history from the chain of
    `previous_response_id`s (docs/responses.md).
    """

    response_id = models.CharField(max_length=200, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="stored_responses")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=100, help_text="The catalog model name it was made with.")
    deployment = models.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="stored_responses"
    )
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    kept_by_gateway = models.BooleanField(default=False)
    previous_response_id = models.CharField(max_length=200, blank=True)
    input_items = models.JSONField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="storedresponse_tenant_recent")]

    def __str__(self) -> str:
        return self.response_id


class ProviderCredential(models.Model):
    """An API key for a provider: the platform's own (no tenant) or a tenant's (bring your own key).

    The secret is stored encrypted (tenants/crypto.py) and never shown again; `last4` lets
    staff recognise it. `base_url` is for staff only: tenants never choose where we connect.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="credentials")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    encrypted_secret = models.TextField(editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    base_url = models.URLField(blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "provider"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "provider"],
                condition=Q(active=True),
                nulls_distinct=False,
                name="credential_one_active_per_tenant",
            ),
        ]

    def __str__(self) -> str:
        owner = self.tenant.slug if self.tenant_id else "platform"
        return f"{owner} {self.provider} …{self.last4}"


class PlatformPolicy(models.Model):
    """Rules set by staff that override every tenant. One row (pk=1)."""

    blocked_models = models.JSONField(default=list, blank=True, help_text="Catalog model names refused for everyone.")
    blocked_providers = models.JSONField(default=list, blank=True, help_text="Providers refused for everyone (403).")
    killed_providers = models.JSONField(
        default=list,
        blank=True,
        help_text="Kill switch: deployments of these providers are skipped (503 if none left).",
    )
    max_tokens_cap = models.PositiveIntegerField(null=True, blank=True)
    maintenance_message = models.CharField(
        max_length=300, blank=True, help_text="When set, every gateway request is refused with 503 and this message."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "platform policy"
        verbose_name_plural = "platform policy"

    def __str__(self) -> str:
        return "Platform policy"

    @classmethod
    def load(cls) -> "PlatformPolicy":
        return cls.objects.get_or_create(pk=1)[0]


class AuditEntry(models.Model):
    """One change to the platform's configuration: who made it, when, to what, and the fields
    before and after (tenants/audit.py writes them; docs/audit.md).

    Append-only: the admin offers no way to change or delete one, and on PostgreSQL a trigger
    refuses UPDATE and DELETE (migration 0011_audit_trail). Nothing here is a foreign key, so that deleting a
    tenant, a key or a staff user neither cascades to nor rewrites the entries about them: the
    tenant's id and slug, the user's id and the key's id are kept as they were.
    """

    class ActorKind(models.TextChoices):
        STAFF = "staff", "Staff user"
        COMMAND = "command", "Management command"
        IMPORT = "import", "Configuration import"
        TENANT_KEY = "tenant_key", "Tenant admin key"
        SYSTEM = "system", "System"

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"

    at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_label = models.CharField(max_length=200, help_text="Username, command, import source or key (prefix…last4).")
    staff_user_id = models.PositiveIntegerField(null=True, blank=True)
    api_key_id = models.PositiveBigIntegerField(null=True, blank=True)
    tenant_id = models.PositiveBigIntegerField(null=True, blank=True, help_text="Kept after the tenant is deleted.")
    tenant_slug = models.CharField(max_length=64, blank=True)
    object_type = models.CharField(max_length=100, help_text='"app_label.model", e.g. "tenants.apikey".')
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    action = models.CharField(max_length=8, choices=Action.choices)
    changes = models.JSONField(default=dict, blank=True, help_text='{"field": [before, after]}; secrets never.')

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"
        indexes = [
            models.Index(fields=["tenant_id", "-at"], name="auditentry_tenant_recent"),
            models.Index(fields=["object_type", "object_id"], name="auditentry_object"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type} {self.object_repr} by {self.actor_label}"
