"""DATABASE_REPLICA_URL, DATABASE_PGBOUNCER and the replica router (docs/database.md).

The settings are read in a fresh interpreter per case (they are read once, at import); the
router's choices in this one. What reads where for real: tests/test_replica_live.py.
"""

import asyncio
import json
import subprocess
import sys

import pytest
from django.test import override_settings

from billing.models import UsageRecord
from proxy_platform.replicas import ReplicaRouter, reading_replica

from .conftest import ROOT

PRINT_DATABASES = (
    "import json; from proxy_platform import settings as s; "
    "print(json.dumps({'databases': s.DATABASES, 'routers': s.DATABASE_ROUTERS}, default=str))"
)
PRIMARY = "postgres://app@db1:5432/app"
REPLICA = "postgres://app@db2:5432/app"


def databases(**env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "proxy_platform.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", PRINT_DATABASES], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def loaded(**env: str) -> dict:
    result = databases(**env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_without_a_replica_url_there_is_only_the_default_database():
    settings = loaded(DATABASE_URL=PRIMARY)
    assert list(settings["databases"]) == ["default"]
    assert settings["routers"] == ["proxy_platform.replicas.ReplicaRouter"]
    assert not settings["databases"]["default"].get("DISABLE_SERVER_SIDE_CURSORS")


def test_the_replica_gets_the_primarys_pool_and_timeouts():
    dbs = loaded(
        DATABASE_URL=PRIMARY,
        DATABASE_REPLICA_URL=REPLICA,
        DATABASE_POOL_MAX="7",
        DATABASE_POOL_TIMEOUT="1.5",
        DATABASE_STATEMENT_TIMEOUT_MS="5000",
    )["databases"]
    assert dbs["replica"]["HOST"] == "db2"
    assert dbs["replica"]["OPTIONS"] == dbs["default"]["OPTIONS"]
    assert dbs["replica"]["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 7, "timeout": 1.5}
    assert dbs["replica"]["OPTIONS"]["options"] == "-c statement_timeout=5000"
    assert dbs["replica"]["TEST"] == {"MIRROR": "default"}


def test_behind_pgbouncer_no_server_side_cursors_and_no_prepared_statements_on_either_database():
    dbs = loaded(DATABASE_URL=PRIMARY, DATABASE_REPLICA_URL=REPLICA, DATABASE_PGBOUNCER="1")["databases"]
    for alias in ("default", "replica"):
        assert dbs[alias]["DISABLE_SERVER_SIDE_CURSORS"] is True
        assert dbs[alias]["OPTIONS"]["prepare_threshold"] is None
        assert "options" not in dbs[alias]["OPTIONS"]


def test_a_statement_timeout_cannot_be_sent_through_pgbouncer():
    result = databases(DATABASE_URL=PRIMARY, DATABASE_PGBOUNCER="1", DATABASE_STATEMENT_TIMEOUT_MS="5000")
    assert result.returncode != 0
    assert "DATABASE_STATEMENT_TIMEOUT_MS cannot be sent through PgBouncer" in result.stderr


@pytest.fixture
def with_replica(settings):
    with override_settings(DATABASES={**settings.DATABASES, "replica": dict(settings.DATABASES["default"])}):
        yield ReplicaRouter()


def test_reads_go_to_the_replica_only_inside_reading_replica_and_writes_never(with_replica):
    router = with_replica
    assert router.db_for_read(UsageRecord) == "default"
    with reading_replica() as alias:
        assert alias == "replica"
        assert router.db_for_read(UsageRecord) == "replica"
        assert router.db_for_write(UsageRecord) == "default"
        assert UsageRecord.objects.all().db == "replica"
    assert router.db_for_read(UsageRecord) == "default"
    assert not router.allow_migrate("replica", "billing")


def test_reading_replica_reaches_the_worker_thread_of_a_db_call(with_replica):
    router = with_replica

    async def main():
        with reading_replica():
            inside = await asyncio.to_thread(router.db_for_read, UsageRecord)
        outside = await asyncio.to_thread(router.db_for_read, UsageRecord)
        return inside, outside

    assert asyncio.run(main()) == ("replica", "default")


def test_without_a_replica_reading_replica_reads_the_default_database():
    with reading_replica() as alias:
        assert alias == "default"
        assert ReplicaRouter().db_for_read(UsageRecord) == "default"


@pytest.mark.parametrize(("lag", "note"), [(None, False), (0.0, False), (0.6, False), (12.4, True)])
def test_the_period_bar_says_when_the_replica_is_a_second_or_more_behind(lag, note):
    from django.template.loader import render_to_string

    html = render_to_string("admin/billing/_period_form.html", {"replica_lag": lag})
    assert ('id="replica-lag"' in html) is note
    if note:
        assert "Figures read from a replica 12 s behind the primary" in html
