"""The review page under AppTest, with the tiny registered models of conftest.py.

Each test drives the real app.py (st.navigation, banner, review page as default) in-process.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import FIXTURES, REPO
from cxr_core.explain.overlay import legend_band
from dicom_factory import make_dicom

TIMEOUT = 300  # first run imports TensorFlow and traces the CAM step; 2 cores are shared


def start(**session) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="Reviewer R", role="reviewer")
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


def warnings_box(at: AppTest) -> tuple[str, list[str]]:
    """(label, bullet lines) of the one "Warnings (N)" expander of the film under review."""
    found = [e for e in at.expander if e.label.startswith("Warnings (")]
    assert len(found) == 1, [e.label for e in at.expander]
    lines = [line[2:] for m in found[0].markdown for line in m.value.splitlines() if line.startswith("- ")]
    return found[0].label, lines


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
        assert any("relative within this film" in c for c in caps)  # the legend
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
    assert any("**broken\\.png** could not be read" in e and "PNG data" in e for e in errors), errors  # name escaped
    assert any("**notes\\.txt** could not be read" in e and "PNG, JPEG, TIFF or DICOM" in e for e in errors), errors
    assert at.radio(key="review_selected").options == [CHEST]
    assert "Images (1 readable of 3)" in [h.value for h in at.subheader]
    assert main_chart(at)  # the good file is analysed


def cam_targets(model: str, method: str) -> tuple[list[str], list[str]]:
    """(classes with a heatmap, classes with no positive evidence) of a tiny model for the CHEST film."""
    from cxr_core.io.imaging import load_xray
    from ui import common

    entry = [e for e in common.registry() if e.name == model][0]
    engine, _ = common.cam_engine(common.weights_key(), entry.name, entry.card.sha256)
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
    assert any("no output for **Tuberculosis**" in w for w in warnings_box(at)[1])
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
    gray = image_url(at, f"{label} overlay")
    assert gray != turbo  # the colour map is applied
    at.checkbox(key="review_outline").check().run()  # the Otsu outline is an option of the overlay
    assert image_url(at, f"{label} overlay with the Otsu outline") != gray
    at.radio(key="review_view").set_value("Side by side").run()
    assert CHEST in captions(at) and f"{label} overlay with the Otsu outline" in captions(at)
    at.radio(key="review_view").set_value("Original").run()
    assert f"{CHEST} (heatmap hidden)" in captions(at)
    assert not any("overlay" in c for c in captions(at))
    assert "review_outline" not in [c.key for c in at.checkbox]  # no outline to draw on the plain film
    assert not any("relative within this film" in c for c in captions(at))  # no heatmap, no legend
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
    from ui import common

    hidden = (False, "Blind session: annotate this image first.")
    monkeypatch.setattr(common, "model_output_allowed", lambda sha, pixels=None: hidden)
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
    assert any("oddly shaped for a chest film" in w and "(aspect ratio 3.00, warned above 1.45)" in w
               for w in warnings_box(at)[1])
    other = [e for e in at.expander if e.label.startswith("Models not installed")][0]
    notes = " ".join(m.value for m in other.markdown)
    for name in ("VGG16", "Xception"):  # the tiny models are an EfficientNetV2B0 and a ResNet50
        assert f"**{name}**: not installed" in notes
    assert "python -m cxr_core train --arch vgg16" in notes and "import-model" in notes
    assert "EfficientNetV2B0" not in notes and "ResNet50" not in notes


def test_demo_model_is_the_default_and_an_unavailable_heatmap_is_explained(tiny_registry, tmp_path, monkeypatch):
    from cxr_core.models.manifest import read_card, write_card

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
    label, notes = warnings_box(at)
    assert any("**zz-demo-no-cam is a demonstration model** (demonstration of the review" in w for w in notes)
    assert label == f"Warnings ({len(notes)})"
    warnings = texts(at, "warning")
    assert not any("demonstration model" in w for w in warnings)  # in the expander, not a box of its own
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
    from cxr_core.io.imaging import load_xray
    from ui import common, review

    entry = [e for e in common.registry() if e.name == "tiny-effnet"][0]
    xray = load_xray(FIXTURES / "cxr" / CHEST)
    item = common.Item("k", CHEST, xray, display=xray.pixels[::4, ::4])
    analysis = common.analyse(entry, item, "gradcam++", "Normal")
    assert analysis.cam.heatmap.shape == item.display.shape  # kept at display size
    record = review.result_record(item, entry, analysis)
    json.dumps(record)
    cli_fields = {"file", "model", "classes", "probabilities", "raw_probabilities", "temperature", "predicted", "cam"}
    assert cli_fields <= set(record)
    assert record["file"] == CHEST and record["model"] == "tiny-effnet"
    assert record["cam"]["method"] == "gradcam++" and record["cam"]["target"] == "Normal"
    assert record["image_sha256"] == xray.sha256
    png_bytes = review.full_size_overlay_png(item, analysis, "turbo", 0.4, outline=True, model="tiny-effnet")()
    picture = Image.open(io.BytesIO(png_bytes))
    h, w = xray.shape
    band = legend_band(w, colormap="turbo", caption="tiny-effnet · Grad-CAM++ · target Normal")
    assert picture.mode == "RGB" and picture.size == (w, h + band.shape[0])  # the original size, then the legend
    pixels = np.asarray(picture)
    np.testing.assert_array_equal(pixels[h:], band)  # the legend with "low", "high" and the caption
    assert not (pixels[h:] == pixels[h, 0]).all()  # not a plain band
    text = picture.text
    assert (text["Model"], text["Method"], text["Target"]) == ("tiny-effnet", "Grad-CAM++", "Normal")
    assert text["Title"] == "Heatmap overlay: tiny-effnet · Grad-CAM++ · target Normal"
    assert text["Image SHA-256"] == xray.sha256 and "not diagnoses" in text["Comment"]


# --- the film at a glance: warnings, zoom, a batch -------------------------------------------------


@pytest.fixture
def media(monkeypatch):
    """Read back what a run put in Streamlit's media store (download data, images) by the element's URL."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    stores = []

    class Kept(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Kept)
    return lambda url: stores[-1].get_file(url.rsplit("/", 1)[-1]).content


