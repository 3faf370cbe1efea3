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
from cxr_core import agreement, reports, storage
from cxr_core import annotation as ann
from cxr_core import session_scores as ss

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
    from cxr_core.manifest import list_models

    return {e.name: ss.ModelRef.from_card(e.card) for e in list_models(registry)}


def engine_loader(registry: Path, name: str):
    def load():
        from cxr_core.cam import CamEngine
        from cxr_core.manifest import load_model

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
    assert [(r.image_id, r.reader) for r in data.readings] == [
        ("img0.png", "Dr A"), ("img0.png", "Dr B"), ("img1.png", "Dr A"), ("img1.png", "Dr B"),
        ("img2.png", "Dr A"), ("img2.png", "Dr B")]
    revised = data.readings[2]
    assert (revised.diagnosis, revised.version) == ("COVID-19", 2)
    assert revised.mask.shape == SIZES[1] and revised.mask[21:61, 41:71].all() and revised.mask.sum() == 30 * 40
    assert data.readers == ["Dr A", "Dr B"] and data.hidden == () and data.unread == ()
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
    # the expert's classes for img1 (Pneumonia from Dr A, Tuberculosis from Dr B), each with its baseline
    assert effnet == {(m, t) for m in ("gradcam", "random") for t in ("Pneumonia", "Tuberculosis")}
    assert all(r.model_checksum == refs["tiny-effnet"].checksum for r in results if r.model_name == "tiny-effnet")
    grid = storage.result_heatmap(results[0])
    assert grid.dtype == np.float32 and grid.shape == (2, 2)  # the CAM grid of a 64-pixel EfficientNet
    with factory.begin() as s:
        resnet = ss.load_pairs(s, data, refs["tiny-resnet-3class"], "gradcam")
    tb = [k for k in resnet.keys if k.target == "Tuberculosis"]
    assert len(tb) == 1 and tb[0].explained == tb[0].predicted  # the 3-class model has no TB: its top class
    assert resnet.missing == 0 and len(resnet.keys) == len(READINGS)


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
    predicted = [k.predicted for k in pairs.keys]
    assert kappa.matrix.sum(axis=0).tolist() == [predicted.count(c) for c in kappa.labels]
    assert ss.diagnosis(pairs, lambda k: k.reader == "Dr A").n == 3


def test_session_report_matches_agree_and_parses_back(study, tiny_registry, tmp_path, capsys):
    """Done when: the exported per-image numbers equal ``agree`` on each heatmap/mask pair."""
    from cxr_core.cli import main

    refs = model_refs(tiny_registry)
    models = [(refs["tiny-effnet"], engine_loader(tiny_registry, "tiny-effnet"))]
    from cxr_core.session_report import session_report

    result = session_report(study.factory(), "Blind 1", models, reader="Researcher", threshold="top25%",
                               compute=False, gallery=2)
    report = result.report
    assert {(s.method, s.reader) for s in report.scores} == {(m, r) for m in ("gradcam", "random")
                                                           for r in ("Dr A", "Dr B")}
    rows = list(csv.DictReader(io.StringIO(reports.to_csv(report.scores))))
    assert len(rows) == 2 * len(READINGS)
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
    assert len(payload["meta"]["readings"]) == len(READINGS) and payload["meta"]["hidden_images"] == 0
    assert payload["diagnosis"]["n"] == len(READINGS) and payload["method"]["thresholds"] == ["top25%"]
    assert any(g["normal"] for g in payload["groups"]) and len(payload["reader_pairs"]) == 3

    coco = json.loads(result.coco())
    experts = [a for a in coco["annotations"] if a["attributes"]["source"] == "expert"]
    assert len(experts) == len(READINGS) - 1  # Dr A's Normal reading has an empty mask
    masks = {(r.image_id, r.reader): r.mask for r in result.data.readings}
    for a in experts:
        key = (a["attributes"]["image_key"], a["attributes"]["reader"])
        assert np.array_equal(reports.rle_decode(a["segmentation"]), masks[key])
    assert {c["name"] for c in coco["categories"]} == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}

    html = reports.to_html(report)
    assert 1 <= len(report.gallery) <= 4 and all(c.score.method == "gradcam" for c in report.gallery)
    for case in report.gallery:
        assert reports.case_uri(case) in html
