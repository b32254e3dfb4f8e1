from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps  # the module: a class imported here would count as a config


class ConsoleConfig(AppConfig):
    """The staff console: admin site, ModelAdmins, dashboard, analytics, templates.

    The top layer (docs/design.md#apps-and-layers): it imports gateway, billing and tenants;
    nothing imports it.
    """

    name = "console"


class PlatformAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the platform's site (dashboard home page, analytics) as `admin.site`.

    Named in INSTALLED_APPS instead of "django.contrib.admin"; `default = False` so that the
    "console" entry still picks ConsoleConfig.
    """

    default = False
    default_site = "console.dashboard.PlatformAdminSite"
