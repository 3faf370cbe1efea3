"""The review page under AppTest, with the tiny registered models of conftest.py.

Each test drives the real app.py (st.navigation, banner, review page as default) in-process.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import FIXTURES, REPO
from dicom_factory import make_dicom

TIMEOUT = 300  # first run imports TensorFlow and traces the CAM step; 2 cores are shared


def start(**session) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    for key, value in session.items():
        at.session_state[key] = value
    return at.run()


def upload(at: AppTest, *files: tuple[str, bytes, str]) -> AppTest:
    at.file_uploader(key="review_uploads").set_value(list(files)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figure specs by the key the page gave them."""
    # element ids read "$$ID-<hash>-<key>"
    return {c.proto.id.split("-", 2)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def bars(spec: dict) -> dict[str, float]:
    trace = spec["data"][0]
    return dict(zip(trace["y"], trace["x"]))


def captions(at: AppTest) -> list[str]:
    return [c for img in at.get("image") for c in img.captions]


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def png(name: str) -> tuple[str, bytes, str]:
    return (name, (FIXTURES / "cxr" / name).read_bytes(), "image/png")


CHEST = "covid_hannover_b343e657.png"


def main_chart(at: AppTest) -> dict:
    found = [s for s in charts(at).values() if s["layout"]["title"]["text"] == "Model scores for this image"]
    assert len(found) == 1, list(charts(at))
    return found[0]


def test_banner_and_prompt_without_images(use_registry):
    at = start()
    assert not at.exception
    assert any("Model scores are not diagnoses" in w for w in texts(at, "warning"))
    assert at.title[0].value == "Review X-rays"
    assert any("Upload one or more chest X-rays" in i for i in texts(at, "info"))
    assert not charts(at)


def test_png_upload_shows_sorted_scores_and_overlay(use_registry):
    at = upload(start(), png(CHEST))
    spec = main_chart(at)
    scores = bars(spec)
    assert set(scores) == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}  # tiny-effnet, first in the registry
    values = list(scores.values())
    assert values == sorted(values)  # ascending, so the top score is drawn on top
    assert sum(values) == pytest.approx(100.0, abs=1e-3)  # percentages
    colours = spec["data"][0]["marker"]["color"]
    assert colours[-1] != colours[0]  # the top class is highlighted
    top = spec["data"][0]["y"][-1]
    assert "diagnosis" in spec["layout"]["xaxis"]["title"]["text"]  # "model score (%), not a diagnosis"
    assert any(m.startswith("Top model score: **" + top) for m in texts(at, "markdown"))
    caps = captions(at)
    assert any(c == CHEST for c in caps)  # the thumbnail
    if not any(f"No positive evidence for {top}" in i for i in texts(at, "info")):
        assert f"Grad-CAM for {top} overlay" in caps
        assert any("relative within this image" in c for c in caps)
    labels = [b.label for b in at.get("download_button")]
    assert "Download result (JSON)" in labels


def test_dicom_upload_shows_metadata_and_scores(use_registry):
    pixels = np.asarray(Image.open(FIXTURES / "cxr" / CHEST).convert("L"))
    dcm = make_dicom(pixels.astype(np.uint8))
    at = upload(start(), ("chest.dcm", dcm, "application/dicom"))
    assert set(bars(main_chart(at))) == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}
    expander = [e for e in at.expander if e.label == "DICOM details (non-identifying)"]
    assert expander, [e.label for e in at.expander]
    table = expander[0].get("table")[0].proto
    shown = str(table)
    for value in ("DX", "PA", "Acme Imaging", "0.139 x 0.143 mm", f"{pixels.shape[1]} x {pixels.shape[0]} pixels"):
        assert value in shown
    page = str(at._tree)
    for secret in ("Doe^Jane", "SYN-PID-4711", "St Elsewhere"):
        assert secret not in page


def test_corrupt_file_shows_its_error_and_the_other_file_still_works(use_registry):
    at = upload(start(), ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "image/png"), png(CHEST),
                ("notes.txt", b"hello", "text/plain"))
    errors = texts(at, "error")
    assert any("**broken.png** could not be read" in e and "PNG data" in e for e in errors), errors
    assert any("**notes.txt** could not be read" in e and "PNG, JPEG, TIFF or DICOM" in e for e in errors), errors
    assert at.radio(key="review_selected").options == [CHEST]
    assert "Images (1 readable of 3)" in [h.value for h in at.subheader]
    assert main_chart(at)  # the good file is analysed


