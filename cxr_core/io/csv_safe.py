"""CSV that a spreadsheet opens as data: text cells that would run as formulas are neutralised.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel,
LibreOffice and Google Sheets as a formula (OWASP "CSV injection"): a reader or file name like
``=HYPERLINK(...)`` would run when a researcher opens the export. Text cells get a leading
``'``; numbers are left as numbers (``-0.25`` is a value, not a formula).
"""

from __future__ import annotations

import csv
import io
import numbers
from collections.abc import Iterable, Mapping, Sequence

#: First characters that make a spreadsheet read a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """``value`` as a safe CSV cell: text starting with a formula character gets a leading ``'``.

    >>> cell("=HYPERLINK(1)"), cell("Normal"), cell(-0.25), cell(None)
    ("'=HYPERLINK(1)", 'Normal', -0.25, '')
    """
    if value is None:
        return ""
    if isinstance(value, (numbers.Number,)) and not isinstance(value, bool):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def row(values: Iterable[object]) -> list[object]:
    """Every cell of a row through :func:`cell`."""
    return [cell(v) for v in values]


def dict_rows_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as CSV text (columns: ``columns`` or the first row's keys), every cell neutralised."""
    if not rows and not columns:
        return ""
    header = list(columns or rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(row(header))
    for r in rows:
        writer.writerow(row(r.get(k) for k in header))
    return buffer.getvalue()
