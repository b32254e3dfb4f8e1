"""`make test`'s first step (tests/preflight.py): a clear line at once when PostgreSQL or Redis is
not there, and a missing test database created rather than waited on."""

import os
import subprocess
import sys
import time
import uuid

import psycopg

from .conftest import ROOT, database_url, free_port


def preflight(database: str, redis: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATABASE_URL=database, REDIS_URL=redis)
    return subprocess.run(
        [sys.executable, "-m", "tests.preflight"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def server_url(database: str) -> str:
    return database_url().rsplit("/", 1)[0] + f"/{database}"


def test_a_missing_test_database_is_created():
    name = f"preflight_{uuid.uuid4().hex[:12]}"
    try:
        first = preflight(server_url(name), os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15")
        assert first.returncode == 0, first.stderr
        assert f"database '{name}' created" in first.stdout
        again = preflight(server_url(name), os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15")
        assert f"database '{name}' found" in again.stdout
    finally:
        with psycopg.connect(server_url("postgres"), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_an_unreachable_postgresql_or_redis_is_one_clear_line_at_once():
    nobody = free_port()  # nothing listens there
    started = time.monotonic()
    result = preflight(f"postgres://postgres@127.0.0.1:{nobody}/test", "redis://127.0.0.1:6379/15")
    assert result.returncode == 2
    assert result.stderr.startswith(f"make test: PostgreSQL at 127.0.0.1:{nobody} is unreachable")
    assert len(result.stderr.strip().splitlines()) == 1  # no pool warnings, no traceback
    redis_down = preflight(server_url("postgres"), f"redis://:s3cret@127.0.0.1:{nobody}/15")
    assert redis_down.returncode == 2
    assert redis_down.stderr.startswith(f"make test: Redis at 127.0.0.1:{nobody}/15 is unreachable")
    assert "s3cret" not in redis_down.stderr  # a URL's password is never printed
    assert time.monotonic() - started < 10