def test_warnings_are_gathered_in_one_expander(use_registry):
    wide = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).uniform(0, 255, (70, 250))).astype(np.uint8)).save(wide, "PNG")
    at = upload(start(review_model="tiny-resnet-3class"), ("wide.png", wide.getvalue(), "image/png"))
    label, notes = warnings_box(at)
    assert label == "Warnings (2)", notes  # no Tuberculosis output, oddly shaped
    assert [n for n in notes if "no output for **Tuberculosis**" in n or "aspect ratio 3.57" in n] == notes
    assert not any(n in w for n in notes for w in texts(at, "warning"))  # none of them is a box of its own


def test_zoom_cuts_a_region_of_the_film(use_registry, media):
    at = upload(start(), png(CHEST))
    assert "review_zoom_col" not in [s.key for s in at.slider]  # no region to pick on the whole film
    whole = [i for i in at.get("image") if i.captions and i.captions[0].endswith(("overlay", "(no heatmap)"))][0]
    full = Image.open(io.BytesIO(media(whole.proto.imgs[0].url)))
    at.segmented_control(key="review_zoom").set_value(2).run()
    assert not at.exception
    zoomed = [i for i in at.get("image") if i.captions and i.captions[0].endswith(", 2x zoom")]
    assert len(zoomed) == 1, captions(at)
    first = Image.open(io.BytesIO(media(zoomed[0].proto.imgs[0].url)))
    assert abs(first.size[0] - full.size[0] / 2) <= 1 and abs(first.size[1] - full.size[1] / 2) <= 1
    at.slider(key="review_zoom_col").set_value(0).run()  # move the window to the film's left edge
    moved = [i for i in at.get("image") if i.captions and i.captions[0].endswith(", 2x zoom")][0]
    assert moved.proto.imgs[0].url != zoomed[0].proto.imgs[0].url
    shown = np.asarray(Image.open(io.BytesIO(media(moved.proto.imgs[0].url))).convert("L"), float)
    film = np.asarray(Image.open(FIXTURES / "cxr" / CHEST).convert("L"), float)
    h, w = film.shape
    rows, cols = slice(round(h / 4), round(h / 4) + shown.shape[0]), slice(0, shown.shape[1])

    def match(r: slice, c: slice) -> float:
        return float(np.corrcoef(shown.ravel(), film[r, c].ravel())[0, 1])

    # the film's own pixels of rows 1/4..3/4 and the left half, heatmap tint or not; not the centre window
    assert match(rows, cols) > 0.8 and match(rows, cols) > match(rows, slice(w // 4, w // 4 + shown.shape[1])) + 0.2


def test_batch_summary_table_and_its_csv(use_registry, media):
    from cxr_core.io.imaging import load_xray

    noise = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)).save(noise, "PNG")
    other = "normal_nih14_00029719_000.png"
    evil = "=HYPERLINK(evil)-Doe^Jane.png"  # a file name: never in the CSV
    at = start(review_model="tiny-resnet-3class")
    at = upload(at, png(CHEST), png(other), (evil, noise.getvalue(), "image/png"), ("broken.png", b"xx", "image/png"))
    assert "All 3 films, read by tiny-resnet-3class" in [h.value for h in at.subheader]
    table = at.dataframe[0].value
    codes = {n: "film-" + load_xray(FIXTURES / "cxr" / n).sha256[:8] for n in (CHEST, other)}
    codes[evil] = "film-" + load_xray(noise.getvalue(), evil).sha256[:8]
    assert list(table["Film"]) == [codes[CHEST], codes[other], codes[evil]]
    assert list(table["File"]) == [CHEST, other, evil]  # the page says which file is which
    rows = {r["File"]: r for r in table.to_dict("records")}
    assert rows[evil]["Refused"] == "yes" and "noise" in rows[evil]["Reason"].lower()  # the screen's own reason
    assert rows[evil]["Top model score"] == "" and np.isnan(rows[evil]["Score (%)"])
    for name in (CHEST, other):
        assert rows[name]["Refused"] == "no" and rows[name]["Top model score"] in {"COVID-19", "Normal", "Pneumonia"}
    assert all(r["Warnings"] == 1 and "no output for Tuberculosis" in r["Warning details"] for r in rows.values())
    assert any("broken\\.png" in e for e in texts(at, "error"))
    assert any("1 file could not be read" in c for c in texts(at, "caption"))

    at.radio(key="review_selected").set_value(next(k for k in at.radio(key="review_selected").options
                                                   if k.endswith(CHEST))).run()
    top = bars(main_chart(at))
    best = max(top, key=top.get)
    assert rows[CHEST]["Top model score"] == best and rows[CHEST]["Score (%)"] == pytest.approx(top[best], abs=0.06)

    button = [b for b in at.get("download_button") if b.proto.label == "Download summary (CSV)"][0]
    text = media(button.proto.url).decode()
    assert "Doe^Jane" not in text and "HYPERLINK" not in text and ".png" not in text  # no file names
    lines = text.splitlines()
    assert lines[0] == "film,model,top_class,top_score_percent,refused,reason,warnings_count,warnings"
    assert [line.split(",")[0] for line in lines[1:]] == [codes[CHEST], codes[other], codes[evil]]
    assert lines[1].startswith(f"{codes[CHEST]},tiny-resnet-3class,{best},{top[best]:.1f},no,")
    assert f"{codes[evil]},tiny-resnet-3class,,,yes," in lines[3]


