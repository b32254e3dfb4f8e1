from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"

    def ready(self) -> None:
        """Audit every change to the tenants' configuration and the catalog (tenants/audit.py).
        Billing registers its own models (plans, prices, subscriptions) the same way."""
        from . import audit
        from .models import ApiKey, CatalogModel, Deployment, PlatformPolicy, Project, ProviderCredential, Tenant

        audit.register(Tenant)
        audit.register(Project, tenant_field="tenant")
        audit.register(ApiKey, tenant_field="tenant")
        audit.register(ProviderCredential, tenant_field="tenant")
        audit.register(CatalogModel)
        audit.register(Deployment)
        audit.register(PlatformPolicy)
