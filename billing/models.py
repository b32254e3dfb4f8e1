"""Plans, prices and usage: what every tenant is billed from.

Money is Decimal everywhere. Per-request costs are tiny (a few millionths of a dollar), so
they are kept with 12 decimal places; rounding to the cent happens once, on invoice lines.
"""

from decimal import Decimal

from django.db import models
from django.db.models import Q

from tenants.models import ApiKey, CatalogModel, Tenant

PRICE_DIGITS = {"max_digits": 14, "decimal_places": 6}  # per 1M tokens, e.g. 0.075000
COST_DIGITS = {"max_digits": 24, "decimal_places": 12}  # exact cost of one request
MONEY_DIGITS = {"max_digits": 14, "decimal_places": 2}  # fees, budgets, invoice amounts


class Plan(models.Model):
    """A commercial plan: base fee, included allowance, markup on provider cost, default budget."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=200, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    monthly_base_fee = models.DecimalField(**MONEY_DIGITS, default=Decimal("0"))
    included_allowance = models.DecimalField(
        **MONEY_DIGITS, default=Decimal("0"), help_text="Usage (after markup) included in the base fee."
    )
    markup_percent = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal("0"))
    default_monthly_budget = models.DecimalField(**MONEY_DIGITS, null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """A tenant's commercial terms: its plan and its monthly budget (empty: the plan's default)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    monthly_budget = models.DecimalField(**MONEY_DIGITS, null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.tenant.slug} on {self.plan.name}"

    @property
    def effective_budget(self) -> Decimal | None:
        return self.monthly_budget if self.monthly_budget is not None else self.plan.default_monthly_budget


class ModelPrice(models.Model):
    """Price of a catalog model from `effective_from` until the next row's date.

    A request is billed at the row in force when it was made. Cached-input and cache-write
    prices fall back to the input price when empty (providers that give no discount).
    """

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField()
    input_per_1m = models.DecimalField(**PRICE_DIGITS)
    output_per_1m = models.DecimalField(**PRICE_DIGITS)
    cached_input_per_1m = models.DecimalField(**PRICE_DIGITS, null=True, blank=True)
    cache_write_per_1m = models.DecimalField(**PRICE_DIGITS, null=True, blank=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="modelprice_one_per_instant"),
            models.CheckConstraint(
                condition=Q(input_per_1m__gte=0) & Q(output_per_1m__gte=0), name="modelprice_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} from {self.effective_from:%Y-%m-%d}"


class UsageRecord(models.Model):
    """One gateway request: who, what, the tokens the provider reported, and its cost.

    Written for every request of a known tenant, errors and cache hits included. `estimated`
    marks token counts made by the local tokenizer because the provider's usage never came.
    `input_tokens` is the total prompt, cached and cache-write tokens included.
    """

    class Endpoint(models.TextChoices):
        CHAT = "chat", "/v1/chat/completions"
        MESSAGES = "messages", "/v1/messages"

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=100, help_text="The model name the client asked for.")
    provider = models.CharField(max_length=16, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=16, choices=Endpoint.choices)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**COST_DIGITS, default=Decimal("0"))
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    latency_ms = models.PositiveIntegerField(default=0)
    streamed = models.BooleanField(default=False)
    estimated = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="usage_tenant_time")]
        constraints = [
            models.CheckConstraint(condition=Q(cost__gte=0), name="usage_cost_not_negative"),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=models.F("cached_input_tokens") + models.F("cache_write_tokens")),
                name="usage_cache_within_input",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.tenant_id} {self.model} {self.status_code}"

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400
