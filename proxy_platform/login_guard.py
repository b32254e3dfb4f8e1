"""django-ratelimit on the staff admin's login: password guessing is slowed per client address
and per username (ADMIN_LOGIN_RATE each, POST only; empty: off). A refusal is a 429 page that
says when to retry, not django-ratelimit's bare 403."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_ratelimit.core import get_usage

_GROUP = "admin-login"


def _username(_group: str, request: HttpRequest) -> str:
    return "user:" + request.POST.get("username", "").strip().lower()


def _client_address(_group: str, request: HttpRequest) -> str:
    return "ip:" + request.META.get("REMOTE_ADDR", "")


def login_rate_limited(view):
    """Wrap the admin's login view (synchronous, like the rest of the admin)."""

    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        rate = getattr(settings, "ADMIN_LOGIN_RATE", "")
        if rate and request.method == "POST":
            usages = [
                get_usage(request, group=_GROUP, key=key, rate=rate, method="POST", increment=True)
                for key in (_client_address, _username)
            ]
            refused = [usage for usage in usages if usage and usage["should_limit"]]
            if refused:
                wait = max(1, max(usage["time_left"] for usage in refused) + 1)
                return HttpResponse(
                    f"Too many login attempts. Retry in {wait} s.",
                    status=429,
                    content_type="text/plain; charset=utf-8",
                    headers={"retry-after": str(wait)},
                )
        return view(request, *args, **kwargs)

    return guarded
