"""Billing's writes, one module per domain; reads are in `billing.selectors`.

- `usage`: one metered request → one `UsageRecord` (the hot path's only billing write).
- `rollups`: raw records → daily rollups.
- `invoices`: invoices and credit notes.
- `retention`: raw records past their retention.
- `partitions`: the usage table's monthly partitions (PostgreSQL).
- `alerts`: budget alerts and their delivery.
- `subscriptions`: a tenant's plan and its alert webhook secret.

The names below are re-exported so that callers import `billing.services.<service>` without
knowing the domain module; a test that patches a private helper patches it in its module.
"""

from .alerts import (
    WEBHOOK_TIMEOUT_SECONDS,
    WebhookError,
    budget_alert_deliver,
    budget_alert_payload,
    budget_alerts_check,
    webhook_signature,
)
from .errors import BillingError
from .invoices import InvoiceRunResult, credit_note_create, invoice_number, invoices_finalize, invoices_generate
from .partitions import usage_partition_ensure, usage_partition_months, usage_partitioned, usage_partitions_ensure
from .retention import usage_retention_apply
from .rollups import RollupResult, usage_rollup, usage_rollup_day, usage_summarize_day
from .subscriptions import subscription_webhook_secret_set, subscriptions_set_plan
from .usage import (
    MeteredUsage,
    RecordedUsage,
    usage_cost,
    usage_record_create,
    usage_record_kept,
    usage_record_upsert,
    usage_upsert_statement,
)

__all__ = [
    "WEBHOOK_TIMEOUT_SECONDS",
    "BillingError",
    "InvoiceRunResult",
    "MeteredUsage",
    "RollupResult",
    "WebhookError",
    "budget_alert_deliver",
    "budget_alert_payload",
    "budget_alerts_check",
    "credit_note_create",
    "invoice_number",
    "invoices_finalize",
    "invoices_generate",
    "subscription_webhook_secret_set",
    "subscriptions_set_plan",
    "usage_cost",
    "usage_record_create",
    "usage_record_kept",
    "usage_record_upsert",
    "usage_upsert_statement",
    "RecordedUsage",
    "usage_partition_ensure",
    "usage_partition_months",
    "usage_partitioned",
    "usage_partitions_ensure",
    "usage_retention_apply",
    "usage_rollup",
    "usage_rollup_day",
    "usage_summarize_day",
    "webhook_signature",
]
