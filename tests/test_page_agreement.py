"""The agreement page under AppTest on the study of ``test_session_scores``: cards equal the library's numbers,
the threshold and rule recompute live, the gallery sorts by IoU, and blind readings stay hidden.

Dr A and Dr B read img0..img2 in "Blind 1"; img2 is still pending for Dr B in "Blind 2".
"""

from __future__ import annotations

import math

import pytest
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import REPO
from cxr_core import agreement
from cxr_core.agreement import session_scores as ss
from test_session_scores import build_study, engine_loader, model_refs
from ui import agreement as agr

TIMEOUT = 600  # the compute test loads a tiny model and traces its CAM step; 2 cores are shared
PAGE = "pages/agreement.py"


def study_with_heatmaps(tiny_registry, folder) -> str:
    """URL of a study database in ``folder`` whose tiny-effnet Grad-CAM and random heatmaps are stored."""
    study = build_study(f"sqlite:///{folder / 'annotations.db'}")
    factory = study.factory()
    with factory.begin() as s:
        data = ss.read_session(s, "Blind 1")
    ss.compute_missing(factory, data, model_refs(tiny_registry)["tiny-effnet"],
                       engine_loader(tiny_registry, "tiny-effnet"), "gradcam")
    return study.url


@pytest.fixture(scope="module")
def computed(tiny_registry, tmp_path_factory) -> str:
    """A study database whose tiny-effnet Grad-CAM and random heatmaps are already stored."""
    return study_with_heatmaps(tiny_registry, tmp_path_factory.mktemp("page-agreement"))


@pytest.fixture
def db_url(computed, use_registry, monkeypatch) -> str:
    monkeypatch.setenv("CXR_DATABASE_URL", computed)
    return computed


def open_page(reader: str = "Researcher") -> AppTest:
    """A fresh browser session on the agreement page, logged in as ``reader`` (the study's experts as
    administrators, who may open it and also read; the study's Researcher as a researcher)."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name=reader, role="researcher" if reader == "Researcher" else "admin")
    at.run()
    # the study's films are synthetic textures that screening refuses: these tests look at them under the
    # page's expert override (test_refused_films_are_listed_and_left_out covers the refusal)
    at.session_state[agr.AGREEMENT_OVERRIDE] = True
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def cards(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def gallery(at: AppTest) -> list[str]:
    return [c for img in at.get("image") for c in img.captions]


def expected(url: str, registry, threshold: str = "otsu", rule: str = "true_positive_only", reader="Researcher",
             method: str = "gradcam", readers=("Dr A", "Dr B")) -> dict[str, agreement.Interval]:
    """The library's pooled non-Normal means for tiny-effnet over ``readers``, as the cards should show them."""
    from cxr_core import storage

    factory = storage.session_factory(storage.make_engine(url))
    with factory.begin() as s:
        data = ss.read_session(s, "Blind 1", hidden=ss.hidden_for(s, reader))
        pairs = ss.load_pairs(s, data, model_refs(registry)["tiny-effnet"], method)
    scores = [x for x in ss.score_pairs(pairs, threshold, rule) if x.reader in readers]
    (group,) = [g for g in agreement.aggregate(scores, by=("model", "method")) if not g.normal]
    kappa = ss.diagnosis(pairs)
    return {**group.metrics, "kappa": agreement.Interval(kappa.kappa, kappa.kappa_lo, kappa.kappa_hi, kappa.n)}


def shown(iv: agreement.Interval) -> str:
    return "–" if not math.isfinite(iv.mean) else f"{iv.mean:.3f}"


