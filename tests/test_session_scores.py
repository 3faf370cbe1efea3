"""Session scores: stored readings and model results to ImageScores, equal to ``agree`` on every pair.

A small blind study on synthetic films (sizes differ, so scoring stacks by shape): Dr A and Dr B
read three images in "Blind 1"; img2 is also in "Blind 2", still pending for Dr B, so blinding
hides it from Dr B and from a user who has not said who they are.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import smooth_image
from cxr_core import agreement, storage
from cxr_core.agreement import reports
from cxr_core import annotation as ann
from cxr_core.agreement import session_scores as ss
from cxr_core.io.templating import duration

SIZES = [(72, 80), (72, 80), (64, 96)]  # rows x cols of img0..img2
READINGS = [  # reader, image, diagnosis, rectangles (left, top, width, height) in image pixels
    ("Dr A", 0, "COVID-19", [(10, 10, 30, 30)]),
    ("Dr A", 1, "Pneumonia", [(40, 20, 30, 40)]),
    ("Dr A", 2, "Normal", []),
    ("Dr B", 0, "COVID-19", [(15, 12, 30, 30), (50, 40, 20, 20)]),
    ("Dr B", 1, "Tuberculosis", [(35, 25, 30, 30)]),
    ("Dr B", 2, "Pneumonia", [(20, 10, 40, 30)]),
]


@dataclass
class Study:
    url: str
    session_id: int
    readers: dict[str, int]
    shas: list[str]

    def factory(self):
        return storage.session_factory(storage.make_engine(self.url))


def rect(left, top, width, height):
    return {"type": "Rect", "left": left, "top": top, "width": width, "height": height, "originX": "left",
            "originY": "top", "strokeWidth": 3, "stroke": ann.finding_color("consolidation"),
            "fill": ann.finding_fill("consolidation"), "scaleX": 1, "scaleY": 1, "angle": 0}


def build_study(url: str) -> Study:
    """The study of the module docstring in a new database at ``url`` (no model results yet)."""
    factory = storage.session_factory(storage.make_engine(url))
    with factory.begin() as s:
        readers = {n: storage.add_reader(s, n, role).id for n, role in
                   (("Admin", "admin"), ("Dr A", "sme"), ("Dr B", "sme"), ("Researcher", "reviewer"))}
        shas = [storage.add_image(s, smooth_image(h, w, seed=i), original_name=f"img{i}.png").sha256
                for i, (h, w) in enumerate(SIZES)]
        session = storage.create_session(s, name="Blind 1", image_shas=shas, created_by=readers["Admin"],
                                         reader_ids=[readers["Dr A"], readers["Dr B"]], shuffle=False)
        storage.create_session(s, name="Blind 2", image_shas=[shas[2]], reader_ids=[readers["Dr B"]],
                               created_by=readers["Admin"])
        for reader, i, diagnosis, rects in READINGS:
            h, w = SIZES[i]
            storage.submit_annotation(
                s, reader_id=readers[reader], image_sha=shas[i], session_id=session.id, diagnosis=diagnosis,
                confidence=4, canvas_json={"objects": [rect(*r) for r in rects]}, canvas_width=w, canvas_height=h,
                background_fit=ann.contain_fit(w, h, w, h), labels=["consolidation"] * len(rects))
    return Study(url, session.id, readers, shas)


def model_refs(registry: Path) -> dict[str, ss.ModelRef]:
    from cxr_core.models.manifest import list_models

    return {e.name: ss.ModelRef.from_card(e.card) for e in list_models(registry)}


def engine_loader(registry: Path, name: str):
    def load():
        from cxr_core.explain.cam import CamEngine
        from cxr_core.models.manifest import load_model

        return CamEngine.from_loaded(load_model(name, registry))
    return load


@pytest.fixture(scope="module")
def study(tiny_registry, tmp_path_factory) -> Study:
    """The study with Grad-CAM and random heatmaps of both tiny models computed for every reading."""
    st = build_study(f"sqlite:///{tmp_path_factory.mktemp('scores') / 'annotations.db'}")
    factory = st.factory()
    with factory.begin() as s:
        data = ss.read_session(s, "Blind 1")
    for name, ref in model_refs(tiny_registry).items():
        stored = ss.compute_missing(factory, data, ref, engine_loader(tiny_registry, name), "gradcam")
        assert stored > 0
    return st


def nan_equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_read_session_takes_latest_readings_in_session_order(tmp_path):
    own = build_study(f"sqlite:///{tmp_path / 'annotations.db'}")  # revised below: not the shared study
    factory = own.factory()
    with factory.begin() as s:
        first = storage.latest_annotation(s, reader_id=own.readers["Dr A"], image_sha=own.shas[1],
                                          session_id=own.session_id)
        storage.revise_annotation(s, first.id, diagnosis="COVID-19")
        data = ss.read_session(s, "Blind 1")
    c_maj, c_staple = ss.CONSENSUS_READERS
    assert [(r.image_id, r.reader) for r in data.readings] == [  # each film's readers, then its consensus
        (f"img{i}.png", reader) for i in range(3) for reader in ("Dr A", "Dr B", c_maj, c_staple)]
    revised = next(r for r in data.readings if (r.image_id, r.reader) == ("img1.png", "Dr A"))
    assert (revised.diagnosis, revised.version) == ("COVID-19", 2)
    assert revised.mask.shape == SIZES[1] and revised.mask[21:61, 41:71].all() and revised.mask.sum() == 30 * 40
    assert data.readers == ["Dr A", "Dr B"] and data.hidden == () and data.unread == () and data.excluded == ()
    assert data.consensus_readers == [c_maj, c_staple]
    with pytest.raises(ss.SessionScoresError, match="no reading session named 'Nope'; sessions: 'Blind 1', 'Blind 2'"):
        with factory.begin() as s:
            ss.read_session(s, "Nope")


def test_blinding_leaves_out_images_pending_for_the_reader(study):
    with study.factory().begin() as s:
        for reader, hidden in ((None, True), ("Dr B", True), ("Dr A", False), ("Researcher", False)):
            data = ss.read_session(s, "Blind 1", hidden=ss.hidden_for(s, reader))
            assert (data.hidden == (study.shas[2],)) is hidden, reader
            assert ("img2.png" in {r.image_id for r in data.readings}) is not hidden, reader
            assert set(data.images) == set(study.shas) - set(data.hidden)
        with pytest.raises(ss.SessionScoresError, match="no reader named 'Dr X'"):
            ss.hidden_for(s, "Dr X")


def test_compute_missing_stored_every_heatmap_once(study, tiny_registry):
    refs = model_refs(tiny_registry)
    factory = study.factory()
    with factory.begin() as s:
        data = ss.read_session(s, "Blind 1")
        for ref in refs.values():
            assert ss.missing_jobs(s, data, ref, ("gradcam", "random")) == []
        results = storage.model_results_for_image(s, study.shas[1])

    def no_engine():
        raise AssertionError("nothing is missing, so no model may be loaded")

    assert ss.compute_missing(factory, data, refs["tiny-effnet"], no_engine, "gradcam") == 0
    effnet = {(r.method, r.target) for r in results if r.model_name == "tiny-effnet"}
    # the expert's classes for img1 (Pneumonia from Dr A, Tuberculosis from Dr B), each with its baseline, and
    # the model's top class for the consensus (its diagnosis is uncertain: the two readers disagree)
    probs = next(r.probabilities for r in results if r.model_name == "tiny-effnet")
    top = max(probs, key=probs.get)
    assert effnet == {(m, t) for m in ("gradcam", "random") for t in ("Pneumonia", "Tuberculosis", top)}
    assert all(r.model_checksum == refs["tiny-effnet"].checksum for r in results if r.model_name == "tiny-effnet")
    grid = storage.result_heatmap(results[0])
    assert grid.dtype == np.float32 and grid.shape == (2, 2)  # the CAM grid of a 64-pixel EfficientNet
    with factory.begin() as s:
        resnet = ss.load_pairs(s, data, refs["tiny-resnet-3class"], "gradcam")
    tb = [k for k in resnet.keys if k.target == "Tuberculosis"]
    assert len(tb) == 1 and tb[0].explained == tb[0].predicted  # the 3-class model has no TB: its top class
    assert resnet.missing == 0 and len(resnet.keys) == 2 * len(READINGS)  # and 2 consensus on each film


@pytest.mark.parametrize("threshold", ["otsu", "0.5", "top20%"])
@pytest.mark.parametrize("rule", agreement.RULES)
def test_scores_equal_agree_on_every_stored_pair(study, tiny_registry, threshold, rule):
    with study.factory().begin() as s:
        data = ss.read_session(s, "Blind 1")
        pairsets = [ss.load_pairs(s, data, ref, m) for ref in model_refs(tiny_registry).values()
                    for m in ("gradcam", "random")]
    for pairs in pairsets:
        assert len(pairs.groups) == 2  # two image sizes
        scores = ss.score_pairs(pairs, threshold, rule)
        fast = ss.score_pairs(pairs, threshold, rule, free=ss.threshold_free(pairs))
        assert fast == scores or all(nan_equal(getattr(a, f), getattr(b, f)) for a, b in zip(fast, scores)
                                     for f in agreement.METRICS)
        for i, (key, score) in enumerate(zip(pairs.keys, scores)):
            heatmap, mask = pairs.pair(i)
            assert mask.shape == SIZES[int(key.image_id[3])]
            expected = agreement.score_image(heatmap, mask, threshold, rule)
            assert (score.image_id, score.reader, score.target) == (key.image_id, key.reader, key.target)
            assert (score.threshold, score.rule, score.session) == (threshold, rule, "Blind 1")
            for field, value in expected.items():
                assert nan_equal(getattr(score, field), value), (pairs.model.name, pairs.method, key, field)
    normal = [s for s in ss.score_pairs(pairsets[0], threshold, rule) if s.target == "Normal"]
    assert len(normal) == 1 and math.isnan(normal[0].hit)  # an empty expert mask has no hit


def test_reader_agreement_and_diagnosis_kappa(study, tiny_registry):
    with study.factory().begin() as s:
        data = ss.read_session(s, "Blind 1")
        pairs = ss.load_pairs(s, data, model_refs(tiny_registry)["tiny-effnet"], "gradcam")
    rr = ss.reader_pairs(data)
    masks = {(r.image_id, r.reader): r.mask for r in data.readings}
    assert [(p.image_id, p.reader_a, p.reader_b) for p in rr] == [
        ("img0.png", "Dr A", "Dr B"), ("img1.png", "Dr A", "Dr B"), ("img2.png", "Dr A", "Dr B")]
    a, b = masks[("img1.png", "Dr A")], masks[("img1.png", "Dr B")]
    assert rr[1].iou == pytest.approx((a & b).sum() / (a | b).sum())
    assert math.isnan(rr[2].iou)  # Dr A marked nothing (Normal): left out under true-positive-only
    assert ss.reader_pairs(data, {"Dr A"}) == []
    kappa = ss.diagnosis(pairs)
    assert kappa.n == len(READINGS) and kappa.labels[:4] == ("COVID-19", "Normal", "Pneumonia", "Tuberculosis")
    assert kappa.matrix.sum(axis=1).tolist() == [2, 1, 2, 1]  # rows: the experts' classes
    predicted = [k.predicted for k in pairs.keys if not k.consensus]  # kappa leaves consensus out
    assert kappa.matrix.sum(axis=0).tolist() == [predicted.count(c) for c in kappa.labels]
    assert ss.diagnosis(pairs, lambda k: k.reader == "Dr A").n == 3


def test_session_report_matches_agree_and_parses_back(study, tiny_registry, tmp_path, capsys):
    """Done when: the exported per-image numbers equal ``agree`` on each heatmap/mask pair."""
    from cxr_core.cli import main

    refs = model_refs(tiny_registry)
    models = [(refs["tiny-effnet"], engine_loader(tiny_registry, "tiny-effnet"))]
    from cxr_core.agreement.session_report import session_report

    result = session_report(study.factory(), "Blind 1", models, reader="Researcher", threshold="top25%",
                               compute=False, gallery=2)
    report = result.report
    assert {(s.method, s.reader) for s in report.scores} == {(m, r) for m in ("gradcam", "random")
                                                           for r in ("Dr A", "Dr B", *ss.CONSENSUS_READERS)}
    rows = list(csv.DictReader(io.StringIO(reports.to_csv(report.scores))))
    assert len(rows) == 2 * 2 * len(READINGS)  # every reading and, as two readers read each film, 2 consensus
    by_key = {(p.method, k.image_id, k.reader): (p, i) for p in result.pairsets for i, k in enumerate(p.keys)}
    for row in rows:
        pairs, i = by_key[(row["method"], row["image_id"], row["reader"])]
        heatmap, mask = pairs.pair(i)
        np.save(tmp_path / "h.npy", heatmap)
        from PIL import Image
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
        assert main(["agree", "--heatmap", str(tmp_path / "h.npy"), "--mask", str(tmp_path / "m.png"),
                     "--threshold", "top25%", "--json"]) == 0
        agreed = json.loads(capsys.readouterr().out)
        for field in agreement.METRICS:
            got = float(row[field]) if row[field] else math.nan
            want = math.nan if agreed[field] is None else agreed[field]
            assert nan_equal(got, want), (row["image_id"], row["reader"], row["method"], field)

    payload = json.loads(reports.to_json(report))
    assert payload["meta"]["session"] == "Blind 1"
    assert payload["meta"]["models"][0]["sha256"] == refs["tiny-effnet"].checksum
    assert {m["method"] for m in payload["meta"]["models"]} == {"gradcam", "random"}
    assert len(payload["meta"]["readings"]) == 2 * len(READINGS) and payload["meta"]["hidden_images"] == 0
    assert payload["meta"]["readers"] == ["Dr A", "Dr B"]
    assert payload["meta"]["consensus_readers"] == list(ss.CONSENSUS_READERS)
    assert any("Consensus (majority)" in c for c in payload["method"]["conventions"])
    assert payload["diagnosis"]["n"] == len(READINGS) and payload["method"]["thresholds"] == ["top25%"]
    assert any(g["normal"] for g in payload["groups"]) and len(payload["reader_pairs"]) == 3

    coco = json.loads(result.coco())
    experts = [a for a in coco["annotations"] if a["attributes"]["source"] == "expert"]
    assert len(experts) == sum(len(rects) for *_, rects in READINGS)  # one per drawn region
    assert all(a["iscrowd"] == 0 and len(a["segmentation"][0]) == 8 for a in experts)  # rectangles: polygons
    consensus = [a for a in coco["annotations"] if a["attributes"]["source"] == "consensus"]
    assert {a["attributes"]["reader"] for a in consensus} == set(ss.CONSENSUS_READERS)
    masks = {(r.image_id, r.reader): r.mask for r in result.data.readings}
    for a in consensus:
        key = (a["attributes"]["image_key"], a["attributes"]["reader"])
        assert np.array_equal(reports.rle_decode(a["segmentation"]), masks[key])
    assert [c["name"] for c in coco["categories"]] == ["consolidation", "consensus (any finding)",
                                                       "model heatmap (binarised)"]
    html = reports.to_html(report)
    assert 1 <= len(report.gallery) <= 4 and all(c.score.method == "gradcam" for c in report.gallery)
    for case in report.gallery:
        assert reports.case_uri(case) in html


def test_consensus_pseudo_readers_on_every_film_two_or_more_read(tmp_path):
    """Majority (a tie left out: two readers give the intersection) and STAPLE >= 0.5 of the film's readers."""
    from cxr_core.annotation import consensus

    own = build_study(f"sqlite:///{tmp_path / 'annotations.db'}")
    factory = own.factory()
    with factory.begin() as s:  # a third reader on img0 only
        dr_c = storage.add_reader(s, "Dr C", "sme").id
        storage.assign_reader(s, own.session_id, dr_c, shuffle=False)
        h, w = SIZES[0]
        storage.submit_annotation(s, reader_id=dr_c, image_sha=own.shas[0], session_id=own.session_id,
                                  diagnosis="Pneumonia", confidence=3,
                                  canvas_json={"objects": [rect(12, 8, 30, 30)]}, canvas_width=w, canvas_height=h,
                                  background_fit=ann.contain_fit(w, h, w, h), labels=["consolidation"])
        data = ss.read_session(s, "Blind 1")
        plain = ss.read_session(s, "Blind 1", with_consensus=False)
    by = {(r.image_id, r.reader): r for r in data.readings}
    c_maj, c_staple = ss.CONSENSUS_READERS
    assert data.readers == ["Dr A", "Dr B", "Dr C"] and data.consensus_readers == [c_maj, c_staple]
    assert not any(r.consensus for r in plain.readings) and len(plain.readings) == len(data.readings) - 6
    readers0 = [by[("img0.png", r)].mask for r in ("Dr A", "Dr B", "Dr C")]
    votes = np.sum(readers0, axis=0)
    np.testing.assert_array_equal(by[("img0.png", c_maj)].mask, votes >= 2)  # 2 of 3
    assert (votes == 1).any() and not by[("img0.png", c_maj)].mask[votes == 1].any()
    np.testing.assert_array_equal(by[("img0.png", c_staple)].mask, consensus.staple(np.stack(readers0)).mask())
    a, b = by[("img1.png", "Dr A")].mask, by[("img1.png", "Dr B")].mask
    np.testing.assert_array_equal(by[("img1.png", c_maj)].mask, a & b)  # 1 of 2 is a tie: left out
    # diagnosis: the strict majority (COVID-19 2 of 3 on img0), uncertain on a tie (img1: Pneumonia vs Tuberculosis)
    assert by[("img0.png", c_maj)].diagnosis == by[("img0.png", c_staple)].diagnosis == "COVID-19"
    assert by[("img1.png", c_maj)].diagnosis == by[("img2.png", c_staple)].diagnosis == storage.UNCERTAIN
    assert all(r.annotation_id is None and r.version == 0 for r in data.readings if r.consensus)
    pairs = ss.reader_pairs(data)  # readers are never compared with their own consensus
    assert {(p.reader_a, p.reader_b) for p in pairs} == {("Dr A", "Dr B"), ("Dr A", "Dr C"), ("Dr B", "Dr C")}
    assert ss.reader_pairs(data, {"Dr A", c_maj}) == []


