"""`make test`'s first step: PostgreSQL and Redis answer, and the test database exists.

Without it a missing database or a stopped server surfaces late and noisily: `makemigrations
--check` retries the connection pool with a warning per attempt before giving up on its
consistency check, and the suite then fails test by test. Here either is one clear line, within
a few seconds, and a missing database (a fresh server) is simply created.

    python -m tests.preflight   (reads DATABASE_URL and REDIS_URL, as the suite does)

Only the standard library, psycopg and redis: Django's settings would open the very pool whose
warnings this avoids.
"""

import os
import sys
from urllib.parse import unquote, urlsplit

import psycopg
import redis
from psycopg import sql

CONNECT_TIMEOUT_SECONDS = 3


def fail(message: str) -> None:
    sys.stderr.write(f"make test: {message}\n")
    raise SystemExit(2)


def database_ensure(url: str) -> str:
    """Create the database of `url` when it does not exist; returns what was done, for the log."""
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if parts.scheme not in {"postgres", "postgresql"} or not name:
        fail(f"DATABASE_URL must be a PostgreSQL URL with a database name (got {parts.scheme or url!r})")
    server = parts._replace(path="/postgres").geturl()  # the maintenance database every server has
    try:
        with psycopg.connect(server, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists:
                return f"database {name!r} found"
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return f"database {name!r} created"
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(
            f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is unreachable ({first_line}). "
            "Start it (`.ci/run` does), or point TEST_DATABASE_URL at one."
        )
    raise AssertionError("unreachable")  # fail() raised


def redis_check(url: str) -> str:
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"  # never the password of the URL
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(f"Redis at {where} is unreachable ({exc}). Start it (`.ci/run` does), or point TEST_REDIS_URL at one.")
    finally:
        client.close()
    return f"Redis {where} answers (the suite flushes this database)"


def main() -> None:
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        fail("REDIS_URL is not set: the suite needs a Redis database of its own (TEST_REDIS_URL)")
    done = [database_ensure(database_url), redis_check(redis_url)]
    sys.stdout.write(f"preflight: {'; '.join(done)}\n")


if __name__ == "__main__":
    main()