def test_missing_heatmaps_are_computed_on_request(tmp_path, use_registry, monkeypatch):
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    build_study(url)
    at = open_page()
    caption = at.caption[0].value
    assert "agrees with where the experts marked" in caption and "not diagnoses" in caption
    assert any(c.value.startswith("Viewing as **Researcher** (researcher), the logged-in user") for c in at.caption)
    # 10 for the readers; 4 more (Grad-CAM and baseline of the top class) where the consensus is uncertain
    assert any("14 heatmap(s) are not computed yet (tiny-effnet: 14)" in w.value for w in at.warning)
    assert not at.metric and not gallery(at)
    at.button(key="agreement_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning
    want = expected(url, use_registry)
    assert cards(at) == {"mIoU": shown(want["iou"]), "Hit rate": shown(want["hit"]),
                         "Relevance mass": shown(want["mass"]), "Diagnosis kappa": shown(want["kappa"])}
    base = expected(url, use_registry, method="random")
    assert any(c.value.endswith(f"random {agr.format_interval(base['mass'])}") for c in at.caption)
    assert len(gallery(at)) == 6  # every reading, img2 included: the researcher has nothing pending


def test_threshold_and_rule_recompute_live(db_url, use_registry):
    at = open_page()
    assert cards(at)["mIoU"] == shown(expected(db_url, use_registry)["iou"])
    at.radio(key=agr.AGREEMENT_THRESHOLD).set_value("fixed").run()
    at.slider(key=agr.AGREEMENT_FIXED).set_value(0.3).run()
    assert not at.exception
    assert any("threshold **0.3**, rule **true_positive_only**" in c.value for c in at.caption)
    assert cards(at)["mIoU"] == shown(expected(db_url, use_registry, "0.3")["iou"])
    at.radio(key=agr.AGREEMENT_THRESHOLD).set_value("top").run()
    at.slider(key=agr.AGREEMENT_TOP).set_value(40).run()
    at.radio(key=agr.AGREEMENT_RULE).set_value("full").run()
    assert any("threshold **top40%**, rule **full**" in c.value for c in at.caption)
    want = expected(db_url, use_registry, "top40%", "full")
    assert cards(at)["mIoU"] == shown(want["iou"]) and cards(at)["Relevance mass"] == shown(want["mass"])
    assert all("top40%" in c for c in [m.value for m in at.markdown if "binarised heatmap" in m.value])


def iou_of(caption: str) -> float:
    part = next(p for p in caption.split(" · ") if p.startswith("IoU "))
    return math.nan if part == "IoU –" else float(part[4:])


def test_gallery_sorts_by_iou_and_follows_the_filters(db_url, use_registry):
    at = open_page()
    at.radio(key=agr.AGREEMENT_THRESHOLD).set_value("top").run()  # top 15%: every reading has a heatmap mask
    worst = [iou_of(c) for c in gallery(at)]
    finite = [v for v in worst if not math.isnan(v)]
    assert len(worst) == 6 and finite == sorted(finite) and worst[:len(finite)] == finite  # undefined last
    at.radio(key=agr.AGREEMENT_SORT).set_value("best").run()
    best = [iou_of(c) for c in gallery(at)]
    assert [v for v in best if not math.isnan(v)] == sorted(finite, reverse=True)
    readers = at.multiselect(key=agr.agreement_filter_key(agr.AGREEMENT_READERS, "Blind 1", ["Dr A", "Dr B"]))
    readers.set_value(["Dr A"]).run()
    assert gallery(at) and all(" · Dr A (" in c for c in gallery(at))
    classes = at.multiselect(key=agr.agreement_filter_key(
        agr.AGREEMENT_CLASSES, "Blind 1", ["COVID-19", "Normal", "Pneumonia", "Tuberculosis", "uncertain"]))
    classes.set_value(["COVID-19"]).run()
    assert [c.split(" · ")[:2] for c in gallery(at)] == [["img0.png", "Dr A (COVID-19)"]]
    assert any("1 image(s), 1 reader(s)" in c.value for c in at.caption)
    at.selectbox(key=agr.AGREEMENT_GALLERY_MODEL).set_value("tiny-effnet · random baseline").run()
    assert len(gallery(at)) == 1 and not at.exception
    labels = [b.label for b in at.get("download_button")]
    assert [label.split(" ")[0] for label in labels] == ["Time", "CSV", "JSON", "HTML", "COCO"]  # time per case first


@pytest.mark.parametrize("reader, note", [
    ("Dr B", "1 image(s) of this session are left out: they are still pending in your own blind readings"),
    ("Researcher", None),
    ("Dr A", None),
])
def test_images_pending_blind_reading_are_left_out(db_url, use_registry, reader, note):
    at = open_page(reader)
    notes = [i.value for i in at.info if "left out" in i.value]
    assert notes == ([] if note is None else [notes[0]]) and (note is None or note in notes[0])
    pictured = {c.split(" · ")[0] for c in gallery(at)}
    assert ("img2.png" in pictured) is (note is None)
    assert pictured >= {"img0.png", "img1.png"}
    want = expected(db_url, use_registry, reader=reader)
    assert cards(at)["Relevance mass"] == shown(want["mass"])


def test_downloads_hold_the_scores_shown(db_url, use_registry):
    """What the page's four download buttons produce (agr.agreement_export), for Dr A's readings at top 30%."""
    import csv
    import io
    import json
    from html.parser import HTMLParser

    from cxr_core import storage

    factory = storage.session_factory(storage.make_engine(db_url))
    ref = model_refs(use_registry)["tiny-effnet"]
    with factory.begin() as s:
        data = ss.read_session(s, "Blind 1")
        pairsets = [ss.load_pairs(s, data, ref, m) for m in ("gradcam", "random")]
    scores = [x for p in pairsets for x in ss.score_pairs(p, "top30%", "full") if x.reader == "Dr A"]
    rows = list(csv.DictReader(io.StringIO(agr.agreement_export("csv", data, pairsets, scores, "full"))))
    assert [(r["image_id"], r["method"], r["threshold"]) for r in rows] == [
        (x.image_id, x.method, "top30%") for x in scores]
    payload = json.loads(agr.agreement_export("json", data, pairsets, scores, "full"))
    assert payload["meta"]["readers"] == ["Dr A"] and len(payload["scores"]) == 6
    assert payload["method"]["rules"] == ["full"] and payload["gallery"]
    coco = json.loads(agr.agreement_export("coco", data, pairsets, scores, "full"))
    assert {a["attributes"]["reader"] for a in coco["annotations"]} == {"Dr A"}
    html = agr.agreement_export("html", data, pairsets, scores, "full")

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.alts: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.alts.append(dict(attrs)["alt"])

    parser = Images()
    parser.feed(html)
    assert parser.alts == [g["image_id"] for g in payload["gallery"]]  # every gallery image is in the page


def test_consensus_is_a_separate_filter_chosen_by_nobody_by_default(db_url, use_registry):
    at = open_page()
    majority, staple = ss.CONSENSUS_READERS
    readers = at.multiselect(key=agr.agreement_filter_key(agr.AGREEMENT_READERS, "Blind 1", ["Dr A", "Dr B"]))
    pseudo = at.multiselect(key=agr.agreement_filter_key(agr.AGREEMENT_CONSENSUS, "Blind 1", [majority, staple]))
    assert readers.options == ["Dr A", "Dr B"] and pseudo.options == [majority, staple] and pseudo.value == []
    assert len(gallery(at)) == 6 and not any("Consensus" in c for c in gallery(at))
    pseudo.set_value([majority]).run()
    readers.set_value([]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(gallery(at)) == 3 and all(f" · {majority} (" in c for c in gallery(at))  # one per film
    want = expected(db_url, use_registry, readers=(majority,))
    assert cards(at)["mIoU"] == shown(want["iou"]) and cards(at)["Relevance mass"] == shown(want["mass"])
    assert cards(at)["Diagnosis kappa"] == "–"  # kappa leaves the consensus out: it repeats the readers
    assert any(f"0 reader(s) and {majority}" in c.value for c in at.caption)


def test_readings_excluded_by_their_readers_are_counted(tmp_path, use_registry, monkeypatch):
    from cxr_core import storage

    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    study = build_study(url)
    with study.factory().begin() as s:
        first = storage.latest_annotation(s, reader_id=study.readers["Dr B"], image_sha=study.shas[1],
                                          session_id=study.session_id)
        storage.revise_annotation(s, first.id, exclusion="not a chest film")
    at = open_page()
    assert "1 reading excluded by readers (1 not a chest film): left out of every number." in [
        i.value for i in at.info]
    assert any("heatmap(s) are not computed yet" in w.value for w in at.warning)


def test_time_per_case_is_shown_per_reader_with_a_csv(tmp_path, use_registry, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from cxr_core import storage

    from cxr_core.agreement import reports
    from cxr_core.agreement.session_report import time_rows

    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    study = build_study(url)
    with study.factory().begin() as s:  # Dr A revises img0 four minutes after it was shown again
        rid = study.readers["Dr A"]
        storage.record_shown(s, reader_id=rid, image_sha=study.shas[0], session_id=study.session_id,
                             now=datetime.now(timezone.utc) - timedelta(minutes=4))
        prev = storage.latest_annotation(s, reader_id=rid, image_sha=study.shas[0], session_id=study.session_id)
        storage.revise_annotation(s, prev.id, comment="second look")
    at = open_page()
    assert not at.exception, [e.value for e in at.exception]
    (expander,) = [e for e in at.expander if e.label.startswith("Time per case")]
    assert expander.label == "Time per case (1 timed reading(s), every reader of the session)"
    table = expander.dataframe[0].value
    assert list(table["reader"]) == ["Dr A", "Dr B", "all readers"]
    assert list(table["timed"]) == [1, 0, 1] and list(table["untimed"]) == [3, 3, 6]
    assert 240 <= table["median (s)"][0] < 300 and table["median (s)"][2] == table["median (s)"][0]
    with study.factory().begin() as s:
        rows = time_rows(ss.read_session(s, "Blind 1"))
    assert reports.times_csv(rows).splitlines()[1].startswith("Blind 1,Dr A,1,3,")
    assert [b.label for b in expander.get("download_button")] == ["Time per case (CSV)"]


def test_refused_films_are_listed_and_left_out(tmp_path, use_registry, monkeypatch):
    """A noise image read beside a real chest film: the page lists it as not analysed, with the analysis
    path's reasons and figures, computes no heatmap for it and scores the chest film alone."""
    import numpy as np

    from conftest import FIXTURES
    from cxr_core import annotation as ann
    from cxr_core import storage
    from cxr_core.analysis import screen_films
    from cxr_core.io.imaging import XRay, load_xray, pixel_sha256
    from cxr_core.models.manifest import load_model

    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    study = build_study(url)
    noise = np.random.default_rng(0).uniform(0, 1, (96, 96)).astype(np.float32)
    chest = load_xray(FIXTURES / "cxr" / "covid_hannover_b343e657.png")
    with study.factory().begin() as s:
        shas = [storage.add_xray(s, chest).sha256, storage.add_image(s, noise, original_name="noise.png").sha256]
        session = storage.create_session(s, name="Mixed", image_shas=shas, reader_ids=[study.readers["Dr A"]],
                                         created_by=study.readers["Admin"], blind=False, shuffle=False)
        for sha in shas:
            h, w = storage.load_pixels(s, sha).shape
            storage.submit_annotation(
                s, reader_id=study.readers["Dr A"], image_sha=sha, session_id=session.id, diagnosis="COVID-19",
                confidence=3, canvas_json={"objects": [{"type": "Rect", "left": w // 4, "top": h // 4, "width": w // 3,
                                                        "height": h // 3, "originX": "left", "originY": "top",
                                                        "strokeWidth": 0}]},
                canvas_width=w, canvas_height=h, background_fit=ann.contain_fit(w, h, w, h), labels=["consolidation"])
    at = open_page()
    at.checkbox(key=agr.AGREEMENT_OVERRIDE).uncheck().run()
    at.selectbox(key=agr.AGREEMENT_SESSION).select("Mixed").run()
    assert not at.exception, [e.value for e in at.exception]
    [listed] = [e for e in at.expander if e.label.startswith("Not analysed")]
    assert listed.label.startswith("Not analysed (1)")
    [row] = listed.dataframe[0].value.to_dict("records")
    [direct] = screen_films(load_model("tiny-effnet"), [XRay(noise, "png", 16, pixel_sha256(noise), "noise.png")])
    assert row["film"] == "noise.png" and row["reasons"] == " | ".join(direct.reasons)
    assert row["details"] == " | ".join(direct.details) and "high-frequency energy" in row["details"]
    assert any("2 heatmap(s) are not computed yet (tiny-effnet: 2)" in w.value for w in at.warning)  # chest only
    at.button(key="agreement_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(gallery(at)) == 1 and "noise.png" not in gallery(at)[0]
