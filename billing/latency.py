"""A fixed latency histogram, and percentiles read from it. Pure: no ORM, no I/O.

A percentile of a period cannot be computed from sums, and the raw records of past days may be
pruned, so every rollup row keeps the number of its requests in each latency bucket below
(`UsageRollup.lat_*`, filled by the rollup SQL). Percentiles over any set of rollup rows (and of
today's raw records, bucketed the same way) are then sums of bucket counts plus a linear
interpolation inside one bucket: approximate, within the width of that bucket, and the same on
SQLite and PostgreSQL.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Upper bounds (exclusive) of the buckets, in ms; the last bucket is open (>= 60 s).
# Narrow where requests usually fall (0.1–2 s), wide in the tail.
BOUNDS_MS: tuple[int, ...] = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 30000, 60000)


@dataclass(frozen=True, slots=True)
class Bucket:
    field: str  # the UsageRollup column
    lower: int  # ms, included
    upper: int | None  # ms, excluded; None: open-ended


def _buckets() -> tuple[Bucket, ...]:
    buckets, lower = [], 0
    for upper in BOUNDS_MS:
        buckets.append(Bucket(field=f"lat_lt_{upper}", lower=lower, upper=upper))
        lower = upper
    buckets.append(Bucket(field=f"lat_ge_{lower}", lower=lower, upper=None))
    return tuple(buckets)


BUCKETS: tuple[Bucket, ...] = _buckets()
FIELDS: tuple[str, ...] = tuple(b.field for b in BUCKETS)


def bucket_sql(column: str) -> list[tuple[str, str]]:
    """(field, SQL expression counting the rows of its bucket) for an INSERT … SELECT … GROUP BY."""
    result = []
    for bucket in BUCKETS:
        conditions = []
        if bucket.lower:
            conditions.append(f"{column} >= {bucket.lower:d}")
        if bucket.upper is not None:
            conditions.append(f"{column} < {bucket.upper:d}")
        result.append((bucket.field, f"SUM(CASE WHEN {' AND '.join(conditions)} THEN 1 ELSE 0 END)"))
    return result


def bucket_of(latency_ms: int) -> int:
    """Index of the bucket a latency falls in (for tests and for Python-side checks)."""
    for index, upper in enumerate(BOUNDS_MS):
        if latency_ms < upper:
            return index
    return len(BOUNDS_MS)


@dataclass(frozen=True, slots=True)
class Percentile:
    """An approximate percentile: `ms`, or at least `ms` when it falls in the open last bucket."""

    ms: float
    open_ended: bool = False

    def __str__(self) -> str:
        return f"≥ {self.ms:,.0f} ms" if self.open_ended else f"{self.ms:,.0f} ms"


def percentile(counts: Sequence[int], fraction: float) -> Percentile | None:
    """The `fraction` (0..1) percentile of a histogram of `BUCKETS` counts; None when it is empty.

    The rank is fraction × total; inside the bucket that holds it, values are taken as spread
    evenly between the bucket's bounds.
    """
    if len(counts) != len(BUCKETS):
        raise ValueError(f"expected {len(BUCKETS)} bucket counts, got {len(counts)}")
    if not 0 <= fraction <= 1:
        raise ValueError("a percentile is between 0 and 1")
    total = sum(counts)
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0
    for bucket, count in zip(BUCKETS, counts, strict=True):
        if count and seen + count >= rank:
            if bucket.upper is None:
                return Percentile(ms=float(bucket.lower), open_ended=True)
            inside = (rank - seen) / count
            return Percentile(ms=bucket.lower + inside * (bucket.upper - bucket.lower))
        seen += count
    last = BUCKETS[-1]  # unreachable with counts >= 0; kept for floating-point edge cases
    return Percentile(ms=float(last.lower), open_ended=True)


def histogram_add(total: list[int], counts: Iterable[int]) -> list[int]:
    """Add bucket counts into `total` (in place) and return it."""
    for index, count in enumerate(counts):
        total[index] += int(count or 0)
    return total
