"""The staff's deployment health list (issue 13 part 4): every active deployment of an active
catalog model with its breaker state, recent failures, latency EWMA and attempts in flight, as the
routing store holds them for every gateway process (Redis; without REDIS_URL, this process's
memory). One query for the deployments, one routing store call (one round trip) for their health.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from gateway.limits.counters import run_sync
from gateway.routing import config as routing_config
from gateway.routing import store
from gateway.routing.store import Health
from tenants.models import Deployment

log = logging.getLogger(__name__)

IN_ROTATION = "in rotation"
COOLING_DOWN = "cooling down"
PROBING = "probing"


@dataclass(frozen=True, slots=True)
class HealthRow:
    deployment: Deployment
    state: str  # IN_ROTATION | COOLING_DOWN | PROBING; "" when the store could not be read
    open_until: datetime | None  # cooling down: when a probe may go (UTC)
    health: Health | None

    @property
    def host(self) -> str:
        return urlsplit(self.deployment.base_url).hostname or ""  # "": the platform endpoint


@dataclass(frozen=True, slots=True)
class HealthList:
    rows: list[HealthRow]
    read_at: datetime | None  # the store's clock when read
    error: str = ""
    failures: int = 0  # GATEWAY_BREAKER_FAILURES
    window_seconds: float = 0.0
    cooldown_seconds: float = 0.0


def state_of(health: Health, now_ms: int) -> str:
    """A breaker open until later is cooling down; open until a moment passed, it is half-open:
    the next request to ask takes the probe slot (or one is under way), its answer decides."""
    if health.open_until_ms is None:
        return IN_ROTATION
    return COOLING_DOWN if health.open_until_ms > now_ms else PROBING


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def deployment_health(*, model_id: int | None = None) -> HealthList:
    """The list, ordered by model name, then priority. A routing store that cannot be read is
    reported on the page (the deployments are still listed), never raised."""
    deployments = Deployment.objects.filter(active=True, model__active=True).select_related("model")
    if model_id is not None:
        deployments = deployments.filter(model_id=model_id)
    deployments = list(deployments.order_by("model__name", "priority", "id"))
    settings = {
        "failures": routing_config.failures(),
        "window_seconds": routing_config.window_ms() / 1000,
        "cooldown_seconds": routing_config.cooldown_ms() / 1000,
    }
    if not deployments:
        return HealthList(rows=[], read_at=None, **settings)
    try:
        # Recent failures are counted within each deployment's own breaker window.
        windows = [routing_config.window_ms(d.breaker_window_seconds) for d in deployments]
        snapshot = run_sync(store().snapshot([d.id for d in deployments], windows))
    except Exception as exc:  # noqa: BLE001 (Redis down or slow: say so on the page)
        log.warning("deployment health unreadable: %s", exc)
        rows = [HealthRow(d, "", None, None) for d in deployments]
        error = f"the routing state could not be read ({type(exc).__name__})"
        return HealthList(rows=rows, read_at=None, error=error, **settings)
    rows = []
    for d, health in zip(deployments, snapshot.health, strict=True):
        state = state_of(health, snapshot.now_ms)
        until = _utc(health.open_until_ms) if state == COOLING_DOWN else None
        rows.append(HealthRow(d, state, until, health))
    return HealthList(rows=rows, read_at=_utc(snapshot.now_ms), **settings)
