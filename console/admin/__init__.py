"""The staff console's ModelAdmins, registered on `admin.site` (console.dashboard.PlatformAdminSite).

Django's autodiscovery imports `console.admin`; the modules below register on import: the
tenants app's models (tenants.py), then billing's and the tenant page (billing.py), and the
audit trail (audit.py).
"""

from . import audit, billing, tenants

__all__ = ["audit", "billing", "tenants"]
