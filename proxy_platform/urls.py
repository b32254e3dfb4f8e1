from django.contrib import admin
from django.urls import include, path

from .favicon import favicon
from .login_guard import login_rate_limited

urlpatterns = [
    # Before the admin's own URLs: the same login view, guarded by django-ratelimit.
    path("admin/login/", login_rate_limited(admin.site.login)),
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon),
    path("", include("gateway.urls")),
]

# Refusals before any view runs (a Host outside ALLOWED_HOSTS, a failing middleware) are the API's
# JSON on /v1/*, Django's pages elsewhere.
handler400 = "gateway.middleware.bad_request"
handler500 = "gateway.middleware.server_error"
