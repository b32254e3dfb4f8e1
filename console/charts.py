"""Small SVG charts drawn on the server: the admin pages need no JavaScript and no CDN, and
work offline. Pure: values in, markup out (every label escaped).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True, slots=True)
class Point:
    day: date
    value: Decimal | int | float


def _nice_max(value: float) -> float:
    """A round axis maximum at or above `value`: 1, 2, 2.5 or 5 × a power of ten."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _axis_label(x: float, y: float, text: str) -> str:
    return f'<text x="{x}" y="{y}" font-size="10" text-anchor="end" fill="#666">{escape(text)}</text>'


def bar_chart(
    points: Sequence[Point],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
    width: int = 640,
    height: int = 180,
    color: str = "#417690",
    element_id: str = "",
) -> SafeString:
    """Daily bars with a y axis (0 and a round maximum), the first, middle and last day under
    the x axis, and each bar's day and value as its tooltip (<title>)."""
    left, right, top, bottom = 64, 8, 22, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [float(p.value) for p in points]
    top_value = _nice_max(max(values, default=0.0))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}"'
        + (f' id="{escape(element_id)}"' if element_id else "")
        + ">",
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" font-size="12" font-weight="bold" fill="#333">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left + plot_w}" y2="{top}" stroke="#eee"/>',
        _axis_label(left - 4, top + 4, fmt(top_value)),
        _axis_label(left - 4, top + plot_h, fmt(0)),
    ]
    if points:
        slot = plot_w / len(points)
        bar = max(1.0, slot * 0.8)
        for index, (point, value) in enumerate(zip(points, values, strict=True)):
            h = plot_h * value / top_value if top_value else 0
            x = left + index * slot + (slot - bar) / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color}" '
                f'data-day="{point.day.isoformat()}" data-value="{escape(str(point.value))}">'
                f"<title>{point.day.isoformat()}: {escape(fmt(value))}</title></rect>"
            )
        for index in sorted({0, len(points) // 2, len(points) - 1}):
            x = left + index * slot + slot / 2
            parts.append(
                f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle" fill="#666">'
                f"{points[index].day:%b %d}</text>"
            )
    else:
        parts.append(f'<text x="{left + 8}" y="{top + plot_h / 2}" font-size="11" fill="#999">no data</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every interpolated text is escaped above)
