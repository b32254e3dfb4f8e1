"""The JSON log format (proxy_platform/jsonlog.py): one object per line, whatever the record holds."""

import io
import logging
import logging.config

import orjson
import pytest
from django.conf import settings

from proxy_platform.jsonlog import JsonFormatter, configure
from tenants.keys import key_generate


def formatted(record: logging.LogRecord) -> dict:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return orjson.loads(line)


def record(msg, *args, name="app", level=logging.INFO, exc_info=None, **extra) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc_info, extra=extra or None)
    return made


def test_a_line_has_time_level_logger_and_the_formatted_message():
    line = formatted(record("%s requests from %s", 3, "Zoë ☃", level=logging.WARNING))
    assert line["message"] == "3 requests from Zoë ☃"
    assert line["level"] == "warning"
    assert line["logger"] == "app"
    assert line["time"].endswith("Z")
    assert len(line["time"]) == len("2024-01-01T00:00:00.000Z")


def test_a_traceback_stays_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as exc:
        line = formatted(record("failed", exc_info=(type(exc), exc, exc.__traceback__)))
    assert "Traceback" in line["exception"]
    assert "ValueError: boom\nsecond line" in line["exception"]


def test_a_bad_format_string_still_gives_a_line():
    line = formatted(record("%d items", "not a number"))
    assert "%d items" in line["message"]


def test_fields_are_merged_and_other_extras_left_out():
    line = formatted(
        record("chat 200", fields={"request_id": "r1", "tenant": "alice"}, request=object(), data={"a": 1})
    )
    assert line["request_id"] == "r1"
    assert line["tenant"] == "alice"
    assert "request" not in line
    assert "data" not in line


def test_a_generated_key_is_redacted_as_a_safety_net():
    key = key_generate()
    line = formatted(record("presented %s", key))
    assert key not in orjson.dumps(line).decode()
    assert line["message"] == "presented tpk_[redacted]"


def test_uvicorn_access_lines_carry_their_parts():
    args = ("127.0.0.1:5000", "POST", "/v1/chat/completions", "1.1", 200)
    line = formatted(record('%s - "%s %s HTTP/%s" %d', *args, name="uvicorn.access"))
    assert line["message"] == '127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200'
    assert (line["client"], line["method"], line["path"], line["status"]) == (
        "127.0.0.1:5000",
        "POST",
        "/v1/chat/completions",
        200,
    )


@pytest.fixture
def uvicorn_loggers():
    """uvicorn's loggers as `uvicorn --log-level warning --no-access-log` leaves them, restored after."""
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {
        n: (logging.getLogger(n).level, logging.getLogger(n).propagate, logging.getLogger(n).handlers[:]) for n in names
    }
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("uvicorn").handlers = [plain]
    logging.getLogger("uvicorn").propagate = False
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").handlers = []
    logging.getLogger("uvicorn.access").propagate = False
    yield stream
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers = handlers
    logging.config.dictConfig(settings.LOGGING)


def test_configure_puts_the_format_on_uvicorns_handlers_and_keeps_its_switches(uvicorn_loggers):
    configure(settings.LOGGING)
    logging.getLogger("uvicorn.error").info("not shown: --log-level warning")
    logging.getLogger("uvicorn.error").warning("Uvicorn running on http://127.0.0.1:1")
    lines = uvicorn_loggers.getvalue().splitlines()
    assert [orjson.loads(line)["message"] for line in lines] == ["Uvicorn running on http://127.0.0.1:1"]
    access = logging.getLogger("uvicorn.access")
    # --no-access-log is still off (pytest's own capturing handlers aside)
    assert [h for h in access.handlers if not type(h).__module__.startswith("_pytest")] == []
    assert access.propagate is False
