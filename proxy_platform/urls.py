from django.contrib import admin
from django.urls import include, path

from .login_guard import login_rate_limited

urlpatterns = [
    # Before the admin's own URLs: the same login view, guarded by django-ratelimit.
    path("admin/login/", login_rate_limited(admin.site.login)),
    path("admin/", admin.site.urls),
    path("", include("gateway.urls")),
]
