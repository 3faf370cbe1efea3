"""CSV cells that would run as spreadsheet formulas are neutralised; numbers stay numbers."""

from __future__ import annotations

import csv
import io

import pytest

from cxr_core.io import csv_safe


@pytest.mark.parametrize("text", ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\t=1", "\r=1",
                                  '=HYPERLINK("http://x","click")'])
def test_formula_starts_get_a_leading_quote(text):
    assert csv_safe.cell(text) == "'" + text


@pytest.mark.parametrize("value", ["Normal", "film-1a2b3c4d", "", "a=b", 0.5, -0.25, 3, float("nan")])
def test_plain_text_and_numbers_are_unchanged(value):
    out = csv_safe.cell(value)
    assert out is value or out == value or (value != value and out != out)


def test_dict_rows_round_trip_through_the_csv_reader():
    rows = [{"reader": "=cmd|' /C calc'!A0", "iou": -0.0, "note": "@SUM(1)"}, {"reader": "Dr A", "iou": 0.42, "note": None}]
    text = csv_safe.dict_rows_csv(rows)
    back = list(csv.DictReader(io.StringIO(text)))
    assert back[0]["reader"] == "'=cmd|' /C calc'!A0" and back[0]["note"] == "'@SUM(1)"
    assert back[0]["iou"] == "-0.0" and back[1]["iou"] == "0.42" and back[1]["note"] == ""
    texts = [v for r in back for k, v in r.items() if k != "iou"]
    assert not any(v.startswith(csv_safe.FORMULA_STARTS) for v in texts)
