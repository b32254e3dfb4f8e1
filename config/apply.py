"""Apply a configuration document: validate it (config.schema), then upsert it in one transaction.

What an import does to each section is written in config/schema.py's docstring (the contract);
this module is the writer: every write appends a human-readable line to the change list, which a
dry run computes by really applying it and rolling back.
"""

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import ModelPrice, Plan, PriceTier, Subscription
from tenants import audit
from tenants.keys import key_display_parts, key_hash
from tenants.models import ApiKey, CatalogModel, Deployment, Project, Tenant
from tenants.selectors import platform_policy
from tenants.services import api_key_create, api_key_revoke, platform_policy_update

from .schema import (
    CONFIG_KEY_NAME,
    DEPLOYMENT_SETTINGS,
    END_USER_KEYS,
    MISSING,
    POLICY_LIST_KEYS,
    PRICE_KEYS,
    PROFILE_KEYS,
    RATE_LIMIT_KEYS,
    ROUTING_KEYS,
    TIER_KEYS,
    Config,
    ConfigInvalid,
    decimal_text,
    document_check,
    primary_deployment,
)


def _tiers_of(price: ModelPrice | None) -> list[dict[str, Any]]:
    """A price row's tiers as the file gives them, sorted by threshold."""
    if price is None:
        return []
    return [{key: getattr(tier, key) for key in TIER_KEYS} for tier in price.tiers.order_by("above_input_tokens")]


def config_apply(*, document: Any, dry_run: bool = False, source: str = "configuration file") -> list[str]:
    """Validate and upsert the document in one transaction; return the changes, one per line.

    Raises ConfigInvalid (nothing written) when the document has any error. With `dry_run`
    the same changes are computed by really applying them and rolling the transaction back,
    so the list is exactly what a real run would do.

    Audited as an import from `source` (e.g. the file's path): one entry per object changed,
    however many writes the import made to it (tenants/audit.py).
    """
    with transaction.atomic(), audit.acting(import_source=source), audit.collecting():
        # Validation runs inside the transaction so that it sees what the writes will see.
        # Two imports racing each other are not serialised: the unique constraints (tenant
        # slug, key hash, plan name, price instant) make the loser fail whole.
        checked = document_check(document)
        if checked.errors:
            raise ConfigInvalid(checked.errors)
        changes = _Applier(checked.config, now=timezone.now()).run()
        if dry_run:
            transaction.set_rollback(True)
    return changes


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    if value == "":
        return '""'
    return str(value)


def _where(provider: str, upstream: str, region: str, base_url: str = "") -> str:
    return f"{provider}:{upstream} @{region or 'any'}" + (f" via {base_url}" if base_url else "")


def _routing_value(key: str, value: Any) -> Any:
    """A routing key as the model stores it: fallbacks come from the file with their indexes."""
    return [name for _, name in value] if key == "fallbacks" else value


def _project_label(key: str) -> str:
    return f"rate_limit.{key}" if key in RATE_LIMIT_KEYS else key


def _key_display(raw: str) -> str:
    prefix, last4 = key_display_parts(raw)
    return f"{prefix}…{last4}"


