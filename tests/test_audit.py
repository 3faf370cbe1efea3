"""Audit: ground truth by construction (a corner-marker model is flagged, a lung-only model is not),
region shares, bootstrap summaries, the JSON round trip, and the CLI end to end."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cxr_core.audit import (
    AuditItem, ImageAudit, from_json, region_shares, run_audit, shortcut_flags, summarise, to_json,
)
from cxr_core.errors import CXRError, DataError
from cxr_core.models.zoo import ModelSpec

IN = 64     # toy network input side
SIDE = 128  # saved images (the reader's minimum side is 64)
CLASSES = ("COVID-19", "Normal")


def toy_regions():
    """At the network's 64 px: a top-left corner square and a two-lobe 'lung' region."""
    corner = np.zeros((IN, IN), np.float32)
    corner[:10, :10] = 1
    lungs = np.zeros((IN, IN), np.float32)
    lungs[16:52, 10:28] = 1
    lungs[16:52, 36:54] = 1
    return corner, lungs


def toy_model(gate0: np.ndarray, gate1: np.ndarray, thr0: float):
    """Class 0 = mean of ReLU(gray - thr0) inside gate0 (strong); class 1 = ReLU(gray - 0.2) inside gate1 + bias.

    The gates multiply the input before the last conv layer ``features``, so Grad-CAM's map for a
    class can only lie inside that class's gate.
    """
    import keras

    class Gate(keras.layers.Layer):
        def __init__(self, gates, **kw):
            super().__init__(**kw)
            self.gates = np.asarray(gates, np.float32)

        def call(self, x):
            return x * keras.ops.convert_to_tensor(self.gates)

    inp = keras.Input((IN, IN, 3), name="image")
    gray = keras.layers.Conv2D(2, 1, use_bias=False, name="split")(inp)
    gated = Gate(np.stack([gate0, gate1], axis=-1), name="gate")(gray)
    feats = keras.layers.Conv2D(2, 1, activation="relu", name="features")(gated)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(feats)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inp, keras.layers.Activation("softmax", name="probabilities")(logits))
    model.get_layer("split").set_weights([np.full((1, 1, 3, 2), 1 / 3, np.float32)])
    model.get_layer("features").set_weights([np.eye(2, dtype=np.float32)[None, None], np.array([-thr0, -0.2], np.float32)])
    model.get_layer("logits").set_weights([np.diag([1000.0, 1.0]).astype(np.float32), np.array([0.0, 0.3], np.float32)])
    return model


#: The toy films are synthetic textures that screening rightly refuses as not chest films; the toy tests
#: audit them through the expert override (``allow_ood``), as ``report --allow-ood`` does for synthetic studies.


def engine_for(model):
    from cxr_core.explain.cam import CamEngine

    return CamEngine.from_model(model, ModelSpec("toy", "Toy", "", IN, "unit", "features"), CLASSES)