def cam_targets(model: str, method: str) -> tuple[list[str], list[str]]:
    """(classes with a heatmap, classes with no positive evidence) of a tiny model for the CHEST film."""
    import ui_state
    from cxr_core.imaging import load_xray

    entry = [e for e in ui_state.registry() if e.name == model][0]
    engine, _ = ui_state._cam_engine(ui_state._weights_key(), entry.name, entry.card.sha256)
    xray = load_xray(FIXTURES / "cxr" / CHEST)
    zero = {c: engine.run([xray], method=method, target=c)[0].all_zero for c in engine.classes}
    return [c for c, z in zero.items() if not z], [c for c, z in zero.items() if z]


def image_url(at: AppTest, caption: str) -> str:
    return [img.value[0] for img in at.get("image") if img.captions == [caption]][0]


def test_switch_model_target_method_and_view(use_registry):
    at = upload(start(), png(CHEST))
    at.selectbox(key="review_model").set_value("tiny-resnet-3class").run()
    assert not at.exception
    assert set(bars(main_chart(at))) == {"COVID-19", "Normal", "Pneumonia"}
    assert any("no output for **Tuberculosis**" in w for w in texts(at, "warning"))
    target = at.selectbox(key="review_target::tiny-resnet-3class")
    assert target.options == ["the top-scoring class", "COVID-19", "Normal", "Pneumonia"]
    hot, _ = cam_targets("tiny-resnet-3class", "gradcam++")
    assert hot, "a ReLU'd Grad-CAM++ map of a random ResNet50 is empty for every class"
    target.set_value(hot[0])
    at.radio(key="review_method").set_value("gradcam++").run()
    assert not at.exception
    label = f"Grad-CAM++ for {hot[0]}"
    assert f"{label} overlay" in captions(at)
    turbo = image_url(at, f"{label} overlay")
    at.selectbox(key="review_colormap").set_value("gray").run()
    assert image_url(at, f"{label} overlay") != turbo  # the colour map is applied
    at.radio(key="review_view").set_value("Otsu outline").run()
    assert f"{label}: outline of the Otsu region" in captions(at)
    at.radio(key="review_view").set_value("Side by side").run()
    assert CHEST in captions(at) and f"{label} overlay" in captions(at)
    at.radio(key="review_view").set_value("Original").run()
    assert f"{CHEST} (heatmap hidden)" in captions(at)
    assert not any(c.endswith("overlay") for c in captions(at))
    assert bars(main_chart(at))  # the scores stay whatever the view


def test_no_positive_evidence_is_said_in_words(use_registry):
    hot, zero = cam_targets("tiny-effnet", "gradcam")
    at = upload(start(), png(CHEST))
    for cls in zero:  # a target whose ReLU'd map is empty: no heatmap, a sentence instead
        at.selectbox(key="review_target::tiny-effnet").set_value(cls).run()
        assert any(i.startswith(f"No positive evidence for {cls}") for i in texts(at, "info"))
        assert not any("overlay" in c for c in captions(at))
        assert "Download overlay (PNG, full size)" not in [b.label for b in at.get("download_button")]
    at.selectbox(key="review_target::tiny-effnet").set_value(hot[0]).run()
    assert f"Grad-CAM for {hot[0]} overlay" in captions(at)
    assert not any(i.startswith("No positive evidence") for i in texts(at, "info"))
    assert "Download overlay (PNG, full size)" in [b.label for b in at.get("download_button")]


def test_compare_models_shows_every_installed_model(use_registry):
    at = upload(start(), png(CHEST))
    at.toggle(key="review_compare").set_value(True).run()
    assert not at.exception
    titles = {s["layout"]["title"]["text"]: bars(s) for s in charts(at).values()}
    assert set(titles["Model scores: tiny-effnet"]) == {"COVID-19", "Normal", "Pneumonia", "Tuberculosis"}
    assert set(titles["Model scores: tiny-resnet-3class"]) == {"COVID-19", "Normal", "Pneumonia"}
    assert titles["Model scores: tiny-effnet"] == pytest.approx(bars(main_chart(at)))  # same model, same image
    compared = [c for c in captions(at) if c.startswith(("tiny-effnet:", "tiny-resnet-3class:"))]
    infos = [i for i in texts(at, "info") if i.startswith("No positive evidence")]
    assert len(compared) + len(infos) == 2


def test_hook_hides_every_score_and_heatmap(use_registry, monkeypatch):
    import ui_state

    hidden = (False, "Blind session: annotate this image first.")
    monkeypatch.setattr(ui_state, "model_output_allowed", lambda sha: hidden)
    at = upload(start(), png(CHEST))
    at.toggle(key="review_compare").set_value(True).run()
    assert not charts(at)
    assert texts(at, "info").count("Blind session: annotate this image first.") == 2
    assert not [b for b in at.get("download_button")]
    assert f"{CHEST} (model output hidden)" in captions(at)


