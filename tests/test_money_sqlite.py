"""Money is exact decimal text on SQLite too (the demo's database; issue 10).

SQLite keeps decimals as floats and summed them as floats: `/v1/usage` showed
`"cost": "0.031882999999999995"`, other sums came back with 15 significant digits, and invoice
generation refused a month whose stored costs no longer added up to its tokens' cost.
tests/sqlite_money.py runs every money aggregate of the platform on a fresh SQLite database, in a
process of its own (the suite's database is PostgreSQL), with costs that floats get wrong.
"""

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.conftest import ROOT

D = Decimal
MARCH = D("1000.300000000001")  # 0.1 + 0.2 + 10⁻¹² + 123.456789012345 + 876.543210987655: 16 digits
TODAY = D("0.331883")  # 0.1 + 0.2 + 0.021882999999 + 0.010000000001; as floats 0.33188300000000004


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("sqlite") / "demo.sqlite3"
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}  # the demo has no Redis
    env["DATABASE_URL"] = f"sqlite:///{path}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.sqlite_money"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_usage_api_answers_exact_decimal_strings(figures):
    assert figures["rolled_up"] == ["2025-03-02", "2025-03-03"]  # March comes from the rollups
    assert figures["api_march"] == [str(MARCH)] * 2  # totals, then the one model
    assert figures["api_march_by_endpoint"] == [str(MARCH)]
    assert figures["api_today"] == [str(TODAY)] * 2  # today: raw records
    assert figures["mixed"] == [str(MARCH + TODAY)] * 2  # rollups and raw records in one summary


def test_billing_sums_are_exact(figures):
    assert [D(v) for v in figures["billable"]] == [MARCH]
    assert [D(v) for v in figures["spend_by_tenant"]] == [MARCH]
    assert D(figures["finance_provider_cost"]) == D(figures["invoice_usage_lines"]) == D("1000.30")


def test_admin_figures_are_exact(figures):
    assert D(figures["comparison_cost"]) == MARCH
    assert D(figures["dashboard_cost"]) == MARCH
    assert D(figures["dashboard_revenue"]) == MARCH * D("1.1")
    assert D(figures["overview_cost"]) == MARCH + TODAY
    assert [D(v) for v in figures["overview_daily_cost"]] == [D("0.300000000001"), D(1000), TODAY]


def test_month_to_date_spends_are_exact(figures):
    for name in (
        "overview_month_to_date",
        "overview_key_month_to_date",
        "month_to_date_spend",
        "month_to_date_by_key",
        "registry_month_to_date",
    ):
        assert D(figures[name]) == TODAY, name


def test_the_gateways_upsert_works_on_sqlite(figures):
    """The demo's database takes the gateway's one-statement insert-or-keep-or-replace too."""
    first = str(D("0.021882999999"))  # 882999999 × 10⁻¹² + 21 × 0.001
    assert figures["upserts"] == [
        [first, "", True],
        [first, "", False],  # the replay found the first
        [str(D("0.000882999999")), "interrupted", True],
        [first, "", True],  # replaced the interrupted one
    ]
    assert figures["upserted"] == {"upsert-1": ["", 21, first], "upsert-2": ["", 21, first]}
