"""Routing's settings, read when used (tests and operators change them at run time)."""

from django.conf import settings

from gateway.limits import config as limits_config

# Weight of the newest successful attempt in a deployment's latency EWMA.
EWMA_ALPHA = "0.3"


def failures(override: int | None = None) -> int:
    """Failures within the window that open a deployment's breaker: the deployment's own
    (`breaker_failures`), else GATEWAY_BREAKER_FAILURES. Likewise the window and the cooldown."""
    return max(1, int(override if override is not None else getattr(settings, "GATEWAY_BREAKER_FAILURES", 5)))


def window_ms(override: float | None = None) -> int:
    seconds = override if override is not None else getattr(settings, "GATEWAY_BREAKER_WINDOW_SECONDS", 30)
    return max(1, int(float(seconds) * 1000))


def cooldown_ms(override: float | None = None) -> int:
    seconds = override if override is not None else getattr(settings, "GATEWAY_BREAKER_COOLDOWN_SECONDS", 30)
    return max(1, int(float(seconds) * 1000))


def exploration() -> float:
    """The latency strategy's chance of trying the deployments in random order (GATEWAY_ROUTING_EXPLORATION)."""
    return min(1.0, max(0.0, float(getattr(settings, "GATEWAY_ROUTING_EXPLORATION", 0.05))))


def horizon_ms() -> int:
    """An attempt still counted in flight after this long belongs to a dead process: the limits' horizon."""
    return limits_config.horizon_ms()


def sync_ms() -> int:
    """How often this process's routing view meets the shared state (GATEWAY_ROUTING_SYNC_SECONDS):
    its batched success reports go out, the state every process left comes back."""
    return max(1, int(float(getattr(settings, "GATEWAY_ROUTING_SYNC_SECONDS", 0.1)) * 1000))


# A deployment this process has not routed to for this long is no longer refreshed (its view is
# forgotten; the next request reads it again).
VIEW_IDLE_MS = 10_000
