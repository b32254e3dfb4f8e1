"""The Celery app `proxy_platform` (docs/design.md#settings). Configuration comes from Django settings (CELERY_*).

Workers and beat log like the rest of the platform: Django's LOGGING, one JSON object per line on
stderr, instead of Celery's own format (connecting `setup_logging` tells Celery to leave logging
alone). Lines logged inside a task carry its `task_id` and `task_name`.
"""

import logging
import os

from celery import Celery
from celery._state import get_current_task
from celery.signals import celeryd_init, setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")

app = Celery("proxy_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class TaskContext(logging.Filter):
    """Adds the running task's id and name to each record (what Celery's TaskFormatter shows)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        if task is not None and task.request and task.request.id:
            record.task_id = task.request.id
            record.task_name = task.name
        return True


@setup_logging.connect
def _json_logging(loglevel=None, **kwargs) -> None:
    from django.conf import settings

    from .jsonlog import configure

    configure(settings.LOGGING)
    # Warnings (Celery's own, e.g. about running as root) are log lines too, not raw stderr.
    logging.captureWarnings(True)
    root = logging.getLogger()
    if loglevel:
        root.setLevel(loglevel)  # the worker's --loglevel, as Celery itself would apply it
    for handler in root.handlers:
        handler.addFilter(TaskContext())


@celeryd_init.connect
def _json_logging_early(**kwargs) -> None:
    """A worker warns about its privileges before Celery sets up logging: be ready by then."""
    _json_logging()
