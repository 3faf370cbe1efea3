"""The models page under AppTest: cards, the study's metrics table, figures and checksum status.

The page never loads a model, so the registry here is cards plus small stand-in files: a card whose
SHA-256 matches its file is "ready", one whose file was changed afterwards is a "checksum mismatch".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import REPO
from cxr_core.models.manifest import MODEL_FILE, ModelCard, file_sha256, write_card

TIMEOUT = 120
CLASSES = ["COVID-19", "Normal", "Pneumonia"]

#: Test metrics in the shape cxr_core.training.evaluate stores in ``card.metrics["test"]``.
METRICS = {
    "accuracy": 0.9799, "loss": 0.0712, "auc": 0.9973, "f1": 0.975, "recall": 0.97, "precision": 0.98,
    "per_class": {c: {"precision": 0.9, "recall": 0.8, "f1": 0.85, "auc": 0.95, "support": 10} for c in CLASSES},
    "confusion_matrix": [[9, 1, 0], [0, 10, 0], [1, 1, 8]],
    "roc": {c: {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.9, 1.0]} for c in CLASSES},
    "n": 30,
    "ci95": {"accuracy": [0.97, 0.99], "loss": [0.05, 0.09], "auc": [0.99, 1.0], "f1": [0.96, 0.99],
             "recall": [0.95, 0.99], "precision": [0.96, 0.99], "per_class": {}},
}
BINS = {"edges": [0, 0.5, 1.0], "confidence": [0.4, 0.9], "accuracy": [0.5, 0.85], "count": [10, 20]}
CALIBRATION = {"temperature": 1.7, "n": 30, "n_bins": 2, "ece_before": 0.08, "ece_after": 0.03,
               "bins_before": BINS, "bins_after": BINS}


def register(root: Path, name: str, *, tamper: bool = False, **fields) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(f"stand-in weights of {name}".encode())
    card = ModelCard(name=name, architecture=fields.pop("architecture", "efficientnetv2b0"),
                     classes=fields.pop("classes", CLASSES), input_size=224, preprocessing="raw",
                     last_conv_layer="top_activation", sha256=file_sha256(folder / MODEL_FILE), **fields)
    write_card(folder, card)
    if tamper:
        (folder / MODEL_FILE).write_bytes(b"someone changed these weights")


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "weights"
    register(root, "demo-model", demo=True, metrics={"test": METRICS}, calibration=CALIBRATION,
             intended_use="demonstration of the review workflow, not clinical use",
             training_data={"dataset": "cxr-real (520 images)", "sources": {"hannover": 200}},
             licences=[{"source": "hannover", "license": "CC BY 3.0", "attribution": "MHH", "images": 200}],
             notes=["Known confound: pediatric normals."])
    register(root, "resnet-4class", architecture="resnet50", classes=CLASSES + ["Tuberculosis"])
    register(root, "tampered", tamper=True)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(root))
    return root


def models_page(role: str = "reviewer") -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name=f"{role} user", role=role)
    at.run()
    at.switch_page("pages/models.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figure specs by the key the page gave them (the element id ends with it)."""
    # element ids read "$$ID-<hash>-<key>"
    return {c.proto.id.split("-", 2)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def test_every_card_with_its_checksum_status(registry):
    at = models_page()
    assert at.title[0].value == "Models"
    assert [s.value for s in at.subheader][:3] == ["demo-model (demo)", "resnet-4class", "tampered"]
    verified = [s.value for s in at.success]
    assert len(verified) == 2 and all(v.startswith("Checksum verified") for v in verified)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].lower().startswith("checksum mismatch")
    tables = [str(t.proto) for t in at.get("table")]
    assert any("efficientnetv2b0" in t and "COVID-19, Normal, Pneumonia" in t and "224 x 224" in t for t in tables)
    assert any("resnet50" in t and "Tuberculosis" in t for t in tables)
    assert any("No output for Tuberculosis" in w.value for w in at.warning)  # the 3-class models
    markdown = " ".join(m.value for m in at.markdown)
    assert "**Intended use:** demonstration of the review workflow, not clinical use" in markdown
    assert "Known confound: pediatric normals." in markdown
    assert "**VGG16**" in markdown and "**Xception**" in markdown and "**ResNet50**" not in markdown