def test_excluded_readings_are_in_no_number_and_counted(tmp_path):
    own = build_study(f"sqlite:///{tmp_path / 'annotations.db'}")
    factory = own.factory()
    with factory.begin() as s:
        before = ss.read_session(s, "Blind 1")
        dr_c = storage.add_reader(s, "Dr C", "sme").id
        storage.assign_reader(s, own.session_id, dr_c, shuffle=False)
        h, w = SIZES[1]
        storage.submit_annotation(s, reader_id=dr_c, image_sha=own.shas[1], session_id=own.session_id,
                                  exclusion="not readable", canvas_json={"objects": []}, canvas_width=w,
                                  canvas_height=h)
        first = storage.latest_annotation(s, reader_id=own.readers["Dr A"], image_sha=own.shas[2],
                                          session_id=own.session_id)
        storage.revise_annotation(s, first.id, exclusion="not a chest film")
        data = ss.read_session(s, "Blind 1")
    assert [(e.image_id, e.reader, e.reason) for e in data.excluded] == [
        ("img1.png", "Dr C", "not readable"), ("img2.png", "Dr A", "not a chest film")]
    readings = {(r.image_id, r.reader) for r in data.readings}
    assert ("img1.png", "Dr C") not in readings and ("img2.png", "Dr A") not in readings
    assert ("img2.png", ss.CONSENSUS_MAJORITY) not in readings  # one reader left on img2: no consensus
    old = {(r.image_id, r.reader): r.mask for r in before.readings}
    new = {(r.image_id, r.reader): r.mask for r in data.readings}
    np.testing.assert_array_equal(new[("img1.png", ss.CONSENSUS_STAPLE)], old[("img1.png", ss.CONSENSUS_STAPLE)])
    assert [p.image_id for p in ss.reader_pairs(data)] == ["img0.png", "img1.png"]
    assert data.unread == ()  # an excluded film was read
    assert ss.excluded_note(data.excluded) == (
        "2 readings excluded by readers (1 not a chest film, 1 not readable): left out of every number.")
    assert ss.excluded_note(()) == "No reading was excluded by its reader."


