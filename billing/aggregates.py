"""Sums of money that are exact on every database.

PostgreSQL sums `numeric` exactly. SQLite (the demo) keeps a DecimalField as a REAL and sums
floats, so `/v1/usage` showed `"cost": "0.031882999999999995"`, and Django reads a float sum
back with 15 significant digits only. On SQLite, `MoneySum` therefore adds integers: each amount
scaled to units of 10⁻¹² (the places of a request's cost) and rounded to the integer it stands
for, which SQLite sums exactly; the integer becomes a Decimal again when it is read. What SQLite
stores of each amount is still a float (about 16 significant digits: a request's cost fits with
room to spare), and its integer sums overflow past 9.2 million units of currency.

Every money aggregate uses `MoneySum` (through the ORM) or `money_sum_sql` (raw SQL), and reads
raw-SQL results with `money_from_db`.
"""

from decimal import Decimal

from django.db import connection as default_connection
from django.db.models import DecimalField, Sum

SCALE = 12  # decimal places of a cost (billing.models.COST_DIGITS); every money column has no more
_UNIT = 10**SCALE


def _sqlite_sum(expression_sql: str) -> str:
    return f"SUM(CAST(ROUND({expression_sql} * {_UNIT}) AS INTEGER))"


def money_from_db(value, *, vendor: str | None = None) -> Decimal | None:
    """A money sum as the database hands it back: a Decimal (PostgreSQL) or, on SQLite, the
    integer count of 10⁻¹² units that `MoneySum` made. Text is a literal default (`Coalesce`'s 0)."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        return Decimal(value)
    if isinstance(value, int) and (vendor or default_connection.vendor) == "sqlite":
        return Decimal(value).scaleb(-SCALE)
    raise TypeError(f"not a money sum: {value!r}")  # a float would be the very bug this module prevents


class MoneySumField(DecimalField):
    """The output of `MoneySum`. Its own internal type keeps SQLite's Decimal converter (which
    would read the scaled integer as a float, to 15 digits) away; it converts the value itself."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_digits", 38)
        kwargs.setdefault("decimal_places", SCALE)
        super().__init__(**kwargs)

    def get_internal_type(self) -> str:
        return "MoneySumField"

    def from_db_value(self, value, expression, connection) -> Decimal | None:
        return money_from_db(value, vendor=connection.vendor)


class MoneySum(Sum):
    """`Sum` of a money column, exact on every database (see the module's docstring). Its result
    is a Decimal, or None over no rows; wrap it in `Coalesce(..., Decimal(0))` for 0."""

    def __init__(self, *expressions, **extra) -> None:
        extra.setdefault("output_field", MoneySumField())
        super().__init__(*expressions, **extra)

    def as_sqlite(self, compiler, connection, **extra_context):
        # A template of the copy, not a `template=` argument: Aggregate.as_sql builds the FILTER
        # clause around `self.template`, and would be handed `template` twice.
        scaled = self.copy()
        scaled.template = _sqlite_sum("%(expressions)s")
        return scaled.as_sql(compiler, connection, **extra_context)


def money_sum_sql(column_sql: str, *, vendor: str | None = None) -> str:
    """SQL for the exact sum of a money column, as a value the column's own type can store (for
    INSERT … SELECT): on SQLite the integer sum scaled back, so that the rounding happens once."""
    if (vendor or default_connection.vendor) == "sqlite":
        return f"({_sqlite_sum(column_sql)} / {_UNIT}.0)"
    return f"SUM({column_sql})"
