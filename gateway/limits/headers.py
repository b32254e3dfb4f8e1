"""The x-ratelimit-* headers and retry-after, as OpenAI's API writes them."""

from .store import Outcome


def duration(ms: int) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers say it (Go style): 6m0s, 1.5s, 12ms."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0") if millis else str(seconds)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def seconds_until(ms: int) -> int:
    """retry-after in whole seconds, rounded up: waiting that long is always enough, never early.
    The window's end comes from the store's clock (Redis' TIME), so no reading of another clock
    can make it earlier."""
    return max(1, -(-ms // 1000))


def _binding(limits: list[int], used: tuple[int, ...]) -> int | None:
    """The limit with the least room left (the smaller limit on a tie); None when none applies."""
    applying = [i for i in range(len(limits)) if limits[i] >= 0]
    if not applying:
        return None
    return min(applying, key=lambda i: (limits[i] - used[i], limits[i]))


def requests_headers(limits: list[int], outcome: Outcome) -> dict[str, str]:
    binding = _binding(limits, outcome.requests)
    if binding is None:
        return {}
    return {
        "x-ratelimit-limit-requests": str(limits[binding]),
        "x-ratelimit-remaining-requests": str(max(0, limits[binding] - outcome.requests[binding])),
        "x-ratelimit-reset-requests": duration(outcome.requests_ms_left),
    }


def tokens_headers(limits: list[int], outcome: Outcome) -> dict[str, str]:
    binding = _binding(limits, outcome.used)
    if binding is None:
        return {}
    return {
        "x-ratelimit-limit-tokens": str(limits[binding]),
        "x-ratelimit-remaining-tokens": str(max(0, limits[binding] - outcome.used[binding])),
        "x-ratelimit-reset-tokens": duration(outcome.ms_left),
    }
