"""Tenants, their API keys, and the model catalog they are allowed to use.

The catalog lives here (not in the gateway) because a tenant's configuration refers to it:
which models a tenant may call is tenant data. Prices of those models belong to billing.
"""

from django.db import models
from django.db.models import Q


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    AZURE = "azure", "Azure OpenAI"


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiKey(models.Model):
    """A tenant's key to the gateway. Only a keyed hash of the secret is stored (DESIGN §9).

    `prefix` and `last4` are kept so that staff and the tenant can recognise a key without
    the secret: "tpk_AbC…wxyz".
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="default")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant", "created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.display}"

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last4}"


class CatalogModel(models.Model):
    """A model name tenants can ask for, e.g. "gpt-4o" or "claude-sonnet-4-5".

    The name is ours (what the client sends); each deployment says where it really runs.
    `api_format` is the wire family of the model's provider, which decides translation.
    """

    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    active = models.BooleanField(default=True)
    context_window = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "catalog model"

    def __str__(self) -> str:
        return self.name


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
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["model", "priority", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "provider", "upstream", "region"], name="deployment_unique_target"
            ),
            models.CheckConstraint(
                condition=Q(provider__in=[p.value for p in Provider]), name="deployment_provider_known"
            ),
        ]

    def __str__(self) -> str:
        where = f" @{self.region}" if self.region else ""
        return f"{self.model.name} → {self.provider}:{self.upstream}{where}"
