"""Training end to end on a tiny data set: registry entry, card, split, evaluate CLI, tuning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, smooth_image
from cxr_core.cli import main

CLASSES = ["COVID-19", "Normal", "Pneumonia"]


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A manifest of 18 images (the 4 real fixtures plus synthetic ones), 2 per patient, 3 classes."""
    root = tmp_path_factory.mktemp("tiny-data")
    real = {p.name.split("_")[0]: p for p in sorted((FIXTURES / "cxr").glob("*.png"))}
    rows = []
    for c, label in enumerate(("covid", "normal", "pneumonia")):
        for i in range(6):
            name = f"img/{label}_{i}.png"
            if i == 0:
                (root / "img").mkdir(exist_ok=True)
                (root / name).write_bytes(real[label].read_bytes())
            else:  # class-dependent brightness so one epoch has something to learn
                _png(root / name, np.clip(smooth_image(80, 72, seed=10 * c + i) * (0.5 + 0.25 * c), 0, 1))
            rows.append({"file": name, "label": label, "patient_id": f"{label}-{i // 2}"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """`train` run once through the CLI: EfficientNetV2B0 from scratch, 64 px, one epoch."""
    weights = tmp_path_factory.mktemp("trained-weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_WEIGHTS_DIR", str(weights))
        code = main(["train", "--arch", "efficientnetv2b0", "--data", str(tiny_data / "manifest.csv"), "--name", "tiny",
                     "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--no-imagenet", "--trainable-layers", "0",
                     "--input-size", "64", "--seed", "3"])
    assert code == 0
    return weights, "tiny"


def test_train_writes_a_model_the_registry_loads_and_that_predicts(trained, monkeypatch):
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.manifest import list_models, load_model
    from cxr_core.models.predict import predict_loaded

    weights, name = trained
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    assert [(e.name, e.status) for e in list_models()] == [(name, "ready")]
    loaded = load_model(name)
    card = loaded.card
    assert card.classes == CLASSES and card.input_size == 64 and card.architecture == "efficientnetv2b0"
    assert card.training_data["recipe"]["weights"] == "none (trained from scratch)"
    assert card.training_data["recipe"]["epochs_run"] == 1
    assert set(card.training_data["split"]["counts"]) == {"train", "val", "test"}
    pred = predict_loaded(loaded, [load_xray(FIXTURES / "cxr" / "covid_hannover_b343e657.png")])[0]
    assert pred.classes == tuple(CLASSES) and pred.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    test = card.metrics["test"]
    assert test["n"] == card.training_data["split"]["counts"]["test"]["images"]
    assert test["ci95"]["accuracy"][0] <= test["accuracy"] <= test["ci95"]["accuracy"][1]
    assert {"temperature", "ece_before", "ece_after"} <= set(card.calibration)  # calibration hook ran
    ood = card.extra["ood"]  # the OOD detector was fitted on the training films and stored beside the model
    assert (weights / name / ood["file"]).is_file()
    assert ood["n_fit"] == card.training_data["split"]["counts"]["train"]["images"]


def test_train_crop_lungs_is_recorded_and_every_later_prediction_crops(tiny_data, tmp_path, monkeypatch):
    """`train --crop-lungs`: the card says so, and the registered model scores the film's lung crop."""
    from dataclasses import replace

    from cxr_core.io.imaging import load_xray
    from cxr_core.models.manifest import load_model
    from cxr_core.models.predict import predict_arrays, predict_loaded
    from cxr_core.models.preprocess import lung_crop_of

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    assert main(["train", "--arch", "efficientnetv2b0", "--data", str(tiny_data / "manifest.csv"), "--name", "crop",
                 "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--no-imagenet", "--trainable-layers", "0",
                 "--input-size", "64", "--seed", "3", "--crop-lungs", "--no-augment"]) == 0
    card = json.loads((tmp_path / "crop" / "card.json").read_text())
    assert card["crop_lungs"] is True and card["training_data"]["recipe"]["crop_lungs"] is True
    loaded = load_model("crop")
    assert loaded.spec.crop_lungs
    xray = load_xray(FIXTURES / "cxr" / "covid_hannover_b343e657.png")
    crop = lung_crop_of(xray.pixels)
    assert crop.cropped
    uncropped_spec = replace(loaded.spec, crop_lungs=False)
    np.testing.assert_allclose(predict_loaded(loaded, [xray])[0].raw_probabilities,
                               predict_arrays(loaded.model, uncropped_spec, [crop.pixels])[0], atol=1e-6)


def test_group_weights_balance_sources_within_a_class_and_keep_class_totals():
    from cxr_core.training.dataset import class_weights
    from cxr_core.training.train import MAX_GROUP_WEIGHT, group_weights

    labels = [0] * 10 + [1] * 10
    groups = ["a"] * 8 + ["b"] * 2 + ["a"] * 9 + ["c"]
    w = group_weights(labels, groups, 2)
    assert w[:8].sum() == pytest.approx(w[8:10].sum())  # class 0: each source the same total weight
    cw = class_weights(labels, 2)
    assert w[:10].sum() == pytest.approx(10 * cw[0]) and w[10:].sum() == pytest.approx(10 * cw[1])
    # class 1: the lone "c" film would need a factor of 5 to balance 9 "a" films; the cap holds it lower
    capped = group_weights(labels, groups, 2, cap=2.0)
    assert capped[19] / capped[10] == pytest.approx(2.0 / (10 / 18))
    assert MAX_GROUP_WEIGHT >= 2


def test_saved_split_is_patient_disjoint_and_covers_every_image(trained, tiny_data):
    weights, name = trained
    with (weights / name / "split.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["file"] for r in rows) == sorted(f"img/{c}_{i}.png" for c in ("covid", "normal", "pneumonia")
                                                     for i in range(6))
    sides: dict[str, set] = {}
    for r in rows:
        sides.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_evaluate_reproduces_the_card_on_its_own_test_split(trained, tiny_data, monkeypatch, capsys):
    weights, name = trained
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    card_before = json.loads((weights / name / "card.json").read_text())
    code = main(["evaluate", "--model", name, "--data", str(tiny_data), "--split", "test", "--json", "--no-save"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "loss", "auc", "f1", "confusion_matrix", "ci95"):
        assert out["metrics"][key] == card_before["metrics"]["test"][key], key
    code = main(["evaluate", "--model", name, "--data", str(tiny_data), "--split", "test"])
    text = capsys.readouterr().out
    assert code == 0 and "matches the card's test metrics" in text and f"{name} | " in text


def test_evaluate_refuses_other_classes_or_maps_them(trained, tiny_data, tmp_path, monkeypatch, capsys):
    weights, name = trained
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    for label, src in (("tb", "covid_0"), ("sick", "pneumonia_0"), ("fine", "normal_0")):
        (tmp_path / label).mkdir()
        (tmp_path / label / f"{src}.png").write_bytes((tiny_data / "img" / f"{src}.png").read_bytes())
    code = main(["evaluate", "--model", name, "--data", str(tmp_path), "--no-save"])
    err = capsys.readouterr().err
    assert code == 2 and "the model does not predict" in err and "'fine'" in err and "--map" in err
    (tmp_path / "tb" / "covid_0.png").rename(tmp_path / "tb.png")
    (tmp_path / "tb").rmdir()
    code = main(["evaluate", "--model", name, "--data", str(tmp_path), "--map", "sick=Pneumonia,fine=normal",
                 "--record"])
    assert code == 0
    card = json.loads((weights / name / "card.json").read_text())
    saved = card["metrics"][f"{tmp_path.name}/all"]
    assert saved["n"] == 2 and saved["per_class"]["Pneumonia"]["support"] == 1


def test_split_command_writes_a_patient_disjoint_manifest(tiny_data, tmp_path, capsys):
    out = tmp_path / "split.csv"
    assert main(["split", str(tiny_data / "manifest.csv"), "--by", "patient_id", "--seed", "1", "--out", str(out)]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 and set(rows[0]) == {"file", "label", "patient_id", "split"}
    sides: dict[str, set] = {}
    for r in rows:
        sides.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert "no patient_id on two sides" in capsys.readouterr().out
    assert main(["split", str(tiny_data / "manifest.csv"), "--by", "hospital"]) == 2


def test_tuning_keeps_the_best_trial(tmp_path):
    from cxr_core.models.runtime import import_tensorflow_quietly
    from cxr_core.training.train import TrainConfig
    from cxr_core.training.tuning import TUNE_SPACE, tune

    import_tensorflow_quietly()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    config = TrainConfig(arch="vgg16", name="t", epochs=1, batch_size=3, weights=None, input_size=32,
                         classes=("COVID-19", "Normal"), tune_trials=2, augment=False, n_boot=10)
    model, history, best = tune(config, config.classes, {"train": (x, y), "val": (x[:2], y[:2])}, log=lambda s: None,
                          directory=tmp_path)
    assert best["trials"] == 2
    assert best["hyperparameters"]["hidden_units"] in TUNE_SPACE["hidden_units"]
    assert model.get_layer("hidden_1").units == best["hyperparameters"]["hidden_units"]
    assert model.output_shape == (None, 2)
    assert len(history["val_loss"]) == 1 and history["val_loss"][0] == pytest.approx(best["val_loss"])
