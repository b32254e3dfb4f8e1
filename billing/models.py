"""Plans, prices and usage: what every tenant is billed from.

Money is Decimal everywhere. Per-request costs are tiny (a few millionths of a dollar), so
they are kept with 12 decimal places; rounding to the cent happens once, on invoice lines.
"""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce

from billing.pricing import Price, Tier
from tenants.models import MONEY_DIGITS, ApiKey, CatalogModel, Project, Tenant

PRICE_DIGITS = {"max_digits": 14, "decimal_places": 6}  # per 1M tokens, e.g. 0.075000
COST_DIGITS = {"max_digits": 24, "decimal_places": 12}  # exact cost of one request


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
    minimum_commitment = models.DecimalField(
        **MONEY_DIGITS,
        default=Decimal("0"),
        help_text="The least a monthly invoice comes to; a shortfall is billed as a true-up line.",
    )
    default_monthly_budget = models.DecimalField(**MONEY_DIGITS, null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def default_alert_thresholds() -> list[int]:
    return [50, 80, 100]


def validate_alert_thresholds(value) -> None:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and 0 < item <= 1000 for item in value
    ):
        raise ValidationError("A list of whole percentages between 1 and 1000, e.g. [50, 80, 100].")


class Subscription(models.Model):
    """A tenant's commercial terms: its plan and its monthly budget (empty: the plan's default),
    and where budget alerts go (`BudgetAlert`).

    `alert_webhook_secret` holds the signing secret encrypted (tenants.crypto); it is set through
    `billing.services.subscription_webhook_secret_set`, read through
    `billing.selectors.subscription_webhook_secret_get`, never shown.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    monthly_budget = models.DecimalField(**MONEY_DIGITS, null=True, blank=True)
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds,
        blank=True,
        validators=[validate_alert_thresholds],
        help_text="Percentages of the monthly budget that raise an alert, once a month each: [50, 80, 100].",
    )
    alert_emails = models.TextField(blank=True, help_text="Comma-separated addresses; empty: no alert emails.")
    alert_webhook_url = models.URLField(
        blank=True, help_text="Set by staff only. Alerts are POSTed here as signed JSON; empty: no webhook."
    )
    alert_webhook_secret = models.TextField(blank=True, editable=False, help_text="Encrypted signing secret.")

    def __str__(self) -> str:
        return f"{self.tenant.slug} on {self.plan.name}"

    @property
    def effective_budget(self) -> Decimal | None:
        return self.monthly_budget if self.monthly_budget is not None else self.plan.default_monthly_budget


class ModelPrice(models.Model):
    """Price of a catalog model from `effective_from` until the next row's date.

    A request is billed at the row in force when it was made. Cached-input and cache-write
    prices fall back to the input price when empty (providers that give no discount); the
    one-hour cache-write price falls back to the cache-write price. Long-context prices are
    `PriceTier` rows of this row (billing/pricing.py).
    """

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField()
    input_per_1m = models.DecimalField(**PRICE_DIGITS)
    output_per_1m = models.DecimalField(**PRICE_DIGITS)
    cached_input_per_1m = models.DecimalField(**PRICE_DIGITS, null=True, blank=True)
    cache_write_per_1m = models.DecimalField(
        **PRICE_DIGITS, null=True, blank=True, help_text="A five-minute cache write; empty: the input price."
    )
    cache_write_1h_per_1m = models.DecimalField(
        **PRICE_DIGITS, null=True, blank=True, help_text="A one-hour cache write; empty: the cache-write price."
    )

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

    def as_price(self) -> Price:
        """The row's prices (and tiers) as the pure pricing functions take them.

        Reads `tiers.all()`: callers converting many rows prefetch "tiers".
        """
        return Price(
            input_per_1m=self.input_per_1m,
            output_per_1m=self.output_per_1m,
            cached_input_per_1m=self.cached_input_per_1m,
            cache_write_per_1m=self.cache_write_per_1m,
            cache_write_1h_per_1m=self.cache_write_1h_per_1m,
            tiers=tuple(tier.as_tier() for tier in sorted(self.tiers.all(), key=lambda t: t.above_input_tokens)),
        )


class PriceTier(models.Model):
    """Long-context prices of a price row: a request whose input (cache reads and writes included)
    is above `above_input_tokens` is billed WHOLLY at these prices (the highest tier it reaches).

    Empty cache prices fall back as the row's do, within the tier: cached input and cache writes
    to the tier's input price, one-hour writes to the tier's cache-write price. Like its row, a
    tier that billed a request is never edited: a price change is a new row with its own tiers.
    """

    price = models.ForeignKey(ModelPrice, on_delete=models.CASCADE, related_name="tiers")
    above_input_tokens = models.PositiveIntegerField()
    input_per_1m = models.DecimalField(**PRICE_DIGITS)
    output_per_1m = models.DecimalField(**PRICE_DIGITS)
    cached_input_per_1m = models.DecimalField(**PRICE_DIGITS, null=True, blank=True)
    cache_write_per_1m = models.DecimalField(**PRICE_DIGITS, null=True, blank=True)
    cache_write_1h_per_1m = models.DecimalField(**PRICE_DIGITS, null=True, blank=True)

    class Meta:
        ordering = ["price", "above_input_tokens"]
        constraints = [
            models.UniqueConstraint(fields=["price", "above_input_tokens"], name="pricetier_one_per_threshold"),
            models.CheckConstraint(
                condition=Q(input_per_1m__gte=0) & Q(output_per_1m__gte=0), name="pricetier_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.price} above {self.above_input_tokens} input tokens"

    def as_tier(self) -> Tier:
        return Tier(
            above_input_tokens=self.above_input_tokens,
            input_per_1m=self.input_per_1m,
            output_per_1m=self.output_per_1m,
            cached_input_per_1m=self.cached_input_per_1m,
            cache_write_per_1m=self.cache_write_per_1m,
            cache_write_1h_per_1m=self.cache_write_1h_per_1m,
            id=self.id,
        )


class UsageRecord(models.Model):
    """One gateway request: who, what, the tokens the provider reported, and its cost.

    Written for every request of a known tenant, errors and cache hits included. `estimated`
    marks token counts made by the local tokenizer because the provider's usage never came.
    `input_tokens` is the total prompt, cached and cache-write tokens included;
    `cache_write_1h_tokens` is the part of `cache_write_tokens` written for one hour.
    `price_tier` is the long-context tier the request was billed at (empty: the base prices).

    On PostgreSQL the table is partitioned by UTC month on `created_at` (migration 0015,
    billing/services/partitions.py): its primary key there is (id, created_at), which Django
    does not need to know; `id` stays unique (one sequence) and the ORM reads and deletes by it.
    """

    class Endpoint(models.TextChoices):
        CHAT = "chat", "/v1/chat/completions"
        MESSAGES = "messages", "/v1/messages"
        EMBEDDINGS = "embeddings", "/v1/embeddings"
        RESPONSES = "responses", "/v1/responses"

    # Unique with created_at (Meta): on PostgreSQL the table is partitioned by month on created_at.
    request_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    end_user = models.CharField(
        max_length=256, blank=True, db_default="", help_text="The caller's own user id (hashed when the tenant asks)."
    )
    tags = models.JSONField(default=dict, blank=True, db_default={}, help_text="x-request-tags: {key: value}.")
    model = models.CharField(
        max_length=100,
        help_text="The catalog model that answered (and is billed); the asked-for one unless it fell back.",
    )
    requested_model = models.CharField(
        max_length=100,
        blank=True,
        db_default="",
        help_text="The model name the client asked for, when a fallback model answered; empty: `model`.",
    )
    provider = models.CharField(max_length=16, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=16, choices=Endpoint.choices)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    # db_default: a gateway still running the code before this column existed can go on inserting.
    cache_write_1h_tokens = models.PositiveIntegerField(default=0, db_default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**COST_DIGITS, default=Decimal("0"))
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    price_tier = models.ForeignKey(PriceTier, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    latency_ms = models.PositiveIntegerField(default=0)
    streamed = models.BooleanField(default=False)
    estimated = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="usage_tenant_time"),
            # An end user's spend this month (admission seeds, the export by end user).
            models.Index(
                fields=["tenant", "end_user", "created_at"], name="usage_end_user_time", condition=~Q(end_user="")
            ),
        ]
        constraints = [
            # A request's created_at is fixed when it starts and travels with its journal trace and
            # spooled record: a replayed write collides with the first (billing/services/usage.py).
            models.UniqueConstraint(fields=["request_id", "created_at"], name="usage_one_per_request"),
            models.CheckConstraint(condition=Q(cost__gte=0), name="usage_cost_not_negative"),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=models.F("cached_input_tokens") + models.F("cache_write_tokens")),
                name="usage_cache_within_input",
            ),
            models.CheckConstraint(
                condition=Q(cache_write_1h_tokens__lte=models.F("cache_write_tokens")),
                name="usage_1h_writes_within_writes",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.tenant_id} {self.model} {self.status_code}"

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400


# --- rollups -------------------------------------------------------------------------------


class UsageRollup(models.Model):
    """Usage of one UTC day, summed per tenant, project, model, endpoint, outcome and price row.

    The outcome is the status code, the error type and whether the answer came from the
    cache. The price row and its long-context tier are part of the key so that invoices, which bill each request at the
    price in force when it was made, can be computed from rollups alone. A day is always
    rolled up whole (delete and insert under the lock of its `UsageRollupDay` row), so running
    the rollup again, or twice at once, gives the same rows.

    The project is kept (invoices' cost centres, reports by project) by its id and no database
    constraint: deleting a project sets its raw records' project to NULL, and doing the same
    here could merge two rows into one key; a deleted project's id simply finds no project,
    which every report reads as "no project", as it reads the raw records.
    """

    day = models.DateField()
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(
        Project, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=16, choices=UsageRecord.Endpoint.choices)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    cache_hit = models.BooleanField(default=False)
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    price_tier = models.ForeignKey(PriceTier, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    requests = models.PositiveBigIntegerField(default=0)
    streamed = models.PositiveBigIntegerField(default=0)
    estimated = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_1h_tokens = models.PositiveBigIntegerField(default=0, db_default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=28, decimal_places=12, default=Decimal("0"))
    latency_ms = models.PositiveBigIntegerField(default=0, help_text="Sum over the requests, for averages.")
    # Requests per latency bucket (billing/latency.py): percentiles from rollups alone.
    lat_lt_50 = models.PositiveBigIntegerField(default=0)
    lat_lt_100 = models.PositiveBigIntegerField(default=0)
    lat_lt_200 = models.PositiveBigIntegerField(default=0)
    lat_lt_300 = models.PositiveBigIntegerField(default=0)
    lat_lt_500 = models.PositiveBigIntegerField(default=0)
    lat_lt_750 = models.PositiveBigIntegerField(default=0)
    lat_lt_1000 = models.PositiveBigIntegerField(default=0)
    lat_lt_1500 = models.PositiveBigIntegerField(default=0)
    lat_lt_2000 = models.PositiveBigIntegerField(default=0)
    lat_lt_3000 = models.PositiveBigIntegerField(default=0)
    lat_lt_5000 = models.PositiveBigIntegerField(default=0)
    lat_lt_10000 = models.PositiveBigIntegerField(default=0)
    lat_lt_20000 = models.PositiveBigIntegerField(default=0)
    lat_lt_30000 = models.PositiveBigIntegerField(default=0)
    lat_lt_60000 = models.PositiveBigIntegerField(default=0)
    lat_ge_60000 = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "tenant", "model"]
        indexes = [models.Index(fields=["tenant", "day"], name="rollup_tenant_day")]
        constraints = [
            # NULL prices (errors) must collide too, hence the COALESCE.
            models.UniqueConstraint(
                models.F("day"),
                models.F("tenant"),
                Coalesce(models.F("project"), models.Value(0)),
                models.F("model"),
                models.F("endpoint"),
                models.F("status_code"),
                models.F("error_type"),
                models.F("cache_hit"),
                Coalesce(models.F("price"), models.Value(0)),
                Coalesce(models.F("price_tier"), models.Value(0)),
                name="rollup_one_row_per_key_project",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant_id} {self.model} {self.endpoint} {self.status_code}"


class UsageRollupDay(models.Model):
    """A UTC day whose usage is rolled up, with the number of raw records the rollup saw.

    When the day's raw records no longer number `records` (a late record came in), the next
    rollup run does the day again. A pruned day's raw records were deleted by the retention
    job: its rollups are all that is left and are never recomputed.
    """

    day = models.DateField(unique=True)
    records = models.PositiveBigIntegerField(default=0)
    rolled_up_at = models.DateTimeField(null=True, blank=True)
    # The `rolled_up_at` of the rollups the day's summaries (UsageTenantDay, UsageModelDay) were
    # built from. Anything else (NULL: rolled up before summaries existed, or by a worker still
    # running older code during an upgrade) means the summaries are not current: the reports read
    # the day's rollups instead, and the next rollup run builds them (billing/services/rollups.py).
    summarized_at = models.DateTimeField(null=True, blank=True)
    pruned = models.BooleanField(default=False)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day}: {self.records} records"


# --- daily summaries: the rollups of a day, coarser, for the platform-wide reports ------------


class UsageTenantDay(models.Model):
    """A day's usage per tenant and project: its rollup rows summed over model, endpoint,
    outcome and price, with the errors and response-cache hits counted.

    With thousands of small tenants a day's rollups barely compress (a rollup row held 1.6
    records on average in bench/tenants_scale.py); the dashboard and analytics read their
    figures per tenant (and per project) from these rows, one per tenant and project active
    that day. Written from the day's rollups, in the same transaction and under the same lock of
    its `UsageRollupDay` row (billing/services/rollups.py): deleted and written again whenever
    the rollups are, kept when the day is pruned (its rollups stay too). Like the rollups, the
    project is an id without a constraint.
    """

    day = models.DateField()
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(
        Project, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0, help_text="Status >= 400 or an error type.")
    cache_hits = models.PositiveBigIntegerField(default=0, help_text="Answered from the response cache.")
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=28, decimal_places=12, default=Decimal("0"))

    class Meta:
        indexes = [models.Index(fields=["tenant", "day"], name="tenantday_tenant_day")]
        constraints = [
            models.UniqueConstraint(
                models.F("day"),
                models.F("tenant"),
                Coalesce(models.F("project"), models.Value(0)),
                name="tenantday_one_row_per_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant_id} {self.project_id}"


class UsageModelDay(models.Model):
    """The whole platform's usage of a day per model, endpoint, outcome and price row: its
    rollup rows summed over tenants and projects (a few hundred rows a day, whatever the number
    of tenants).

    Keeps what the dashboard's platform-wide figures need: the model and endpoint breakdown,
    errors by type (status and error type), the response-cache and prompt-caching savings (the
    price row and the token columns) and the latency histogram. Written and kept exactly like
    `UsageTenantDay`.
    """

    day = models.DateField()
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=16, choices=UsageRecord.Endpoint.choices)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    cache_hit = models.BooleanField(default=False)
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_1h_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=28, decimal_places=12, default=Decimal("0"))
    # Requests per latency bucket, as in UsageRollup (billing/latency.py).
    lat_lt_50 = models.PositiveBigIntegerField(default=0)
    lat_lt_100 = models.PositiveBigIntegerField(default=0)
    lat_lt_200 = models.PositiveBigIntegerField(default=0)
    lat_lt_300 = models.PositiveBigIntegerField(default=0)
    lat_lt_500 = models.PositiveBigIntegerField(default=0)
    lat_lt_750 = models.PositiveBigIntegerField(default=0)
    lat_lt_1000 = models.PositiveBigIntegerField(default=0)
    lat_lt_1500 = models.PositiveBigIntegerField(default=0)
    lat_lt_2000 = models.PositiveBigIntegerField(default=0)
    lat_lt_3000 = models.PositiveBigIntegerField(default=0)
    lat_lt_5000 = models.PositiveBigIntegerField(default=0)
    lat_lt_10000 = models.PositiveBigIntegerField(default=0)
    lat_lt_20000 = models.PositiveBigIntegerField(default=0)
    lat_lt_30000 = models.PositiveBigIntegerField(default=0)
    lat_lt_60000 = models.PositiveBigIntegerField(default=0)
    lat_ge_60000 = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                models.F("day"),
                models.F("model"),
                models.F("endpoint"),
                models.F("status_code"),
                models.F("error_type"),
                models.F("cache_hit"),
                Coalesce(models.F("price"), models.Value(0)),
                name="modelday_one_row_per_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model} {self.endpoint} {self.status_code}"


# --- invoices ------------------------------------------------------------------------------


class SharedCost(models.Model):
    """Shared infrastructure cost of a month, entered by staff, split among the tenants billed
    in that currency pro rata to their provider cost (largest remainder, to the cent)."""

    period = models.DateField(help_text="The first day of the month.")
    description = models.CharField(max_length=200)
    amount = models.DecimalField(**MONEY_DIGITS)
    currency = models.CharField(max_length=3, default="USD")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period", "description"]
        verbose_name = "shared infrastructure cost"
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="sharedcost_not_negative"),
            models.CheckConstraint(condition=Q(period__day=1), name="sharedcost_period_is_first_day"),
        ]

    def __str__(self) -> str:
        return f"{self.period:%Y-%m} {self.description}: {self.amount} {self.currency}"


class InvoiceRun(models.Model):
    """One row per month, locked while its invoices are generated: runs of a month take turns.

    `closed_at` is set when the automatic run finalized the month after its grace period; the
    beat job leaves the month alone from then on (a correction is staff's work).
    """

    period = models.DateField(unique=True)
    generated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.period:%Y-%m}"


class Invoice(models.Model):
    """A tenant's invoice for one month, or a credit note cancelling a finalized one.

    A draft is regenerated freely; a finalized document never changes (on PostgreSQL a trigger
    refuses it). A correction is a credit note reversing the invoice, after which the next
    generation issues a new draft with the next sequence number.
    """

    class Kind(models.TextChoices):
        INVOICE = "invoice", "Invoice"
        CREDIT_NOTE = "credit_note", "Credit note"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINALIZED = "finalized", "Finalized"

    number = models.CharField(max_length=40, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.INVOICE)
    sequence = models.PositiveSmallIntegerField(default=1)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField(help_text="The first day of the month.")
    period_end = models.DateField(help_text="The last day of the month.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    currency = models.CharField(max_length=3, default="USD")
    plan_name = models.CharField(max_length=64, blank=True)
    corrects = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="credit_notes")
    note = models.CharField(max_length=200, blank=True)
    provider_cost = models.DecimalField(
        max_digits=28, decimal_places=12, default=Decimal("0"), help_text="Exact provider cost of the usage billed."
    )
    subtotal = models.DecimalField(**MONEY_DIGITS, default=Decimal("0"))
    total = models.DecimalField(**MONEY_DIGITS, default=Decimal("0"))
    generated_at = models.DateTimeField()
    finalized_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period", "number"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period", "kind", "sequence"], name="invoice_one_per_sequence"),
            models.CheckConstraint(
                condition=Q(status="draft", finalized_at__isnull=True)
                | Q(status="finalized", finalized_at__isnull=False),
                name="invoice_finalized_has_date",
            ),
            models.CheckConstraint(
                condition=Q(kind="invoice", corrects__isnull=True) | Q(kind="credit_note", corrects__isnull=False),
                name="invoice_credit_note_corrects",
            ),
            models.CheckConstraint(condition=Q(period__day=1), name="invoice_period_is_first_day"),
        ]

    def __str__(self) -> str:
        return self.number

    @property
    def is_finalized(self) -> bool:
        return self.status == self.Status.FINALIZED


class InvoiceLine(models.Model):
    """One line: quantity × unit price, rounded half-up to the cent once, here.

    Usage lines are per price row, long-context tier and token type: quantity in tokens, unit price per 1M tokens
    (unit "1M tokens"), so amount = quantity × unit price / 1,000,000. `key` names the line
    within its invoice, so that a regeneration updates the same rows.
    """

    class Type(models.TextChoices):
        INPUT = "input", "Input tokens"
        CACHED_INPUT = "cached_input", "Cached input tokens"
        CACHE_WRITE = "cache_write", "5-minute cache write tokens"
        CACHE_WRITE_1H = "cache_write_1h", "1-hour cache write tokens"
        OUTPUT = "output", "Output tokens"
        LONG_INPUT = "long_input", "Long-context input tokens"
        LONG_CACHED_INPUT = "long_cached_input", "Long-context cached input tokens"
        LONG_CACHE_WRITE = "long_cache_write", "Long-context 5-minute cache write tokens"
        LONG_CACHE_WRITE_1H = "long_cache_write_1h", "Long-context 1-hour cache write tokens"
        LONG_OUTPUT = "long_output", "Long-context output tokens"
        MARKUP = "markup", "Markup on provider cost"
        BASE_FEE = "base_fee", "Base fee"
        ALLOWANCE_CREDIT = "allowance_credit", "Included allowance"
        SHARED_COST = "shared_cost", "Shared infrastructure"
        MINIMUM_COMMITMENT = "minimum_commitment", "Minimum commitment true-up"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    key = models.CharField(max_length=64)
    position = models.PositiveIntegerField()
    line_type = models.CharField(max_length=24, choices=Type.choices)
    model = models.CharField(max_length=100, blank=True)
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    price_tier = models.ForeignKey(PriceTier, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    description = models.CharField(max_length=200, blank=True)
    quantity = models.DecimalField(max_digits=28, decimal_places=12)
    unit = models.CharField(max_length=16)
    unit_price = models.DecimalField(max_digits=24, decimal_places=12)
    amount = models.DecimalField(**MONEY_DIGITS)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "key"], name="invoiceline_one_per_key"),
        ]

    def __str__(self) -> str:
        return f"{self.invoice.number} {self.description}: {self.amount}"


class InvoiceCostCentre(models.Model):
    """One project's part of one usage line (the invoice's cost centres, billing/invoicing.py):
    its tokens and its share of the line's amount, the shares of a line adding up to it.

    The project is kept by name, as the invoice keeps its plan's and its models' names: a
    document says what was billed then, whatever becomes of the project. "" is the usage of
    keys without a project. Like its line, it never changes once the invoice is finalized (on
    PostgreSQL a trigger refuses it).
    """

    line = models.ForeignKey(InvoiceLine, on_delete=models.CASCADE, related_name="cost_centres")
    project = models.CharField(max_length=64, blank=True)
    quantity = models.DecimalField(max_digits=28, decimal_places=12)
    amount = models.DecimalField(**MONEY_DIGITS)

    class Meta:
        ordering = ["line", "project"]
        verbose_name = "invoice cost centre"
        constraints = [
            models.UniqueConstraint(fields=["line", "project"], name="invoicecostcentre_one_per_project"),
        ]

    def __str__(self) -> str:
        return f"{self.line} / {self.project or 'no project'}: {self.amount}"


# --- budget alerts -------------------------------------------------------------------------


class BudgetAlert(models.Model):
    """A tenant's month-to-date spend reached `threshold` percent of its monthly budget.

    One row per tenant, month and threshold (the unique constraint): concurrent checkers race on
    INSERT … ON CONFLICT DO NOTHING and only the one whose insert went through delivers it.
    `email_sent_at` and `webhook_delivered_at` make delivery retries resume where they stopped.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budget_alerts")
    period = models.DateField(help_text="The first day of the month.")
    threshold = models.PositiveIntegerField(help_text="Percent of the budget.")
    spend = models.DecimalField(**COST_DIGITS, help_text="Month-to-date cost when the alert was raised.")
    budget = models.DecimalField(**MONEY_DIGITS)
    created_at = models.DateTimeField()
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-period", "tenant", "threshold"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period", "threshold"], name="budgetalert_once_per_period"),
            models.CheckConstraint(condition=Q(period__day=1), name="budgetalert_period_is_first_day"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.period:%Y-%m} {self.threshold}%"
