from django.apps import AppConfig


class ConfigFileConfig(AppConfig):
    """The configuration file: an app only so that its management commands are found.

    It sits above billing and tenants (docs/design.md#apps-and-layers) and has no models.
    """

    name = "config"
    verbose_name = "configuration file"
