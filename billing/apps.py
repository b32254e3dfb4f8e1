from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps  # the module: a class imported here would count as a config


class BillingConfig(AppConfig):
    name = "billing"


class PlatformAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the platform's site (dashboard home page, analytics) as `admin.site`.

    Named in INSTALLED_APPS instead of "django.contrib.admin"; `default = False` so that the
    "billing" entry still picks BillingConfig.
    """

    default = False
    default_site = "billing.dashboard.PlatformAdminSite"
