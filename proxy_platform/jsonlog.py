"""One JSON object per log line, for every process of the platform (gateway, admin, Celery, uvicorn).

Used by Django's LOGGING (settings), by uvicorn through `--log-config proxy_platform/uvicorn_logging.json`
(uvicorn configures its loggers before Django is loaded, and its `--workers` parent never loads
Django at all), and by Celery workers and beat (proxy_platform/celery.py).

A line is `{"time", "level", "logger", "message", ...}`, plus `exception` (the formatted traceback)
when there is one, plus the structured `fields` a caller passes as `extra={"fields": {...}}` (the
gateway's request line, gateway/observability.py), plus `task_id`/`task_name` inside a Celery task
and `client`, `method`, `path`, `status` on uvicorn's access lines. Other `extra` attributes are
left out on purpose: libraries put whole objects there (Django a request, Celery a task's
arguments), and what a line may contain must be decided here, not by whoever logs.

Importing this module must stay cheap and must not need Django: uvicorn imports it first thing.
"""

import logging
import logging.config
import re
import time

import orjson

# Generated tenant keys (tenants/keys.py: "tpk_" + 38 base62 characters). A safety net only: no
# code path logs a key, and keys imported from a configuration file have no recognisable shape.
_TENANT_KEY = re.compile(r"tpk_[0-9A-Za-z]{8,}")
_REDACTED = "tpk_[redacted]"

_CELERY_FIELDS = ("task_id", "task_name")


def redact(text: str) -> str:
    return _TENANT_KEY.sub(_REDACTED, text) if "tpk_" in text else text


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must still give a line, not a traceback on stderr
        return f"{record.msg!s} {record.args!r}"


class JsonFormatter(logging.Formatter):
    """`logging.Formatter` that renders a record as one line of JSON (orjson, so non-ASCII stays readable)."""

    _second: tuple[int, str] = (-1, "")  # one tuple, replaced whole: safe if threads share the formatter

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached, text = self._second
        if second != cached:  # most lines share their second with the line before
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(_message(record)),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        for name in _CELERY_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            line.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


def configure(config: dict) -> None:
    """Django's LOGGING_CONFIG: apply LOGGING, then give uvicorn's handlers this format too.

    uvicorn sets up its loggers before it imports Django (`--log-level`, `--no-access-log`, its
    plain-text formatters). Naming them in LOGGING would undo those switches (dictConfig resets the
    children of every logger it configures), so they are left as uvicorn made them and only their
    handlers' formatter changes. The access log keeps its stream (stdout, unless --log-config).
    """
    logging.config.dictConfig(config)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())
