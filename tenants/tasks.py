"""Celery tasks of the tenants app: thin wrappers that call a service."""

from celery import shared_task
from django.utils import timezone

from .services import request_logs_purge_expired, stored_responses_purge_expired


@shared_task(acks_late=True)
def purge_expired_request_logs() -> int:
    """Delete request logs and stored responses (POST /v1/responses) past their tenant's retention
    period; the number of rows deleted. Idempotent: a re-run deletes nothing more."""
    now = timezone.now()
    return request_logs_purge_expired(now=now) + stored_responses_purge_expired(now=now)
