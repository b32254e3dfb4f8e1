"""The tenant page's requests/min is the figure the gateway enforces (issue 11, item 3).

Requests go through a real gateway process with the real SDKs; the admin page, in this process,
reads the same Redis counters the gateway's admission script wrote. The request that the limit
refuses is the proof that it is the enforcing store: the page shows the limit reached, not one more.
"""

import time

import anthropic
import openai
import pytest
from django.conf import settings
from django.urls import reverse

from proxy_platform import redis_clients
from tenants.models import Tenant

from .test_admin_dashboard import text_of

pytestmark = pytest.mark.django_db(transaction=True)


def seconds_left_in_the_minute() -> float:
    """On Redis' clock, which the limits' windows follow (aligned on the epoch)."""
    client = redis_clients.sync_client()  # plain, Cluster or Sentinel: tests/redis_topology.py
    try:
        seconds, micros = client.time()
    finally:
        client.close()
    return 60 - (seconds % 60 + micros / 1e6)


def test_the_tenant_page_shows_the_requests_the_gateway_counted_this_minute(
    gateway, catalog, alice, alice_key, admin_client
):
    assert settings.REDIS_URL, "the gateway process and this page must share the limits store"
    Tenant.objects.filter(pk=alice.pk).update(requests_per_minute=3)
    url = reverse("admin:tenants_tenant_overview", args=[alice.pk])
    assert text_of(admin_client.get(url).content.decode(), "live-rpm") == "0 this minute"

    # The four requests and the page read must fall in one window; the gateway's clock is Redis',
    # which a test cannot move, so a run that starts in a window's last seconds waits for the next.
    if (left := seconds_left_in_the_minute()) < 8:
        time.sleep(left + 0.2)
    chat = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    chat.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "one"}])
    chat.chat.completions.create(model="azure-gpt-test", messages=[{"role": "user", "content": "two"}])
    messages = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    messages.messages.create(model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "three"}])
    with pytest.raises(openai.RateLimitError):  # the limit is reached: the gateway refuses the fourth
        chat.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "four"}])

    html = admin_client.get(url).content.decode()
    assert text_of(html, "limit-rpm") == "3"
    assert text_of(html, "live-rpm") == "3 this minute"  # a refusal is not a request made
