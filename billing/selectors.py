"""Reads on billing data."""

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from .models import ModelPrice, Subscription, UsageRecord


def price_in_force(*, model_id: int, at: datetime) -> ModelPrice | None:
    return ModelPrice.objects.filter(model_id=model_id, effective_from__lte=at).order_by("-effective_from").first()


def money_str(amount: Decimal) -> str:
    """A decimal string with at least two places and no trailing noise: "0.0000123", "12.50"."""
    text = f"{amount:f}"
    if "." not in text:
        return text + ".00"
    whole, fraction = text.split(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _day_range(start: date, end: date) -> tuple[datetime, datetime]:
    return datetime.combine(start, time.min, tzinfo=UTC), datetime.combine(
        end + timedelta(days=1), time.min, tzinfo=UTC
    )


_ZERO = Decimal(0)


def _totals(qs) -> dict:
    return qs.aggregate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status_code__gte=400) | ~Q(error_type="")),
        cache_hits=Count("id", filter=Q(cache_hit=True)),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        cost=Coalesce(Sum("cost"), _ZERO),
    )


def usage_summary(*, tenant_id: int, start: date, end: date) -> dict:
    """A tenant's usage between two dates, both included (UTC days), in the /v1/usage shape."""
    since, until = _day_range(start, end)
    qs = UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=since, created_at__lt=until)
    totals = _totals(qs)
    totals["cost"] = money_str(totals["cost"])
    by_model = [
        {**row, "cost": money_str(row["cost"])}
        for row in qs.values("model")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost"),
        )
        .order_by("model")
    ]
    by_endpoint = [
        {**row, "cost": money_str(row["cost"])}
        for row in qs.values("endpoint")
        .annotate(requests=Count("id"), errors=Count("id", filter=Q(status_code__gte=400)), cost=Sum("cost"))
        .order_by("endpoint")
    ]
    by_error_type = list(
        qs.exclude(error_type="").values("error_type").annotate(requests=Count("id")).order_by("error_type")
    )
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "currency": subscription.plan.currency if subscription else "USD",
        "totals": totals,
        "by_model": by_model,
        "by_endpoint": by_endpoint,
        "by_error_type": by_error_type,
    }
