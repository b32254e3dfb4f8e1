"""The staff console's ModelAdmins, registered on `admin.site` (console.dashboard.PlatformAdminSite).

Django's autodiscovery imports `console.admin`; the modules below register on import: the
tenants app's models (tenants.py), then billing's and the tenant page (billing.py).
"""

from . import billing, tenants

__all__ = ["billing", "tenants"]
