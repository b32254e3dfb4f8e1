"""What one usage record costs PostgreSQL (docs/scaling.md): bytes on disk, WAL, and CPU.

On a database that holds usage records (default: the one bench/tenants_scale.py --keep leaves),
prints the average row size (pg_column_size), the table's heap and index bytes per row, then
writes --inserts records one committed transaction each, as the gateway does (a copy of an
existing row with a new request_id, every index and constraint of the table at work), and
reads the WAL written (pg_current_wal_lsn) and the CPU of the server process that ran them
(/proc/<backend pid>/stat: the database must be on this machine). The rows are deleted after.

    .venv/bin/python bench/usage_row_cost.py [--inserts 5000]

BENCH_SCALE_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/bench_scale) is the database.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg

CLK_TCK = os.sysconf("SC_CLK_TCK")
COLUMNS = (
    "created_at, tenant_id, api_key_id, model, provider, upstream_model, endpoint, status_code, error_type, "
    "input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, cost, price_id, "
    "price_tier_id, latency_ms, streamed, estimated, cache_hit, end_user, project_id, requested_model, tags"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inserts", type=int, default=5000)
    options = parser.parse_args()
    url = os.environ.get("BENCH_SCALE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_scale")
    with psycopg.connect(url, autocommit=True) as db:
        rows, heap, indexes, column = db.execute(
            "SELECT count(*), pg_relation_size('billing_usagerecord'), pg_indexes_size('billing_usagerecord'), "
            "(SELECT avg(pg_column_size(u.*)) FROM (SELECT * FROM billing_usagerecord LIMIT 100000) u) "
            "FROM billing_usagerecord"
        ).fetchone()
        if not rows:
            raise SystemExit("no usage records in this database: run bench/tenants_scale.py --keep first")
        count_indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = 'billing_usagerecord'"
        index_count = db.execute(count_indexes).fetchone()[0]
        total = (heap + indexes) / rows
        print(
            f"{rows:,} usage records: row {column:.0f} B (pg_column_size), heap {heap / rows:.0f} B/row, "
            f"{index_count} indexes {indexes / rows:.0f} B/row, total {total:.0f} B/row"
        )
        source = db.execute("SELECT id FROM billing_usagerecord ORDER BY id DESC LIMIT 1").fetchone()[0]
        pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        copied = COLUMNS.replace("created_at", "now()", 1)
        insert = f"INSERT INTO billing_usagerecord (request_id, {COLUMNS}) SELECT %s, {copied} FROM billing_usagerecord WHERE id = %s"  # noqa: E501, S608 (constants of this file)
        wal_before = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        cpu_before = cpu_seconds(pid)
        began = time.perf_counter()
        for n in range(options.inserts):
            db.execute(insert, [f"bench-row-cost-{n}", source])  # autocommit: one durable commit each
        wall = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu_before
        wal = db.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [wal_before]).fetchone()[0]
        db.execute("DELETE FROM billing_usagerecord WHERE request_id LIKE 'bench-row-cost-%%'")
        print(f"{options.inserts:,} inserts, one commit each: server CPU {cpu / options.inserts * 1e6:.0f} µs/record, "
              f"WAL {float(wal) / options.inserts:.0f} B/record, wall {wall / options.inserts * 1e3:.2f} ms/record "
              f"(load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