def test_metrics_table_and_figures_in_the_studys_format(registry):
    at = models_page()
    table = at.dataframe[1].value  # [0] is the licences table
    assert list(table.columns) == ["Model", "Accuracy", "Loss", "AUC", "F1", "Recall", "Precision"]
    row = table.iloc[0]
    assert row["Accuracy"] == "97.99% [97.00%, 99.00%]" and row["Loss"] == "0.0712 [0.0500, 0.0900]"
    assert row["AUC"] == "99.73% [99.00%, 100.00%]"
    figs = charts(at)
    cm = figs["models_cm::demo-model::test"]["data"][0]
    assert cm["x"] == CLASSES and cm["text"][2] == ["1", "1", "8"]
    roc_names = [t["name"] for t in figs["models_roc::demo-model::test"]["data"]]
    assert roc_names == ["chance", "COVID-19 (AUC 95.0%)", "Normal (AUC 95.0%)", "Pneumonia (AUC 95.0%)"]
    assert "models_reliability::demo-model" in figs
    cal = at.dataframe[2].value
    assert {"temperature", "ece before", "ece after"} <= set(cal["Measure"])
    assert not any(k.startswith(("models_cm::resnet", "models_cm::tampered")) for k in figs)
    assert any("No test metrics in this card" in c.value for c in at.caption)


def test_per_class_rows_on_request(registry):
    at = models_page()
    assert len(at.dataframe[1].value) == 1
    at.toggle(key="models_per_class").set_value(True).run()
    table = at.dataframe[1].value
    assert list(table["Model"]) == ["demo-model", "demo-model: COVID-19", "demo-model: Normal", "demo-model: Pneumonia"]
    assert list(table["Test images"])[1:] == ["10", "10", "10"]


def test_tampered_model_is_not_offered_on_the_review_page(registry, chest_png_bytes):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name="reviewer user", role="reviewer")
    at.run()
    at.file_uploader(key="review_uploads").set_value([("chest.png", chest_png_bytes, "image/png")]).run()
    assert not at.exception
    offered = at.selectbox(key="review_model").options
    assert [o.split(":")[0] for o in offered] == ["demo-model", "resnet-4class"]
    unusable = [e for e in at.expander if e.label.startswith("Models not installed")][0]
    assert any(m.value.startswith("- **tampered**: checksum mismatch.") for m in unusable.markdown)
    errors = [e.value for e in at.error]  # the stand-in file of the chosen model is not a Keras model
    assert any(e.startswith("demo-model could not") and "could not load" in e for e in errors), errors


def test_empty_registry_says_how_to_start():
    at = models_page()
    assert any("make demo-model" in i.value for i in at.info)
    assert len([m for m in at.markdown if "python -m cxr_core train --arch" in m.value]) == 4


def test_the_engine_behind_the_scores_is_stated(tiny_registry, tmp_path, monkeypatch):
    """Issue 17: each card says which engine and precision score its films once the server has built it, and how
    it will be chosen before that (the page itself never loads a model)."""
    import shutil

    from ui import common

    weights = tmp_path / "weights"
    for name in ("tiny-effnet", "tiny-resnet-3class"):
        shutil.copytree(tiny_registry / name, weights / name)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    entry = next(e for e in common.registry() if e.name == "tiny-effnet")
    engine, _ = common.cam_engine(common.weights_key(), entry.name, entry.card.sha256)  # as the review page does
    at = models_page()
    shown = " ".join(str(t.proto) for t in at.get("table"))
    assert engine.info.label == "TensorFlow, float32"
    assert shown.count("Scores by TensorFlow, float32 (CXR_BACKEND=tensorflow") == 1, shown  # tiny-effnet only
    assert shown.count("Chosen when the model reads its first film on this server (CXR_BACKEND=tensorflow") == 1
