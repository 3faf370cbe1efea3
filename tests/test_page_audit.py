"""The audit page under AppTest: a saved audit is shown with its shortcut flag, charts and gallery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import REPO
from cxr_core.audit import AuditReport, Flagged, ImageAudit, thumbnail, to_json

TIMEOUT = 120


def saved_audit() -> dict:
    """Normal puts ~80% of its heatmap mass outside the lungs, COVID-19 ~20%: a shortcut."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(12):
        cls = "Normal" if i % 2 else "COVID-19"
        out = float(np.clip(rng.normal(0.8 if cls == "Normal" else 0.2, 0.05), 0, 1))
        shares = {"border": 0.1, "top_left": 0.0, "top_right": 0.0, "bottom_left": 0.0, "bottom_right": 0.0,
                  "markers": 0.05, "outside_lungs": out}
        images.append(ImageAudit(f"/data/{cls}_{i}.png", cls, f"p{i}", cls, 0.9, shares,
                                 {**{k: 0.1 for k in shares}, "outside_lungs": 0.65}, [], "estimate"))
    pixels = np.full((80, 80), 0.4, np.float32)
    heat = np.zeros((80, 80), np.float32)
    heat[:20, :20] = 1
    lungs = np.zeros((80, 80), bool)
    lungs[20:60, 15:65] = True
    flagged = [Flagged("/data/Normal_1.png", "Normal", "Normal", 0.9, 0.65, "", thumbnail(pixels, heat, lungs, []))]
    report = AuditReport("demo", ["COVID-19", "Normal"], images, flagged, {"mask_markers": False, "shortcut_margin": 0.15})
    return json.loads(json.dumps(to_json(report, n_boot=200)))


def test_a_loaded_audit_shows_the_shortcut_the_chart_and_the_gallery():
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="Researcher R", role="researcher")
    at.session_state["audit_report"] = saved_audit()
    at.switch_page("pages/audit.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Dataset audit"
    assert any("not diagnoses" in c.value for c in at.caption)
    errors = [e.value for e in at.error]
    assert [e.split(" put ")[0] for e in errors] == [
        "Possible shortcut: images predicted Normal", "Possible shortcut: images labelled Normal"]
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    bars = chart["data"][0]
    assert bars["x"] == ["COVID-19", "Normal"] and bars["y"][1] > 0.7 > 0.3 > bars["y"][0]
    assert chart["data"][1]["y"] == pytest.approx([0.65, 0.65])  # the even-spread reference
    assert len(at.get("image")) == 1
    assert any("90% outside the lungs" in c.value for c in at.caption)
    at.selectbox(key="audit_region").set_value("border").run()
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["data"][0]["y"] == pytest.approx([0.1, 0.1])


def test_running_an_audit_from_the_page(use_registry, tmp_path, monkeypatch):
    import os
    import shutil

    fix = REPO / "tests" / "fixtures" / "audit"
    for name in ("hannover_21982772.png", "hannover_4fed5061.png", "hannover_61bc50d1.png", "nih14_00030006_002.png"):
        shutil.copy(fix / name, tmp_path / name)  # a plain folder of images, unlabelled
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "hannover_00_noise.png")  # not a chest film, sorted first
    monkeypatch.setenv("CXR_IMPORT_ROOTS", f"{tmp_path}{os.pathsep}{fix}")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    login(at, name="Researcher R", role="researcher")
    at.run()
    at.switch_page("pages/audit.py").run()
    at.selectbox[0].set_value("tiny-effnet")
    at.text_input[0].set_value(str(tmp_path))
    at.text_input[1].set_value(str(fix))
    at.number_input[0].set_value(4)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    report = at.session_state["audit_report"]
    assert report["model"] == "tiny-effnet" and report["n_images"] == 3
    [refused] = report["refused"]  # refused by the one analysis path, listed with its reasons, never scored
    assert refused["file"].endswith("hannover_00_noise.png") and "looks like noise" in refused["reasons"][0]
    [listed] = [e for e in at.expander if e.label.startswith("Not analysed (1)")]
    assert "high-frequency energy" in listed.dataframe[0].value.to_dict("records")[0]["details"]
    assert {im["lung_source"] for im in report["images"]} == {"expert"}  # 3 hannover films with masks
    assert at.header[0].value == "tiny-effnet: 3 images"


def run_on(at: AppTest, data: str, masks: str = "") -> AppTest:
    at.text_input[0].set_value(data)
    at.text_input[1].set_value(masks)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [x.value for x in at.text_input] == [data, masks], [x.value for x in at.text_input]
    return at


def open_audit() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="Researcher R", role="researcher")
    at.run()
    return at.switch_page("pages/audit.py").run()


def test_server_folders_only_under_the_import_roots(use_registry, tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("file,label\nJane Doe 1970-01-01.png,Normal\n")
    (root / "manifest.csv").write_text(f"file,label\n{outside / 'secret.png'},Normal\n")
    (outside / "secret.png").write_bytes((REPO / "tests" / "fixtures" / "audit" / "hannover_21982772.png").read_bytes())
    (root / "notes.csv").write_text("name,birth\nJane Doe,1970-01-01\n")
    monkeypatch.delenv("CXR_IMPORT_ROOTS", raising=False)
    at = open_audit()
    run_on(at, str(root))
    assert "no import root is configured" in at.error[0].value and "audit_report" not in at.session_state

    monkeypatch.setenv("CXR_IMPORT_ROOTS", str(root))  # read by the server at start (the help text names it)
    at = open_audit()
    for data, masks in ((str(outside), ""), (str(root / ".." / "private"), ""), (str(root), str(outside)),
                        (str(root / "manifest.csv"), "")):  # the last names a film outside the root
        run_on(at, data, masks)
        assert "outside the folders this server may read" in at.error[0].value, (data, at.error[0].value)
    run_on(at, str(root / "notes.csv"))  # inside a root, but not a dataset: refused without quoting it
    message = at.error[0].value
    assert "not a dataset CXR Review can read" in message and "Jane" not in message and "birth" not in message
    assert "audit_report" not in at.session_state