def test_summary_csv_cells_cannot_run_as_formulas():
    from cxr_core.io.csv_safe import dict_rows_csv
    from cxr_core.models.summary import SummaryRow

    row = SummaryRow(film="film-0123abcd", name="=cmd|' /C calc'!A0.png", top_class="=EVIL()", score=0.5,
                     refused="no", warnings=("-2+3", "plain"))
    text = dict_rows_csv([row.csv_row("@model")])  # as the page writes it
    assert "calc" not in text  # the file name stays on the page
    assert text.splitlines()[1] == "film-0123abcd,'@model,'=EVIL(),50.0,no,,2,'-2+3 | plain"


def test_scores_say_which_engine_made_them(use_registry):
    """Issue 17: the page states the engine and precision behind the scores (conftest pins TensorFlow)."""
    at = upload(start(), png(CHEST))
    assert "Scores by TensorFlow, float32." in texts(at, "caption")
    at.toggle(key="review_compare").set_value(True).run()
    assert texts(at, "caption").count("Scores by TensorFlow, float32.") == 3  # the film's, and each compared model


@pytest.fixture
def fresh_cache():
    """An empty results cache for the test, and a fresh default one after it (other tests see no budget games)."""
    from ui import common

    yield common.reset_results_cache
    common.reset_results_cache()


