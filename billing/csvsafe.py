"""The one way the project writes CSV: every cell defused against formula injection.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (or a tab or a carriage return
before one of them) as a formula, so a tenant named `=HYPERLINK("http://evil", "x")` would
reach the finance team's spreadsheet as a live link (OWASP "CSV injection"). Such a cell gets a
leading apostrophe, which spreadsheets show as text. Numbers are the exception: a negative
amount ("-12.50") must stay a number, and a plain decimal cannot be a formula.

Every CSV the project writes goes through `csv_writer`, so no column can be forgotten: the
invoice export (billing/exports.py) and the admin's analytics export (console/dashboard.py).
"""

import csv
import re
from collections.abc import Iterable
from typing import Any, Protocol

# Fullwidth variants too: some spreadsheets normalise them to their ASCII forms.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")


class _Writer(Protocol):
    def writerow(self, row: Iterable[Any], /) -> Any: ...


def csv_cell(value: Any) -> str:
    """The text of one cell: "" for None, a plain number as is, formula-like text quoted."""
    if value is None:
        return ""
    text = str(value)
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


class SafeCsvWriter:
    """`csv.writer` whose rows are defused cell by cell (see the module's docstring)."""

    def __init__(self, out, **options) -> None:
        self._writer: _Writer = csv.writer(out, **options)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([csv_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(out, **options) -> SafeCsvWriter:
    """A CSV writer for `out` (a file opened with newline="", or an HttpResponse); `options` go
    to `csv.writer` (e.g. lineterminator)."""
    return SafeCsvWriter(out, **options)
