"""PostgreSQL servers a test starts for itself: a primary and its streaming replica (initdb, pg_ctl,
pg_basebackup of Debian's PostgreSQL 15), and a PgBouncer in front of a server. Each on a free
port in a temporary directory, stopped by its pid; the shared server on 5432 is only read from
(pg_dump of the test database), never configured.
"""

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from django.db import connections
from django.db.utils import load_backend

from .conftest import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def have_postgres_binaries() -> bool:
    return all((PG_BIN / name).exists() for name in ("initdb", "pg_ctl", "pg_basebackup", "pg_dump", "psql"))


def have_pgbouncer() -> bool:
    return Path(PGBOUNCER).exists()


def _unprivileged(command: list[str]) -> list[str]:
    """PostgreSQL's server (and initdb) refuse to run as root: as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _own_directory(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def _run(command: list[str], **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120, **kwargs)
    if result.returncode:
        raise RuntimeError(f"{command[:3]} exited {result.returncode}: {result.stderr[-2000:]}")


def _stop_by_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGINT is PostgreSQL's fast shutdown (PgBouncer's too: it closes at once)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Server:
    """One PostgreSQL server the test started: its port, data directory and server log."""

    port: int
    data: Path
    log: Path
    database: str = "postgres"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def dsn(self, database: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database or self.database}"

    def query(self, sql: str, params: tuple = (), *, database: str | None = None) -> list[tuple]:
        with psycopg.connect(self.dsn(database), autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def value(self, sql: str, params: tuple = ()):
        return self.query(sql, params)[0][0]

    def start(self, sockets: Path) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {sockets} -c fsync=off -c full_page_writes=off"
        _run(
            _unprivileged(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"]
            )
        )

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            _stop_by_pid(int(pid_file.read_text().split()[0]))


@contextlib.contextmanager
def primary_and_replica() -> Iterator[tuple[Server, Server]]:
    """A fresh primary and a streaming replica of it (pg_basebackup -R: standby.signal and
    primary_conninfo), both with a database "app"; stopped and removed afterwards."""
    root = _own_directory("pg-pair-")
    primary = Server(free_port(), root / "primary", root / "primary.log", database="app")
    replica = Server(free_port(), root / "replica", root / "replica.log", database="app")
    try:
        _run(
            _unprivileged(
                [str(PG_BIN / "initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8"]
            )
        )
        primary.start(root)
        primary.query("CREATE DATABASE app", database="postgres")
        _run(
            _unprivileged(
                [
                    str(PG_BIN / "pg_basebackup"),
                    *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
                    *("-D", str(replica.data), "-R", "-X", "stream", "-c", "fast"),
                ]
            )
        )
        replica.start(root)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


def copy_database(*, source_dsn: str, target: Server) -> None:
    """The test database, as the test's fixtures left it (schema and rows), into `target`'s."""
    dump = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "-d", source_dsn],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    subprocess.run(
        [str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", target.dsn()],
        input=dump,
        capture_output=True,
        check=True,
        timeout=120,
    )


def wait_for_replay(primary: Server, replica: Server, timeout: float = 20.0) -> None:
    """Until the replica has replayed everything the primary had written when this was called."""
    lsn = primary.value("SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout
    while not replica.value("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the replica did not replay up to {lsn} in {timeout}s")
        time.sleep(0.05)


@contextlib.contextmanager
def orm_alias(server: Server, alias: str = "started_server") -> Iterator[str]:
    """A Django connection to `server`'s database under `alias`, for `.using(alias)` in a test.

    A connection object set on the handler for this thread, not a configured database: Django's
    test case lets such a connection through, and nothing else (no pool, no migration) sees it.
    """
    settings_dict = copy.deepcopy(connections.settings["default"])
    settings_dict.update(NAME=server.database, HOST="127.0.0.1", PORT=str(server.port), USER="postgres", PASSWORD="")
    settings_dict["OPTIONS"] = {
        key: value for key, value in settings_dict["OPTIONS"].items() if key not in {"pool", "options"}
    }
    connection = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)
    connections[alias] = connection
    try:
        yield alias
    finally:
        connection.close()
        del connections[alias]


@contextlib.contextmanager
def pgbouncer(*, host: str, port: int, pool_mode: str = "transaction", pool_size: int = 10) -> Iterator[int]:
    """Debian's pgbouncer on a free port in front of host:port, any database, auth trust; yields its port."""
    root = _own_directory("pgbouncer-")
    listen = free_port()
    config = root / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
        "auth_type = trust\nadmin_users = postgres\n"
        f"auth_file = {root / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 500\n"
        # The idle server connection used longest ago, not the last one (PgBouncer's default), and
        # at least two of them: a client's consecutive transactions land on different server
        # connections even when it is the only one busy, so anything relying on session state fails.
        f"server_round_robin = 1\nmin_pool_size = {min(2, pool_size)}\n"
        # Django and psycopg send these at connect time; PgBouncer would refuse an unknown one.
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {root / 'pgbouncer.log'}\npidfile = {root / 'pgbouncer.pid'}\n"
    )
    (root / "users.txt").write_text('"postgres" ""\n')
    if os.geteuid() == 0:
        for path in root.iterdir():
            shutil.chown(path, "postgres", "postgres")
    # -d: pgbouncer daemonizes once it listens, writing its pid file.
    _run(_unprivileged([PGBOUNCER, "-d", str(config)]))
    try:
        deadline = time.monotonic() + 10
        while not (root / "pgbouncer.pid").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {(root / 'pgbouncer.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield listen
    finally:
        pid_file = root / "pgbouncer.pid"
        if pid_file.exists():
            _stop_by_pid(int(pid_file.read_text().split()[0]))
        shutil.rmtree(root, ignore_errors=True)
