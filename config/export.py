"""Export the configuration in the import format (config/schema.py), every key present.

All active catalog models with the price in force now, all plans, all tenants (never an
api_key) and the policy (its defaults when staff never set one); keys and lists sorted, so two
exports diff cleanly and importing an export changes nothing.
"""

import json
from typing import Any

from django.utils import timezone

from billing.models import ModelPrice, Plan
from tenants.models import CatalogModel, Deployment, Tenant
from tenants.selectors import platform_policy

from .schema import BREAKER_KEYS, POLICY_KEYS, POLICY_LIST_KEYS, PRICE_KEYS, TIER_KEYS, decimal_text, primary_deployment


def config_export() -> dict:
    """The whole configuration in the import format: all active models with the price in force
    now and their primary deployment, all plans, all tenants (keys never). Sorted, stable."""
    now = timezone.now()
    prices: dict[int, ModelPrice] = {}
    in_force = ModelPrice.objects.filter(effective_from__lte=now).prefetch_related("tiers")
    for price in in_force.order_by("model_id", "-effective_from"):
        prices.setdefault(price.model_id, price)
    models: dict[str, dict] = {}
    for model in CatalogModel.objects.filter(active=True).prefetch_related("deployments").order_by("name"):
        entry: dict[str, Any] = {
            "provider": model.provider,
            "kind": model.kind,
            "routing": model.routing,
            "fallbacks": list(model.fallbacks or []),  # in order: the order is the fallback order
            "affinity": model.affinity or None,
        }
        deployments = list(model.deployments.all())
        active = sorted((d for d in deployments if d.active), key=lambda d: (d.priority, d.id))
        if len(active) > 1 or (active and not _plain(active[0])):
            entry["deployments"] = [_deployment_entry(d) for d in active]
        else:
            deployment = primary_deployment(deployments)
            if deployment is not None:
                entry.update(provider=deployment.provider, upstream=deployment.upstream, region=deployment.region)
        price = prices.get(model.id)
        if price is not None:
            # null, not absent, for "no discount": absent would mean "keep yours" when the export
            # is imported into another installation.
            entry.update({key: decimal_text(getattr(price, key)) for key in PRICE_KEYS})
            entry["tiers"] = [
                {
                    key: tier.above_input_tokens if key == "above_input_tokens" else decimal_text(getattr(tier, key))
                    for key in TIER_KEYS
                }
                for tier in sorted(price.tiers.all(), key=lambda tier: tier.above_input_tokens)
            ]
        models[model.name] = dict(sorted(entry.items()))

    plans = {
        plan.name: {
            "currency": plan.currency,
            "default_monthly_budget": decimal_text(plan.default_monthly_budget),
            "description": plan.description,
            "included_allowance": decimal_text(plan.included_allowance),
            "markup_percent": decimal_text(plan.markup_percent),
            "monthly_base_fee": decimal_text(plan.monthly_base_fee),
        }
        for plan in Plan.objects.order_by("name")
    }

    tenants: dict[str, dict] = {}
    for tenant in Tenant.objects.select_related("subscription__plan").prefetch_related("allowed_models", "projects"):
        entry = {
            "models": sorted(m.name for m in tenant.allowed_models.all()),
            "name": tenant.name,
            "providers": sorted(tenant.allowed_providers or []),
            "rate_limit": {
                "max_concurrent": tenant.max_concurrent,
                "requests_per_minute": tenant.requests_per_minute,
                "tokens_per_minute": tenant.tokens_per_minute,
            },
            "region": tenant.region,
            "status": tenant.status,
            "model_aliases": dict(sorted((tenant.model_aliases or {}).items())),
            "default_params": dict(sorted((tenant.default_params or {}).items())),
            "max_tokens_cap": tenant.max_tokens_cap,
            "log_requests": tenant.log_requests,
            "log_retention_days": tenant.log_retention_days,
            "response_cache_seconds": tenant.response_cache_seconds,
            "end_user_limits": dict(sorted((tenant.end_user_limits or {}).items())),
            "hash_end_user_ids": tenant.hash_end_user_ids,
            "projects": {
                project.name: {
                    "monthly_budget": decimal_text(project.monthly_budget),
                    "rate_limit": {
                        "max_concurrent": project.max_concurrent,
                        "requests_per_minute": project.requests_per_minute,
                        "tokens_per_minute": project.tokens_per_minute,
                    },
                }
                for project in tenant.projects.all()
            },
        }
        subscription = getattr(tenant, "subscription", None)
        if subscription is not None:  # a tenant made in the admin may have none yet
            entry["billing_plan"] = subscription.plan.name
            entry["monthly_budget"] = decimal_text(subscription.monthly_budget)
        tenants[tenant.slug] = dict(sorted(entry.items()))
    policy = platform_policy()
    policy_entry = {name: getattr(policy, name) for name in POLICY_KEYS}
    for name in POLICY_LIST_KEYS:
        policy_entry[name] = sorted(policy_entry[name] or [])
    return {
        "models": models,
        "plans": plans,
        "policy": dict(sorted(policy_entry.items())),
        "tenants": dict(sorted(tenants.items())),
    }


def _plain(deployment: Deployment) -> bool:
    """A deployment the single-deployment keys describe whole: nothing but provider, upstream, region."""
    return (
        not deployment.base_url
        and deployment.weight == 1
        and deployment.requests_per_minute is None
        and deployment.tokens_per_minute is None
        and deployment.timeout_seconds is None
        and all(getattr(deployment, key) is None for key in BREAKER_KEYS)
    )


def _number(value: float | None) -> float | int | None:
    return int(value) if value is not None and value == int(value) else value  # 60, not 60.0


def _deployment_entry(deployment: Deployment) -> dict[str, Any]:
    timeout = _number(deployment.timeout_seconds)
    # The breaker's overrides only when set (absent: the settings' defaults, as on import).
    breaker = {key: _number(getattr(deployment, key)) for key in BREAKER_KEYS if getattr(deployment, key) is not None}
    return {
        **breaker,
        "base_url": deployment.base_url or None,
        "priority": deployment.priority,
        "provider": deployment.provider,
        "region": deployment.region,
        "requests_per_minute": deployment.requests_per_minute,
        "timeout_seconds": timeout,
        "tokens_per_minute": deployment.tokens_per_minute,
        "upstream": deployment.upstream,
        "weight": deployment.weight,
    }


def config_dumps(*, document: dict) -> str:
    """The export's text form: indented, keys sorted, so that two exports diff cleanly."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
