from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        """Plans, prices and subscriptions are configuration: audited (tenants/audit.py)."""
        from tenants import audit

        from .models import ModelPrice, Plan, PriceTier, SharedCost, Subscription

        audit.register(Plan)
        audit.register(Subscription, tenant_field="tenant")
        audit.register(ModelPrice)
        audit.register(PriceTier)
        audit.register(SharedCost)