def counted_analyses(monkeypatch) -> list[tuple[str, str | None]]:
    """(image SHA-256, method) of every model run the page makes through cxr_core.analysis.analyse."""
    from cxr_core import analysis

    calls, real = [], analysis.analyse
    monkeypatch.setattr(analysis, "analyse", lambda model, film, **kw: calls.append(
        (film.sha256, kw.get("method"))) or real(model, film, **kw))
    return calls


FILMS = (CHEST, "normal_kermany224_IM-0001-0001.png", "pneumonia_kermany224_person100_bacteria_475.png")


def click_through(at: AppTest, keys: list[str]) -> None:
    for key in keys:
        at.radio(key="review_selected").set_value(key).run()
        assert not at.exception
        assert main_chart(at)  # this film's scores are shown


def test_a_film_viewed_again_is_not_recomputed_while_the_budget_holds(use_registry, monkeypatch, fresh_cache):
    """Issue 15: films clicked through again come from the byte-bounded cache; nothing exceeds its budget."""
    cache = fresh_cache()  # CXR_CACHE_MB's default, 512 MB
    calls = counted_analyses(monkeypatch)
    at = upload(start(), *(png(f) for f in FILMS))
    keys = at.radio(key="review_selected").options
    click_through(at, keys)
    first = list(calls)
    # one scores-only run per film (the summary table) and one Grad-CAM run per film viewed
    assert Counter(m for _, m in first) == {None: 3, "gradcam": 3} and len({s for s, _ in first}) == 3
    click_through(at, [*reversed(keys), *keys])
    at.slider(key="review_opacity").set_value(0.6).run()  # a click that changes only the picture
    assert calls == first  # every film seen again: no model run
    stats = cache.stats()
    assert stats.hits > stats.misses and 0 < stats.nbytes <= stats.budget_bytes


def test_a_film_evicted_by_the_byte_budget_is_computed_again(use_registry, monkeypatch, fresh_cache):
    """The same clicks with a budget too small for a film: each view runs the model again (memory stays bounded)."""
    cache = fresh_cache(0)
    calls = counted_analyses(monkeypatch)
    at = upload(start(), *(png(f) for f in FILMS[:2]))
    keys = at.radio(key="review_selected").options
    click_through(at, keys)
    before = len(calls)
    click_through(at, keys)
    assert len(calls) > before and cache.nbytes == 0


def test_reruns_keep_the_keras_session(use_registry, monkeypatch):
    """Issue 17: Streamlit's end-of-run keras.backend.clear_session() (a full gc.collect of TensorFlow's heap,
    0.7 s a click) is switched off for this app; models stay loaded and answers stay the same."""
    import keras

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(1))
    at = upload(start(), png(CHEST))
    scores = bars(main_chart(at))
    at.run()
    assert not cleared
    assert bars(main_chart(at)) == scores