def coco_polygon_mask(polygon, shape) -> np.ndarray:
    """Pixels whose centre lies inside a COCO polygon (x, y in pixels, edges at integers), filled by OpenCV."""
    import cv2

    pts = np.round((np.asarray(polygon, float).reshape(-1, 2) - 0.5) * 256).astype(np.int32)  # 8 fraction bits
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=8)
    return out.astype(bool)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the mask's edge (where two fills of the same outline may differ)."""
    import cv2

    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)


def test_coco_has_one_annotation_per_drawn_region_that_decodes_back(tmp_path):
    """Polygon, rectangle, freehand and circle regions of several findings, a consensus and an exclusion."""
    from pycocotools.coco import COCO

    from cxr_core.annotation.masks import canvas_objects, region_masks
    from cxr_core.agreement.session_report import to_coco

    own = build_study(f"sqlite:///{tmp_path / 'annotations.db'}")
    h, w = SIZES[0]
    polygon = {"type": "Polygon", "points": [{"x": 5, "y": 40}, {"x": 30, "y": 35}, {"x": 22, "y": 66}],
               "left": 17.5, "top": 50.5, "width": 25, "height": 31, "originX": "center", "originY": "center",
               "strokeWidth": 3, "angle": 10}
    angles = np.linspace(0, 2 * np.pi, 21)
    pts = np.c_[60 + 12 * np.cos(angles), 50 + 12 * np.sin(angles)]
    freehand = {"type": "Path", "fill": None, "left": 60, "top": 50, "width": 24, "height": 24, "strokeWidth": 3,
                "path": [["M", *pts[0]]] + [["Q", *a, *(a + b) / 2] for a, b in zip(pts[:-1], pts[1:])]}
    circle = {"type": "Circle", "left": 50, "top": 5, "radius": 8, "originX": "left", "originY": "top",
              "strokeWidth": 3}
    fit = ann.contain_fit(w, h, 2 * w, 2 * h)  # the canvas showed the film twice as large
    scale = lambda o: {**o, "scaleX": 2, "scaleY": 2, "left": 2 * o["left"], "top": 2 * o["top"]}  # noqa: E731
    objects = [scale(o) for o in (polygon, rect(10, 10, 30, 30), freehand, circle)]
    labels = ["nodule/mass", "consolidation", "effusion", "consolidation"]
    factory = own.factory()
    with factory.begin() as s:
        dr_c = storage.add_reader(s, "Dr C", "sme").id
        storage.assign_reader(s, own.session_id, dr_c, shuffle=False)
        storage.submit_annotation(s, reader_id=dr_c, image_sha=own.shas[0], session_id=own.session_id,
                                  diagnosis="COVID-19", confidence=2, canvas_json={"objects": objects},
                                  canvas_width=2 * w, canvas_height=2 * h, background_fit=fit, labels=labels)
        storage.submit_annotation(s, reader_id=dr_c, image_sha=own.shas[1], session_id=own.session_id,
                                  exclusion="not a chest film", canvas_json={"objects": []}, canvas_width=w,
                                  canvas_height=h)
        data = ss.read_session(s, "Blind 1")
    path = tmp_path / "session.coco.json"
    path.write_text(to_coco(data))
    doc = json.loads(path.read_text())
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    assert list(cats.values()) == ["consolidation", "nodule/mass", "effusion", "consensus (any finding)"]
    images = {im["id"]: im for im in doc["images"]}
    img1 = next(im for im in images.values() if im["file_name"] == "img1.png")
    assert {"reader": "Dr C", "diagnosis": "excluded", "exclusion": "not a chest film"}.items() <= next(
        r for r in img1["attributes"]["readings"] if r["reader"] == "Dr C").items()

    expected = {}  # (image, reader, canvas index) -> (finding, mask) straight from the stored canvas
    for r in data.readings:
        if not r.consensus:
            objs = canvas_objects(r.canvas)
            stored = {x["index"]: x["label"] for x in r.regions}
            for reg in region_masks(objs, image_shape=r.mask.shape, background_fit=r.background_fit,
                                    labels=[stored.get(i) for i in range(len(objs))]):
                expected[(r.image_id, r.reader, reg.index)] = (reg.label, reg.mask)
    experts = [a for a in doc["annotations"] if a["attributes"]["source"] == "expert"]
    assert len(experts) == len(expected) == 6 + 4
    api = COCO(str(path))  # pycocotools reads it, and annToMask decodes each annotation
    kinds = {}
    for a in experts:
        at = a["attributes"]
        finding, mask = expected[(images[a["image_id"]]["file_name"], at["reader"], at["region_index"])]
        assert cats[a["category_id"]] == finding == at["finding"]
        assert a["area"] == mask.sum() and at["diagnosis"] in {"COVID-19", "Pneumonia", "Tuberculosis", "Normal"}
        rows, cols = np.nonzero(mask)
        assert a["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        decoded = api.annToMask(a).astype(bool)
        kinds[at["region_type"]] = a["iscrowd"]
        if a["iscrowd"]:  # RLE: exact
            np.testing.assert_array_equal(reports.rle_decode(a["segmentation"]), mask)
            np.testing.assert_array_equal(decoded, mask)
        else:  # polygon: the same outline, filled by two other rasterisers, differs at most on its edge
            for other in (decoded, coco_polygon_mask(a["segmentation"][0], mask.shape)):
                assert not ((other ^ mask) & ~boundary(mask)).any()
                assert (other & mask).sum() / (other | mask).sum() > 0.8
            np.testing.assert_array_equal(coco_polygon_mask(a["segmentation"][0], mask.shape)[mask & ~boundary(mask)],
                                          True)
    assert kinds == {"rect": 0, "polygon": 0, "path": 1, "circle": 1}
    dr_c_reading = next(a for a in experts if a["attributes"]["reader"] == "Dr C")["attributes"]
    assert (dr_c_reading["confidence"], dr_c_reading["diagnosis"]) == (2, "COVID-19")
    consensus = [a for a in doc["annotations"] if a["attributes"]["source"] == "consensus"]
    masks = {(r.image_id, r.reader): r.mask for r in data.readings}
    for a in consensus:
        np.testing.assert_array_equal(api.annToMask(a).astype(bool),
                                      masks[(images[a["image_id"]]["file_name"], a["attributes"]["reader"])])


def test_time_per_case_per_reader_and_session_in_the_reports(tmp_path):
    """Revisions made after record_shown are timed; first versions (no recorded start) are counted as untimed."""
    from datetime import datetime, timedelta, timezone
    from html.parser import HTMLParser

    from cxr_core.agreement.session_report import build_report, time_rows

    own = build_study(f"sqlite:///{tmp_path / 'annotations.db'}")
    took = {("Dr A", 0): 60.0, ("Dr A", 1): 120.0, ("Dr A", 2): 600.0, ("Dr B", 0): 300.0}
    factory = own.factory()
    for (reader, i), seconds in took.items():
        with factory.begin() as s:
            rid = own.readers[reader]
            storage.record_shown(s, reader_id=rid, image_sha=own.shas[i], session_id=own.session_id,
                                 now=datetime.now(timezone.utc) - timedelta(seconds=seconds))
            prev = storage.latest_annotation(s, reader_id=rid, image_sha=own.shas[i], session_id=own.session_id)
            storage.revise_annotation(s, prev.id, comment="looked again")
    with factory.begin() as s:
        data = ss.read_session(s, "Blind 1")
    rows = {r["reader"]: r for r in time_rows(data)}
    assert list(rows) == ["Dr A", "Dr B", None]  # per reader, then all readers of the session
    slack = 30  # the submission is stamped when saved: a few seconds after the recorded start on a busy machine
    for reader, wanted in (("Dr A", [60, 120, 600]), ("Dr B", [300]), (None, [60, 120, 600, 300])):
        q1, median, q3 = np.percentile(wanted, [25, 50, 75])
        row = rows[reader]
        assert row["n"] == len(wanted) and row["untimed"] == 3 * (1 if reader else 2)  # each first version
        assert row["median_s"] == pytest.approx(median, abs=slack) and row["q1_s"] == pytest.approx(q1, abs=slack)
        assert row["q3_s"] == pytest.approx(q3, abs=slack)
        assert row["iqr_s"] == pytest.approx(q3 - q1, abs=1e-9 + 2 * slack)
    assert rows["Dr A"]["median_s"] > 100 and rows["Dr A"]["iqr_s"] > 200  # the 600 s case widens the IQR

    report = build_report(data, [], [])
    payload = json.loads(reports.to_json(report))
    assert [(t["reader"], t["n"]) for t in payload["reading_times"]] == [("Dr A", 3), ("Dr B", 1), (None, 4)]
    assert payload["reading_times"][0]["median_s"] == pytest.approx(rows["Dr A"]["median_s"])
    text = list(csv.DictReader(io.StringIO(reports.times_csv(report.times))))
    assert [(r["reader"], r["n"], r["untimed"]) for r in text] == [("Dr A", "3", "3"), ("Dr B", "1", "3"),
                                                                   ("all readers", "4", "6")]
    assert float(text[2]["median_s"]) == pytest.approx(rows[None]["median_s"])

    cells = []

    class Cells(HTMLParser):
        def handle_data(self, d):
            cells.append(d)

    page = reports.to_html(report)
    Cells().feed(page[page.index("<h2>Time per case</h2>"):page.index("<h2>Distributions</h2>")])
    assert cells[cells.index("Dr A"):cells.index("Dr A") + 4] == [
        "Dr A", "3", "3", duration(rows["Dr A"]["median_s"])]
    assert "all readers" in cells
