"""A dataset audit as a reader may see it: films pending in their blind sessions are taken out everywhere."""

from __future__ import annotations

import json

from cxr_core.audit import from_json
from cxr_core.audit.blinded import without_pending
from cxr_core.audit.report import render_html
from test_page_audit import saved_audit


def audit_with_hashes() -> dict:
    data = saved_audit()
    for i, im in enumerate(data["images"]):
        im["sha256"] = f"{i:064x}"
    data["flagged"][0]["sha256"] = f"{1:064x}"  # /data/Normal_1.png
    return data


def test_nothing_pending_leaves_the_audit_as_it_is():
    data = audit_with_hashes()
    assert without_pending(data, set()).data is data
    assert without_pending(data, {"f" * 64}).data is data  # pending, but not in this audit


def test_a_pending_film_leaves_images_flagged_summaries_and_downloads():
    data = audit_with_hashes()
    pending = {f"{1:064x}", f"{3:064x}"}  # two Normal films
    seen = without_pending(data, pending, n_boot=100)
    assert (seen.hidden, seen.unchecked) == (2, 0)
    kept = seen.data
    assert kept["n_images"] == 10 and {im["sha256"] for im in kept["images"]}.isdisjoint(pending)
    assert kept["flagged"] == []
    assert kept["summary_by_predicted"]["Normal"]["n"] == data["summary_by_predicted"]["Normal"]["n"] - 2
    from_json(kept)  # still a valid audit
    assert "Normal_1.png" in render_html(data)  # the flagged film's gallery entry...
    assert "Normal_1.png" not in render_html(kept)  # ...is gone from the HTML report
    assert "Normal_1.png" not in json.dumps(kept)


def test_films_without_a_hash_are_hidden_when_anything_is_pending():
    data = saved_audit()  # no pixel hashes (an older audit file)
    seen = without_pending(data, {"a" * 64}, n_boot=100)
    assert (seen.hidden, seen.unchecked) == (12, 12)
    assert seen.data["images"] == [] and seen.data["summary_by_predicted"] == {}
    assert without_pending(data, set()).data is data
