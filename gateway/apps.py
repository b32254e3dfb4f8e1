from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"

    def ready(self) -> None:
        # The admin's tenant page shows the live limit counters, which the gateway owns; billing
        # must not import the gateway, so the gateway hands it the reader (imports stay one way).
        from billing.analytics import live_limits_provider_set

        from .limits import live_usage_sync

        live_limits_provider_set(live_usage_sync)