def test_odd_shape_and_missing_models_are_explained(use_registry):
    wide = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).uniform(0, 255, (100, 300))).astype(np.uint8)).save(wide, "PNG")
    at = upload(start(), ("wide.png", wide.getvalue(), "image/png"))
    assert any("oddly shaped for a chest film (aspect ratio 3.00)" in w for w in texts(at, "warning"))
    other = [e for e in at.expander if e.label.startswith("Models not installed")][0]
    notes = " ".join(m.value for m in other.markdown)
    for name in ("VGG16", "Xception"):  # the tiny models are an EfficientNetV2B0 and a ResNet50
        assert f"**{name}**: not installed" in notes
    assert "python -m cxr_core train --arch vgg16" in notes and "import-model" in notes
    assert "EfficientNetV2B0" not in notes and "ResNet50" not in notes


def test_demo_model_is_the_default_and_an_unavailable_heatmap_is_explained(tiny_registry, tmp_path, monkeypatch):
    from cxr_core.manifest import read_card, write_card

    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry / "tiny-effnet", weights / "tiny-effnet")  # listed, never loaded here
    folder = weights / "zz-demo-no-cam"
    shutil.copytree(tiny_registry / "tiny-resnet-3class", folder)
    card = read_card(folder)
    card.name, card.demo, card.last_conv_layer = "zz-demo-no-cam", True, "no_such_layer"
    card.intended_use = "demonstration of the review workflow, not clinical use"
    write_card(folder, card)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    at = upload(start(), png(CHEST))
    assert at.selectbox(key="review_model").value == "zz-demo-no-cam"  # demo first, whatever its name
    assert set(bars(main_chart(at))) == {"COVID-19", "Normal", "Pneumonia"}
    warnings = texts(at, "warning")
    assert any("**zz-demo-no-cam is a demonstration model** (demonstration of the review" in w for w in warnings)
    assert any(w.startswith("heatmap unavailable for this model:") and "no_such_layer" in w for w in warnings)
    assert not any("overlay" in c for c in captions(at))
    assert [b.label for b in at.get("download_button")] == ["Download result (JSON)"]


def test_no_model_installed_says_how_to_get_one():
    at = upload(start(), png(CHEST))
    assert any("No model is installed" in e and "make demo-model" in e for e in texts(at, "error"))
    assert not charts(at)


def test_bundled_sample_can_be_reviewed(use_registry, tmp_path, monkeypatch):
    from cxr_core import config

    shutil.copy(FIXTURES / "cxr" / CHEST, tmp_path / CHEST)
    (tmp_path / "samples.json").write_text(json.dumps([
        {"file": CHEST, "label": "COVID-19", "source": "hannover", "license": "CC BY 3.0", "attribution": "MHH"},
        {"file": "gone.png", "label": "Normal"},  # listed but absent: not offered
    ]))
    monkeypatch.setattr(config.Settings, "samples_dir", property(lambda self: tmp_path))
    at = start()
    picker = at.multiselect(key="review_samples")
    assert picker.options == [f"{CHEST} (labelled COVID-19)"]
    picker.set_value([CHEST]).run()
    assert not at.exception
    assert main_chart(at)
    assert "hannover; CC BY 3.0; MHH" in str(at.expander[-1].get("table")[0].proto) or any(
        "hannover; CC BY 3.0; MHH" in str(t.proto) for t in at.get("table"))


def test_downloads_have_the_cli_fields_and_the_original_size(use_registry):
    """The JSON download carries the CLI's fields (file, model, scores, cam); the PNG is at the film's size."""
    import ui_state
    from cxr_core.imaging import load_xray

    entry = [e for e in ui_state.registry() if e.name == "tiny-effnet"][0]
    xray = load_xray(FIXTURES / "cxr" / CHEST)
    item = ui_state.Item("k", CHEST, xray, display=xray.pixels[::4, ::4])
    analysis = ui_state.analyse(entry, item, "gradcam++", "Normal")
    assert analysis.cam.heatmap.shape == item.display.shape  # kept at display size
    record = ui_state.result_record(item, entry, analysis)
    json.dumps(record)
    cli_fields = {"file", "model", "classes", "probabilities", "raw_probabilities", "temperature", "predicted", "cam"}
    assert cli_fields <= set(record)
    assert record["file"] == CHEST and record["model"] == "tiny-effnet"
    assert record["cam"]["method"] == "gradcam++" and record["cam"]["target"] == "Normal"
    assert record["image_sha256"] == xray.sha256
    png_bytes = ui_state.full_size_overlay_png(item, analysis, "turbo", 0.4, outline=True)()
    picture = Image.open(io.BytesIO(png_bytes))
    assert picture.mode == "RGB" and picture.size == (xray.shape[1], xray.shape[0])  # the original size
