from datetime import timedelta

from django.utils import timezone

from tenants.models import RequestLog
from tenants.tasks import purge_expired_request_logs


def _log(tenant, request_id, age_days):
    return RequestLog.objects.create(
        tenant=tenant,
        request_id=request_id,
        model="m",
        endpoint="chat",
        status_code=200,
        request={"messages": []},
        created_at=timezone.now() - timedelta(days=age_days),
    )


def test_the_beat_task_purges_logs_past_each_tenants_retention(alice, bob):
    alice.log_retention_days = 7
    alice.save()
    bob.log_retention_days = 30
    bob.save()
    _log(alice, "a-old", 8)
    _log(alice, "a-new", 6)
    _log(bob, "b-mid", 8)
    _log(bob, "b-old", 31)
    assert purge_expired_request_logs.apply().get() == 2
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == ["a-new", "b-mid"]
    assert purge_expired_request_logs.apply().get() == 0


def test_the_task_is_in_the_beat_schedule(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "tenants.tasks.purge_expired_request_logs" in tasks
