"""The limiter's settings, read when used (tests and operators change them at run time)."""

from django.conf import settings

# Requests per minute are counted in fixed windows of one minute, aligned on the epoch.
MINUTE_MS = 60_000
# The month's counter outlives the month; a new month is a new key.
SPEND_TTL_SECONDS = 40 * 24 * 3600


def window_ms() -> int:
    """The tokens-per-minute window (GATEWAY_LIMIT_WINDOW_SECONDS), in ms."""
    return max(1, int(float(getattr(settings, "GATEWAY_LIMIT_WINDOW_SECONDS", 60)) * 1000))


def horizon_ms() -> int:
    """Age after which a concurrency slot or a budget hold belongs to a dead process."""
    return int(float(getattr(settings, "GATEWAY_CONCURRENCY_HORIZON_SECONDS", 900)) * 1000)


def redis_timeout() -> float:
    return float(getattr(settings, "GATEWAY_LIMITS_REDIS_TIMEOUT", 0.5))


def redis_url() -> str:
    return getattr(settings, "REDIS_URL", "")
