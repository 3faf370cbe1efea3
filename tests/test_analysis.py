"""One analysis path: the shipped demo model on real chest films and on a retina photograph, a photograph, a CT,
an MR and a film turned on its side. The function refuses what is not a frontal chest film in plain words with
the figures apart, and the CLI ``predict``, the dataset audit and the session report give the same refusals
and the same scores for the same film."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import skimage.data
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import FIXTURES, REPO
from cxr_core.safety.warnings import MAX_SQUARE_ASPECT, film_warnings

DEMO = "demo-efficientnetv2b0"
CHEST = [REPO / "data" / "samples" / "covid_hannover_0957ce54.png",
         REPO / "data" / "samples" / "pneumonia_kermany224_person109_bacteria_513.png",
         FIXTURES / "ood" / "covid_hannover_e9877113.png"]  # the real film with the lowest chest-layout score
#: Non-chest inputs and words their plain reasons must contain.
REFUSED = {
    "retina.png": "colour picture",
    "camera.png": "does not look like a frontal chest film",
    "sideways.png": "does not look like a frontal chest film",
    "ct.dcm": "CT image, not a plain X-ray",
    "mr.dcm": "MR image, not a plain X-ray",
}
#: Grayscale files whose stored pixels are all they carry: a session screens them as the file is screened.
STORABLE = ("camera.png", "sideways.png")

pytestmark = pytest.mark.skipif(not (REPO / "weights" / DEMO / "model.keras").exists(),
                                reason="the demo model's weights are not in this checkout")


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    folder = tmp_path_factory.mktemp("films")
    Image.fromarray(skimage.data.retina()).save(folder / "retina.png")
    Image.fromarray(skimage.data.camera()).save(folder / "camera.png")
    Image.fromarray(np.rot90(np.asarray(Image.open(CHEST[0]).convert("L")))).save(folder / "sideways.png")
    shutil.copyfile(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copyfile(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    return {**{p.name: p for p in CHEST}, **{name: folder / name for name in REFUSED}}


@pytest.fixture(scope="module")
def demo():
    from cxr_core.models.manifest import load_model
    from cxr_core.models.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    return load_model(DEMO, REPO / "weights")


@pytest.fixture(scope="module")
def direct(demo, films):
    """The function itself, once, on every film (Grad-CAM asked)."""
    from cxr_core.analysis import analyse_films

    return dict(zip(films, analyse_films(demo, list(films.values()), method="gradcam")))


@pytest.fixture
def repo_weights(monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(REPO / "weights"))


def test_real_films_are_analysed_and_the_rest_refused_in_plain_words(direct, films):
    for path in CHEST:
        result = direct[path.name]
        assert not result.refused and result.reasons == () and result.analysed, (path.name, result.reasons)
        assert result.prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        heat = result.cam.heatmap
        assert heat.shape == np.asarray(Image.open(path)).shape[:2] and 0 <= heat.min() and heat.max() <= 1
        assert result.cam.target == result.prediction.predicted
        assert [w.kind for w in result.warnings][:2] == ["demo", "missing_classes"]  # the demo model has 3 classes
    for name, words in REFUSED.items():
        result = direct[name]
        assert result.refused and not result.analysed and result.cam is None, name
        assert any(words in r for r in result.reasons), (name, result.reasons)
        assert len(result.details) == len(result.reasons) and all(result.details), result.details
        assert not any(ch.isdigit() for r in result.reasons for ch in r)  # figures live in details only
        record = result.record()
        assert record["analysed"] is False and "probabilities" not in record
        assert record["ood"]["reasons"] == list(result.reasons) and record["ood"]["details"] == list(result.details)
    assert any("colourfulness" in d for d in direct["retina.png"].details)
    assert any(d.startswith("DICOM Modality CT") for d in direct["ct.dcm"].details)


def test_one_film_gets_the_batchs_answer_and_an_override_scores_a_refused_film(demo, direct, films):
    from cxr_core.analysis import analyse

    one = analyse(demo, films[CHEST[1].name])
    assert one.cam is None and one.prediction.predicted == direct[CHEST[1].name].prediction.predicted
    np.testing.assert_allclose(one.prediction.probabilities, direct[CHEST[1].name].prediction.probabilities,
                               atol=1e-6)
    forced = analyse(demo, films["camera.png"], allow_ood=True)
    assert forced.overridden and not forced.refused and forced.analysed
    assert forced.reasons == direct["camera.png"].reasons  # the refusal is kept beside the scores


def test_cli_predict_gives_the_functions_refusals_and_scores(repo_weights, direct, films, capsys):
    from cxr_core.cli import main

    assert main(["predict", "--keep-names", *map(str, films.values()), "--model", DEMO, "--json"]) == 2
    captured = capsys.readouterr()
    records = {json.loads(line)["file"]: json.loads(line) for line in captured.out.splitlines()}
    for name, path in films.items():
        record, result = records[str(path)], direct[name]
        assert record["ood"]["reasons"] == list(result.reasons) and record["ood"]["details"] == list(result.details)
        if result.refused:
            assert record["analysed"] is False and f"{path}: {result.refusal_message()}" in captured.err
        else:
            assert record["predicted"] == result.prediction.predicted
            assert list(record["probabilities"].values()) == pytest.approx(list(result.prediction.probabilities),
                                                                           abs=1e-6)
            assert [w["text"] for w in record["warnings"]] == [w.text for w in result.warnings]


def test_the_audit_lists_refused_films_with_the_functions_reasons_and_scores_the_rest_alike(demo, direct, films):
    from cxr_core.analysis import cam_engine
    from cxr_core.audit import AuditItem, from_json, run_audit, to_json

    report = run_audit(cam_engine(demo), [AuditItem(p) for p in films.values()], loaded=demo, model_name=DEMO,
                       batch_size=8, workers=1, lung_masks=FIXTURES / "lung_masks")
    by_file = {im.file: im for im in report.images}
    assert set(by_file) == {str(p) for p in CHEST}  # no refused film is scored
    for path in CHEST:
        result = direct[path.name]
        assert by_file[str(path)].predicted == result.prediction.predicted
        assert by_file[str(path)].confidence == pytest.approx(result.prediction.confidence, abs=1e-6)
    refused = {r["file"]: r for r in report.refused}
    assert set(refused) == {str(films[n]) for n in REFUSED}
    for name in REFUSED:
        row = refused[str(films[name])]
        assert row["reasons"] == list(direct[name].reasons) and row["details"] == list(direct[name].details)
    data = to_json(report, n_boot=50)
    assert data["n_refused"] == len(REFUSED) and data["n_images"] == len(CHEST)
    assert from_json(json.loads(json.dumps(data))).refused == report.refused
    from cxr_core.audit.report import render_html

    page = render_html(data)
    assert "<h2>Not analysed</h2>" in page and f"{len(CHEST)} images audited, {len(REFUSED)} not analysed" in page
    assert all(d in page for n in REFUSED for d in direct[n].details)


def test_the_session_report_refuses_the_same_films_and_stores_the_same_scores(demo, direct, films, tmp_path):
    from cxr_core import annotation as ann
    from cxr_core import storage
    from cxr_core.agreement import reports
    from cxr_core.agreement.session_report import session_report
    from cxr_core.agreement.session_scores import ModelRef
    from cxr_core.analysis import cam_engine, screen_films
    from cxr_core.io.film_facts import film_label
    from cxr_core.io.imaging import load_xray
    from sqlalchemy import select

    factory = storage.session_factory(storage.make_engine(f"sqlite:///{tmp_path / 'annotations.db'}"))
    names = [p.name for p in CHEST] + list(STORABLE)
    with factory.begin() as s:
        admin = storage.add_reader(s, "Admin", "admin").id
        reader = storage.add_reader(s, "Dr A", "sme").id
        shas = [storage.add_xray(s, load_xray(films[n])).sha256 for n in names]
        session = storage.create_session(s, name="Mixed", image_shas=shas, reader_ids=[reader], created_by=admin,
                                         blind=False, shuffle=False)
        for sha in shas:
            h, w = storage.load_pixels(s, sha).shape
            storage.submit_annotation(
                s, reader_id=reader, image_sha=sha, session_id=session.id, diagnosis="COVID-19", confidence=3,
                canvas_json={"objects": [{"type": "Rect", "left": w // 4, "top": h // 4, "width": w // 3,
                                          "height": h // 3, "originX": "left", "originY": "top", "strokeWidth": 0}]},
                canvas_width=w, canvas_height=h, background_fit=ann.contain_fit(w, h, w, h), labels=["consolidation"])
    result = session_report(factory, "Mixed", [(ModelRef.from_card(demo.card), lambda: cam_engine(demo))],
                            screens={DEMO: lambda xrays: screen_films(demo, xrays)}, gallery=0)
    label = {n: film_label(sha) for n, sha in zip(names, shas)}  # films are named by label, never file name
    by_id = {label[n]: direct[n] for n in STORABLE}
    refused = {r["image_id"]: r for r in result.report.refused}
    assert set(refused) == set(by_id)
    for name in STORABLE:
        assert refused[label[name]]["reasons"] == list(direct[name].reasons)
        assert refused[label[name]]["details"] == list(direct[name].details)
    assert {s.image_id for s in result.report.scores} == {label[p.name] for p in CHEST}
    exported = {r["image_id"]: r for r in json.loads(reports.to_json(result.report))["refused"]}
    assert {n: exported[n]["details"] for n in exported} == {n: list(d.details) for n, d in by_id.items()}
    rows = [r for r in csv.DictReader(io.StringIO(reports.to_csv(result.report.scores, result.report.excluded,
                                                                  result.report.refused))) if r["not_analysed"]]
    assert sorted(r["image_id"] for r in rows) == sorted(by_id)
    assert all(f"{by_id[r['image_id']].reasons[0]} ({by_id[r['image_id']].details[0]})" in r["not_analysed"]
               for r in rows)
    page = reports.to_html(result.report)
    assert all(d in page for n in STORABLE for d in direct[n].details)
    with factory.begin() as s:
        stored = {r.image_sha: dict(r.probabilities) for r in s.scalars(select(storage.ModelResult))}
    for name, sha in zip(names, shas):
        if name in STORABLE:
            assert sha not in stored  # a refused film gets no heatmap and no score
        else:
            probabilities = stored[sha]
            assert [probabilities[c] for c in demo.card.classes] == pytest.approx(
                list(direct[name].prediction.probabilities), abs=1e-6)


def test_warnings_have_one_aspect_limit_and_plain_words_with_figures_apart(demo):
    from cxr_core.io.imaging import XRay, pixel_sha256

    def film(h, w):
        pixels = np.full((h, w), 0.5, np.float32)
        return XRay(pixels, "png", 8, pixel_sha256(pixels))

    wide = int(400 * MAX_SQUARE_ASPECT) + 4
    kinds = [w.kind for w in film_warnings(film(400, wide), demo.card)]
    assert "shape" in kinds and "shape" not in [w.kind for w in film_warnings(film(400, 560), demo.card)]
    small = next(w for w in film_warnings(film(100, 100), demo.card) if w.kind == "small")
    assert small.details == f"100x100 pixels, model input {demo.card.input_size}x{demo.card.input_size}"
    assert not any(ch.isdigit() for ch in small.text)
    missing = next(w for w in film_warnings(film(400, 400), demo.card) if w.kind == "missing_classes")
    assert "no output for **Tuberculosis**" in missing.markdown() and "**" not in missing.plain()