def textured(seed: int) -> np.ndarray:
    """A [0, 1] film-like texture between 0.3 and 0.6 (never above the 0.8 trigger)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0.3, 0.6, (SIDE, SIDE)).astype(np.float32), (7, 7), 2)
    return np.clip(img, 0.3, 0.6)


def write_set(tmp_path, kind: str, n: int = 6):
    """n images with the trigger (class 0) and n without (class 1), plus expert lung masks by stem."""
    _, lungs = toy_regions()
    big_lungs = cv2.resize(lungs, (SIDE, SIDE), interpolation=cv2.INTER_NEAREST) > 0
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    items = []
    for i in range(2 * n):
        img = textured(i)
        triggered = i < n
        if triggered and kind == "corner":
            img[3:17, 3:17] = 1.0           # a bright corner marker
        if triggered and kind == "lung":
            img[50:70, 30:46] = 0.95        # a bright patch inside the left 'lung'
        stem = f"{kind}_{i:02d}"
        cv2.imwrite(str(img_dir / f"{stem}.png"), np.round(img * 255).astype(np.uint8))
        cv2.imwrite(str(mask_dir / f"{stem}_lungs.png"), big_lungs.astype(np.uint8) * 255)
        items.append(AuditItem(img_dir / f"{stem}.png", CLASSES[0] if triggered else CLASSES[1], f"p{i}"))
    return items, mask_dir


@pytest.fixture(scope="module")
def corner_engine():
    corner, lungs = toy_regions()
    return engine_for(toy_model(corner, lungs, thr0=0.8))


@pytest.fixture(scope="module")
def lung_engine():
    _, lungs = toy_regions()
    return engine_for(toy_model(lungs, lungs, thr0=0.8))


def test_a_model_that_reads_a_corner_marker_is_flagged(corner_engine, tmp_path):
    items, masks = write_set(tmp_path, "corner")
    seen = []
    report = run_audit(corner_engine, items, lung_masks=masks, allow_ood=True, batch_size=4, top_k=3,
                       progress=lambda done, total: seen.append((done, total)))
    assert [im.predicted for im in report.images] == [it.label for it in items]
    summary = summarise(report.images, by="predicted", n_boot=200)
    assert summary["COVID-19"]["regions"]["outside_lungs"]["mean"] > 0.95
    assert summary["COVID-19"]["regions"]["top_left"]["mean"] > 0.95
    assert summary["Normal"]["regions"]["outside_lungs"]["mean"] < 0.1
    flags = shortcut_flags(report.images, n_boot=200)
    assert [f["class"] for f in flags] == ["COVID-19"]
    assert flags[0]["low"] > 0.5
    assert {im.lung_source for im in report.images} == {"expert"}
    assert len(report.flagged) == 3 and all(f.predicted == "COVID-19" for f in report.flagged)
    assert report.flagged[0].thumbnail.startswith(b"\x89PNG")
    assert seen == [(4, 12), (8, 12), (12, 12)]


def test_a_model_that_reads_only_inside_the_lungs_is_not_flagged(lung_engine, tmp_path):
    items, masks = write_set(tmp_path, "lung")
    report = run_audit(lung_engine, items, lung_masks=masks, allow_ood=True, batch_size=5)
    assert [im.predicted for im in report.images] == [it.label for it in items]
    summary = summarise(report.images, by="label", n_boot=200)
    for cls in CLASSES:
        assert summary[cls]["regions"]["outside_lungs"]["mean"] < 0.15
        assert summary[cls]["regions"]["top_left"]["mean"] < 0.01
    assert shortcut_flags(report.images, n_boot=200) == []
    assert shortcut_flags(report.images, by="label", n_boot=200) == []
    assert report.flagged == []  # no image has more mass outside the lungs than an even spread


def test_mask_markers_first_removes_the_corner_shortcut(corner_engine, tmp_path):
    items, masks = write_set(tmp_path, "corner", n=2)
    report = run_audit(corner_engine, items, lung_masks=masks, allow_ood=True, mask_markers_first=True)
    # The border band is blacked out before the model sees the film, so the marker cannot fire.
    assert {im.predicted for im in report.images} == {"Normal"}
    assert report.settings["mask_markers"] is True


def test_region_shares_are_mass_fractions_and_none_for_an_empty_map():
    heat = np.zeros((10, 10))
    heat[0, 0], heat[5, 5] = 3.0, 1.0
    a = np.zeros((10, 10), bool)
    a[:2, :2] = True
    assert region_shares(heat, {"a": a, "all": np.ones((10, 10), bool)}) == {"a": 0.75, "all": 1.0}
    assert region_shares(np.zeros((10, 10)), {"a": a}) == {"a": None}


def fake(label, predicted, outside, patient):
    shares = {"outside_lungs": outside}
    return ImageAudit(f"{patient}.png", label, patient, predicted, 0.9, shares, {"outside_lungs": 0.6}, [], "expert")


def test_bootstrap_interval_brackets_the_mean_and_resamples_patients():
    rng = np.random.default_rng(0)
    images = [fake("Normal", "Normal", float(v), f"p{i}") for i, v in enumerate(rng.uniform(0.3, 0.5, 40))]
    stats = summarise(images, n_boot=500, regions=("outside_lungs",))["Normal"]
    region = stats["regions"]["outside_lungs"]
    assert region["low"] < region["mean"] < region["high"]
    assert region["high"] - region["low"] < 0.08
    # Forty copies of one patient carry one patient's worth of information: the interval is a point.
    same = [fake("Normal", "Normal", float(v), "p0") for v in rng.uniform(0.3, 0.5, 40)]
    one = summarise(same, n_boot=200, regions=("outside_lungs",))["Normal"]
    assert one["n_patients"] == 1
    assert one["regions"]["outside_lungs"]["low"] == pytest.approx(one["regions"]["outside_lungs"]["high"])


def test_a_small_or_uncertain_difference_is_not_a_shortcut():
    close = [fake("A", "A", 0.5, f"a{i}") for i in range(10)] + [fake("B", "B", 0.4, f"b{i}") for i in range(10)]
    assert shortcut_flags(close, n_boot=200) == []  # 0.10 apart: under the 0.15 margin
    rng = np.random.default_rng(1)
    noisy = [fake("A", "A", float(v), f"a{i}") for i, v in enumerate(rng.choice([0.0, 1.0], 4))]
    noisy += [fake("B", "B", float(v), f"b{i}") for i, v in enumerate(rng.uniform(0.2, 0.4, 4))]
    means = {c: np.mean([im.outside for im in noisy if im.predicted == c]) for c in "AB"}
    assert means["A"] - means["B"] >= 0.15  # far apart on average ...
    assert shortcut_flags(noisy, n_boot=500) == []  # ... but 4 coin flips cannot show it


def test_json_round_trip_keeps_records_and_thumbnails(corner_engine, tmp_path):
    items, masks = write_set(tmp_path, "corner", n=2)
    report = run_audit(corner_engine, items, lung_masks=masks, allow_ood=True, top_k=1)
    data = json.loads(json.dumps(to_json(report, n_boot=100)))
    assert data["shortcuts_by_predicted"][0]["class"] == "COVID-19"
    assert set(data["summary_by_label"]) == set(CLASSES)
    back = from_json(data)
    assert back.images == report.images
    assert back.flagged[0].thumbnail == report.flagged[0].thumbnail
    with pytest.raises(DataError, match="not a CXR Review audit"):
        from_json({"format": "something else"})


def test_unreadable_files_are_listed_and_an_all_bad_set_is_an_error(corner_engine, tmp_path):
    items, masks = write_set(tmp_path, "corner", n=1)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    report = run_audit(corner_engine, [*items, AuditItem(bad)], lung_masks=masks, allow_ood=True)
    assert len(report.images) == 2
    assert report.failures[0]["file"] == str(bad) and "not an image" in report.failures[0]["error"]
    with pytest.raises(DataError, match="no image could be audited"):
        run_audit(corner_engine, [AuditItem(bad)], lung_masks=masks, allow_ood=True)
    with pytest.raises(CXRError, match="batch_size"):
        run_audit(corner_engine, items, lung_masks=masks, allow_ood=True, batch_size=0)


def labelled_copy(tmp_path):
    """The audit fixtures as a manifest (two classes, patient ids) plus their expert-mask folder."""
    from pathlib import Path

    fix = Path(__file__).parent / "fixtures" / "audit"
    rows = ["file,label,patient_id"]
    for i, png in enumerate(sorted(p for p in fix.glob("*.png") if "_lungs" not in p.name)):
        rows.append(f"{png},{'covid' if png.name.startswith('hannover') else 'normal'},p{i}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, fix, len(rows) - 1


def test_cli_writes_json_and_html_and_prints_class_shares(use_registry, tmp_path, capsys):
    from cxr_core.cli import main

    manifest, masks, n = labelled_copy(tmp_path)
    out, js = tmp_path / "report.html", tmp_path / "audit.json"
    code = main(["audit", "--model", "tiny-effnet", "--data", str(manifest), "--lung-masks", str(masks),
                 "--out", str(out), "--json", str(js), "--batch-size", "3", "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(js.read_text())
    assert data["n_images"] == n == len(data["images"])
    assert {im["lung_source"] for im in data["images"]} == {"expert", "estimate"}  # 6 masks, 2 estimated
    assert set(data["summary_by_label"]) == {"COVID-19", "Normal"}
    assert f"{n}/{n} images audited" in captured.err
    assert "of heatmap mass outside the lungs (95% CI" in captured.out
    html = out.read_text()
    assert "<h2>Images most driven by evidence outside the lungs</h2>" in html and "not diagnoses" in html
    assert html.count("data:image/png;base64,") == len(data["flagged"]) <= 2


def test_cli_rejects_a_bad_batch_size_and_missing_data(use_registry, tmp_path, capsys):
    from cxr_core.cli import main

    assert main(["audit", "--model", "tiny-effnet", "--data", str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    assert main(["audit", "--model", "tiny-effnet", "--data", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
