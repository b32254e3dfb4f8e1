"""The order in which a model's deployments are tried, by `ModelView.routing`.

Each strategy returns every deployment it is given (the rest serve as the fallback order):
- `priority`: as given (the registry's order: priority, then id). The default.
- `weighted`: a random order drawn by weight (the first is deployment i with probability
  weight_i / sum of weights; the rest follow in the same way, without replacement).
- `least_busy`: fewest attempts in flight across every gateway process first (ties: priority).
- `latency`: lowest latency EWMA of successful attempts first, a deployment never measured
  before every measured one (it must be tried to be known); with probability
  GATEWAY_ROUTING_EXPLORATION a random order instead, so that a recovered deployment is tried again.
- `cost`: cheapest first. Deployments of one model share the model's price today (prices are per
  catalog model), so this is the priority order until deployments have prices of their own.
"""

import random

from gateway.registry import DeploymentView

from . import config
from .store import Health

# Strategies that read the deployments' shared state (one round trip) before ordering.
READS_HEALTH = frozenset({"least_busy", "latency"})


def order(
    strategy: str, deployments: list[DeploymentView], health: list[Health] | None, rng: random.Random
) -> list[DeploymentView]:
    if len(deployments) < 2:
        return deployments
    if strategy == "weighted":
        # Efraimidis-Spirakis: sort by u ** (1 / w), u uniform in (0, 1]: a weighted sample without replacement.
        keyed = [(rng.random() ** (1 / max(d.weight, 1)) if d.weight > 0 else -1.0, d) for d in deployments]
        return [d for _, d in sorted(keyed, key=lambda pair: pair[0], reverse=True)]
    if strategy == "least_busy" and health is not None:
        ranked = sorted(range(len(deployments)), key=lambda i: (health[i].in_flight, i))
        return [deployments[i] for i in ranked]
    if strategy == "latency" and health is not None:
        if rng.random() < config.exploration():
            shuffled = list(deployments)
            rng.shuffle(shuffled)
            return shuffled

        def rank(i: int) -> tuple[int, float, int]:
            latency = health[i].latency_ms
            return (0, 0.0, i) if latency is None else (1, latency, i)

        return [deployments[i] for i in sorted(range(len(deployments)), key=rank)]
    return deployments  # priority, cost (see above), or an unknown name: the registry's order