class _Applier:
    """Writes one valid document; every write appends a human-readable line to `changes`."""

    def __init__(self, config: Config, *, now: datetime) -> None:
        self.config = config
        self.now = now
        self.changes: list[str] = []

    def run(self) -> list[str]:
        plans = self._plans()
        catalog = self._models()
        self._policy()
        for slug, entry in self.config.tenants.items():
            self._tenant(slug, entry, plans=plans, catalog=catalog)
        return self.changes

    def _plans(self) -> dict[str, Plan]:
        plans = {p.name: p for p in Plan.objects.all()}
        for name, entry in self.config.plans.items():
            plan = plans.get(name)
            if plan is None:
                plan = plans[name] = Plan.objects.create(name=name, **entry)
                details = ", ".join(f"{k} {_show(v)}" for k, v in entry.items())
                self.changes.append(f"create plan {name}" + (f": {details}" if details else ""))
                continue
            diffs = [(k, getattr(plan, k), v) for k, v in entry.items() if getattr(plan, k) != v]
            if diffs:
                for key, _old, new in diffs:
                    setattr(plan, key, new)
                plan.save(update_fields=[k for k, _, _ in diffs])
                for key, old, new in diffs:
                    self.changes.append(f"update plan {name}.{key}: {_show(old)} → {_show(new)}")
        for entry in self.config.tenants.values():
            name = entry.get("billing_plan")
            if name is not None and name not in plans:
                plans[name] = Plan.objects.create(name=name)
                self.changes.append(f"create plan {name} (not defined in the file: zero fees)")
        return plans

    def _policy(self) -> None:
        wanted = self.config.policy
        if not wanted:
            return
        current = platform_policy()
        changes = {}
        for key, value in wanted.items():
            old = getattr(current, key)
            if key in POLICY_LIST_KEYS:
                old, value = sorted(old or []), sorted(value)
            if value != old:
                changes[key] = value
                self.changes.append(f"update policy.{key}: {_show(old)} → {_show(value)}")
        if changes:
            platform_policy_update(changes=changes)

    def _models(self) -> dict[str, CatalogModel]:
        catalog = {m.name: m for m in CatalogModel.objects.prefetch_related("deployments")}
        for name, entry in self.config.models.items():
            model = catalog.get(name)
            if model is None:
                catalog[name] = self._model_create(name, entry)
            else:
                self._model_update(model, entry)
        return catalog

    def _model_create(self, name: str, entry: dict[str, Any]) -> CatalogModel:
        model = CatalogModel.objects.create(
            name=name,
            provider=entry["provider"],
            kind=entry.get("kind", CatalogModel.Kind.CHAT),
            **{key: _routing_value(key, entry[key]) for key in ROUTING_KEYS if key in entry},
        )
        kind = "" if model.kind == CatalogModel.Kind.CHAT else f", {model.kind}"
        if "deployments" in entry:
            self.changes.append(f"create model {name} ({entry['provider']}{kind})")
            self._deployments_replace(model, entry["deployments"], have=[])
        else:
            region = entry.get("region", "")
            Deployment.objects.create(
                model=model, provider=entry["provider"], upstream=entry["upstream"], region=region
            )
            self.changes.append(f"create model {name} ({_where(entry['provider'], entry['upstream'], region)}{kind})")
        for key in ROUTING_KEYS:
            if key in entry and getattr(model, key) != CatalogModel._meta.get_field(key).get_default():
                self.changes.append(f"set model {name}.{key}: {_show(getattr(model, key))}")
        self._price_set(model, entry, current=None)
        return model

    def _routing_set(self, model: CatalogModel, entry: dict[str, Any]) -> None:
        changed = []
        for key in ROUTING_KEYS:
            if key not in entry:
                continue
            old, new = getattr(model, key), _routing_value(key, entry[key])
            if old != new:
                self.changes.append(f"update model {model.name}.{key}: {_show(old)} → {_show(new)}")
                setattr(model, key, new)
                changed.append(key)
        if changed:
            model.save(update_fields=changed)

    def _deployments_replace(self, model: CatalogModel, wanted: list[dict[str, Any]], *, have: list[Deployment]):
        """The file's list is the model's whole set of deployments: matched by target (provider,
        upstream, region, base_url), updated or created; those it leaves out are deactivated, never
        deleted (stored responses point at them)."""
        existing = {(d.provider, d.upstream, d.region, d.base_url): d for d in have}
        kept = set()
        for item in wanted:
            target = (item["provider"], item["upstream"], item["region"], item["base_url"])
            settings = {key: item[key] for key in DEPLOYMENT_SETTINGS}
            deployment = existing.get(target)
            label = f"deployment {model.name} → {_where(*target)}"
            if deployment is None:
                Deployment.objects.create(
                    model=model,
                    provider=target[0],
                    upstream=target[1],
                    region=target[2],
                    base_url=target[3],
                    **settings,
                )
                details = ", ".join(f"{k} {_show(v)}" for k, v in settings.items() if v is not None)
                self.changes.append(f"create {label} ({details})")
                continue
            kept.add(deployment.pk)
            changed = [k for k, v in settings.items() if getattr(deployment, k) != v]
            if not deployment.active:
                deployment.active = True
                changed.append("active")
                self.changes.append(f"activate {label}")
            for key in changed:
                if key != "active":
                    old = _show(getattr(deployment, key))
                    self.changes.append(f"update {label}: {key} {old} → {_show(settings[key])}")
                    setattr(deployment, key, settings[key])
            if changed:
                deployment.save(update_fields=changed)
        for deployment in have:
            if deployment.pk not in kept and deployment.active:
                deployment.active = False
                deployment.save(update_fields=["active"])
                where = _where(deployment.provider, deployment.upstream, deployment.region, deployment.base_url)
                self.changes.append(f"deactivate deployment {model.name} → {where} (not in the file's list)")

    def _model_update(self, model: CatalogModel, entry: dict[str, Any]) -> None:
        name = model.name
        if not model.active:
            model.active = True
            model.save(update_fields=["active"])
            self.changes.append(f"activate model {name}")
        if "provider" in entry and entry["provider"] != model.provider:
            self.changes.append(f"update model {name}.provider: {model.provider} → {entry['provider']}")
            model.provider = entry["provider"]
            model.save(update_fields=["provider"])
        if "kind" in entry and entry["kind"] != model.kind:
            self.changes.append(f"update model {name}.kind: {model.kind} → {entry['kind']}")
            model.kind = entry["kind"]
            model.save(update_fields=["kind"])
        self._routing_set(model, entry)
        if "deployments" in entry:
            self._deployments_replace(model, entry["deployments"], have=list(model.deployments.all()))
        else:
            self._deployment_set(model, entry)
        current = ModelPrice.objects.filter(model=model, effective_from__lte=self.now).order_by("-effective_from")
        self._price_set(model, entry, current=current.first())

    def _deployment_set(self, model: CatalogModel, entry: dict[str, Any]) -> None:
        deployments = list(model.deployments.all())
        primary = primary_deployment(deployments)
        if primary is None:
            if "upstream" not in entry:
                return  # nothing to describe a deployment with; the model stays without one
            target = (entry.get("provider", model.provider), entry["upstream"], entry.get("region", ""))
            Deployment.objects.create(model=model, provider=target[0], upstream=target[1], region=target[2])
            self.changes.append(f"create deployment {model.name} → {_where(*target)}")
            return
        target = (
            entry.get("provider", primary.provider),
            entry.get("upstream", primary.upstream),
            entry.get("region", primary.region),
        )
        before = (primary.provider, primary.upstream, primary.region)
        if target == before and primary.active:
            return
        same = next((d for d in deployments if (d.provider, d.upstream, d.region) == target), None)
        if same is None:
            # Edit the primary in place: usage records keep provider/upstream as text, so no
            # history points at the deployment row.
            primary.provider, primary.upstream, primary.region = target
            primary.active = True
            primary.save(update_fields=["provider", "upstream", "region", "active"])
        else:
            # The target already exists as another deployment (the unique constraint forbids
            # a second one): make it the first one tried instead.
            audit.queryset_update(Deployment.objects.filter(model=model, priority=0).exclude(pk=same.pk), priority=1)
            same.priority, same.active = 0, True
            same.save(update_fields=["priority", "active"])
        self.changes.append(f"update model {model.name} deployment: {_where(*before)} → {_where(*target)}")

    def _price_set(self, model: CatalogModel, entry: dict[str, Any], *, current: ModelPrice | None) -> None:
        wanted = {key: getattr(current, key) if current else None for key in PRICE_KEYS}
        wanted.update({key: entry[key] for key in PRICE_KEYS if key in entry})
        if wanted["output_per_1m"] is None and model.kind == CatalogModel.Kind.EMBEDDING:
            wanted["output_per_1m"] = Decimal(0)  # embeddings have no output tokens
        have_tiers = _tiers_of(current)
        wanted_tiers = [{key: tier[key] for key in TIER_KEYS} for tier in entry.get("tiers", have_tiers)]
        if (
            current is not None
            and all(wanted[key] == getattr(current, key) for key in PRICE_KEYS)
            and wanted_tiers == have_tiers
        ):
            return
        if wanted["input_per_1m"] is None or wanted["output_per_1m"] is None:
            return  # an existing model without any price, and the file gives only part of one
        # Never edit a price row: requests already billed point at it (docs/design.md#money).
        row = ModelPrice.objects.create(model=model, effective_from=self.now, **wanted)
        audit.record_created(PriceTier.objects.bulk_create(PriceTier(price=row, **tier) for tier in wanted_tiers))
        parts = [f"input {decimal_text(wanted['input_per_1m'])}", f"output {decimal_text(wanted['output_per_1m'])}"]
        if wanted["cached_input_per_1m"] is not None:
            parts.append(f"cached input {decimal_text(wanted['cached_input_per_1m'])}")
        if wanted["cache_write_per_1m"] is not None:
            parts.append(f"cache write {decimal_text(wanted['cache_write_per_1m'])}")
        if wanted["cache_write_1h_per_1m"] is not None:
            parts.append(f"1-hour cache write {decimal_text(wanted['cache_write_1h_per_1m'])}")
        for tier in wanted_tiers:
            parts.append(
                f"above {tier['above_input_tokens']} input tokens: input {decimal_text(tier['input_per_1m'])}, "
                f"output {decimal_text(tier['output_per_1m'])}"
            )
        self.changes.append(f"set price {model.name} from {self.now:%Y-%m-%dT%H:%M:%SZ}: {', '.join(parts)}")

    def _tenant(self, slug: str, entry: dict[str, Any], *, plans: dict[str, Plan], catalog: dict) -> None:
        tenant = Tenant.objects.filter(slug=slug).first()
        verb = "update"
        if tenant is None:
            # Field lines of a new tenant say "set", diffed against the model's defaults.
            verb = "set"
            tenant = Tenant(slug=slug, name=slug.replace("_", " ").replace("-", " ").title(), allowed_providers=[])
            self.changes.append(f"create tenant {slug}")
        wanted: dict[str, Any] = {
            key: entry.get(key, MISSING)
            for key in ("name", "status", "region", *RATE_LIMIT_KEYS, *PROFILE_KEYS, *END_USER_KEYS)
        }
        if "providers" in entry:
            wanted["allowed_providers"] = sorted(name for _, name in entry["providers"])
        changed = []
        for key, value in wanted.items():
            old = getattr(tenant, key)
            if key == "allowed_providers":
                old = sorted(old or [])
            if value is MISSING or value == old:
                continue
            changed.append(key)
            setattr(tenant, key, value)
            label = f"rate_limit.{key}" if key in RATE_LIMIT_KEYS else key.removeprefix("allowed_")
            self.changes.append(f"{verb} {slug}.{label}: {_show(old)} → {_show(value)}")
        if tenant.pk is None:
            tenant.save()
        elif changed:
            tenant.save(update_fields=[*changed, "updated_at"])

        if "models" in entry:
            wanted = {name for _, name in entry["models"]}
            have = {m.name for m in tenant.allowed_models.all()}
            if wanted != have:
                tenant.allowed_models.set([catalog[name] for name in sorted(wanted)])
                diff = [f"+{n}" for n in sorted(wanted - have)] + [f"-{n}" for n in sorted(have - wanted)]
                self.changes.append(f"{verb} {slug}.models: {' '.join(diff)}")

        self._subscription(tenant, entry, plans=plans, verb=verb)
        if "projects" in entry:
            self._projects(tenant, entry["projects"], verb=verb)
        if "api_key" in entry:
            self._api_key(tenant, entry["api_key"])
            self._api_key_settings(tenant, entry)

    def _projects(self, tenant: Tenant, projects: dict[str, dict[str, Any]], *, verb: str) -> None:
        """Upsert the file's projects: what an entry gives is set, what it leaves out kept; a
        project the file leaves out is kept (its keys and records point at it)."""
        have = {p.name: p for p in Project.objects.filter(tenant=tenant)}
        for name, wanted in sorted(projects.items()):
            project = have.get(name)
            if project is None:
                project = Project.objects.create(tenant=tenant, name=name, **wanted)
                self.changes.append(f"create project {tenant.slug}.projects.{name}")
                for key, value in wanted.items():
                    self.changes.append(f"set {tenant.slug}.projects.{name}.{_project_label(key)}: {_show(value)}")
                continue
            changed = []
            for key, value in wanted.items():
                old = getattr(project, key)
                if value == old:
                    continue
                changed.append(key)
                setattr(project, key, value)
                label = _project_label(key)
                self.changes.append(f"{verb} {tenant.slug}.projects.{name}.{label}: {_show(old)} → {_show(value)}")
            if changed:
                project.save(update_fields=changed)

    def _api_key_settings(self, tenant: Tenant, entry: dict[str, Any]) -> None:
        """The file's key's project and daily budget (`"api_key": {"key", "project", "daily_budget"}`)."""
        if "api_key_project" not in entry and "api_key_daily_budget" not in entry:
            return
        key = ApiKey.objects.get(key_hash=key_hash(entry["api_key"], pepper=settings.API_KEY_PEPPER))
        changed = []
        if "api_key_project" in entry:
            name = entry["api_key_project"]
            project = None if name is None else Project.objects.get(tenant=tenant, name=name)
            if key.project_id != (project.id if project else None):
                old = key.project.name if key.project else None
                key.project = project
                changed.append("project")
                self.changes.append(f"set {tenant.slug}.api_key.project: {_show(old)} → {_show(name)}")
        if "api_key_daily_budget" in entry and key.daily_budget != entry["api_key_daily_budget"]:
            old, key.daily_budget = key.daily_budget, entry["api_key_daily_budget"]
            changed.append("daily_budget")
            self.changes.append(
                f"set {tenant.slug}.api_key.daily_budget: {_show(old)} → {_show(entry['api_key_daily_budget'])}"
            )
        if changed:
            key.save(update_fields=changed)

    def _subscription(self, tenant: Tenant, entry: dict[str, Any], *, plans: dict[str, Plan], verb: str) -> None:
        subscription = Subscription.objects.filter(tenant=tenant).select_related("plan").first()
        slug = tenant.slug
        if subscription is None:
            if "billing_plan" not in entry:
                return  # an existing tenant without a plan, and the file gives none: keep
            subscription = Subscription.objects.create(
                tenant=tenant, plan=plans[entry["billing_plan"]], monthly_budget=entry.get("monthly_budget")
            )
            self.changes.append(f"{verb} {slug}.billing_plan: {entry['billing_plan']}")
            if subscription.monthly_budget is not None:
                self.changes.append(f"{verb} {slug}.monthly_budget: {_show(subscription.monthly_budget)}")
            return
        changed = []
        if "billing_plan" in entry and subscription.plan.name != entry["billing_plan"]:
            self.changes.append(f"{verb} {slug}.billing_plan: {subscription.plan.name} → {entry['billing_plan']}")
            subscription.plan = plans[entry["billing_plan"]]
            changed.append("plan")
        if "monthly_budget" in entry and subscription.monthly_budget != entry["monthly_budget"]:
            old, new = subscription.monthly_budget, entry["monthly_budget"]
            self.changes.append(f"{verb} {slug}.monthly_budget: {_show(old)} → {_show(new)}")
            subscription.monthly_budget = new
            changed.append("monthly_budget")
        if changed:
            subscription.save(update_fields=changed)

    def _api_key(self, tenant: Tenant, raw: str) -> None:
        digest = key_hash(raw, pepper=settings.API_KEY_PEPPER)
        if ApiKey.objects.filter(tenant=tenant, key_hash=digest).exists():
            return  # validation made sure it is usable
        for old in ApiKey.objects.filter(tenant=tenant, name=CONFIG_KEY_NAME, revoked_at__isnull=True):
            api_key_revoke(key=old)
            self.changes.append(f"revoke old config key of {tenant.slug} ({old.display})")
        api_key_create(tenant=tenant, name=CONFIG_KEY_NAME, raw_key=raw)
        self.changes.append(f"set api key of {tenant.slug} ({_key_display(raw)})")
