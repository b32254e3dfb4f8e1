"""What the benchmarks share: a PostgreSQL database of their own, and Django set up on it.

Each benchmark runs as `python bench/<name>.py`, so this module is importable as `benchdb`.
"""

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent


def ensure_database(url: str) -> None:
    """Create the database named by `url` when it does not exist yet."""
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def setup_django(url: str, **env: str) -> None:
    """Django on `url`, without Redis in this process (whatever it starts gets its own settings)."""
    os.environ["DATABASE_URL"] = url
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
