"""Filters of the dashboard pages: money with two places, counts with thousands separators,
ratios as percentages. Display only; the figures themselves stay Decimal and int."""

from decimal import Decimal

from django import template

from console.analytics import endpoint_label
from console.analytics import money as money_str

register = template.Library()


@register.filter
def money(value) -> str:
    """Decimal → "1,234.57" (half-up); None → "—"."""
    if value is None or value == "":
        return "—"
    text = money_str(Decimal(value))
    whole, _, fraction = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-')):,}.{fraction}"


@register.filter(name="endpoint_label")
def endpoint_label_filter(value) -> str:
    """ "embeddings" → "Embeddings (/v1/embeddings)": an endpoint as staff read it."""
    return endpoint_label(str(value))


@register.filter
def num(value) -> str:
    """12345 → "12,345"; None → "—"."""
    return "—" if value is None or value == "" else f"{int(value):,}"


@register.filter
def pct(value, places: int = 1) -> str:
    """0.0123 → "1.2 %"; None → "—"."""
    return "—" if value is None else f"{float(value) * 100:.{int(places)}f} %"


@register.filter
def growth(value) -> str:
    """Already in percent: 12.5 → "+12.5 %"; None → "—" (nothing to compare with)."""
    return "—" if value is None else f"{value:+.1f} %"


@register.filter
def bar_width(value, cap: int = 100) -> str:
    """A ratio as a CSS width for a progress bar, capped: 1.3 → "100"."""
    return "0" if value is None else f"{min(float(value) * 100, cap):.0f}"
