"""``calibrate``: temperature and before/after numbers printed, and with ``--record`` stored in a tiny
model's card with the OOD detector beside it; ``predict`` then shows scaled probabilities (same arg-max,
different numbers). Without ``--record`` the model's folder stays byte-identical."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from cxr_core.cli import main
from cxr_core.training.dataset import Record, write_split_csv
from cxr_core.models.manifest import read_card
from cxr_core.safety.screening import DEFAULT_K, DEFAULT_PERCENTILE, DETECTOR_FILE

NAME = "tiny-resnet-3class"
FILMS = sorted((FIXTURES / "cxr").glob("*.png")) + sorted((FIXTURES / "ood").glob("*.png"))
LABEL = {"covid": "COVID-19", "normal": "Normal", "pneumonia": "Pneumonia"}
#: Side of each of the 10 fixture films (by position in FILMS): 4 train, 3 val, 3 test.
SIDES = ["train", "val", "test", "train", "val", "train", "test", "val", "train", "test"]


@pytest.fixture
def registry(tiny_registry, tmp_path, monkeypatch):
    """A copy of the 3-class tiny model in a registry of this test's own."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry / NAME, weights / NAME)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    return weights / NAME


@pytest.fixture
def data(tmp_path):
    """The fixture films as DIR/{train,val,test}/<class>/*.png."""
    root = tmp_path / "data"
    for side, film in zip(SIDES, FILMS):
        folder = root / side / LABEL[film.name.split("_")[0]]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(film, folder / film.name)
    return root


def _digest(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_calibrate_records_temperature_numbers_and_detector_and_predict_applies_them(registry, data, capsys):
    before = _digest(registry)
    assert main(["calibrate", "--model", NAME, "--data", str(data), "--json"]) == 0
    unrecorded = json.loads(capsys.readouterr().out)
    assert unrecorded["recorded"] is False and unrecorded["ood"]["n_fit"] == 4
    assert _digest(registry) == before  # no card change, no ood.npz
    assert main(["calibrate", "--model", NAME, "--data", str(data), "--record"]) == 0
    out = capsys.readouterr().out
    card = read_card(registry)
    assert card.calibration == unrecorded["calibration"] and card.extra["ood"] == unrecorded["ood"]
    cal = card.calibration
    assert cal["fitted_on"] == "val split (3 images)" and cal["reported_on"] == "test split" and cal["n"] == 3
    for key in ("ece", "brier", "nll"):
        assert np.isfinite(cal[f"{key}_before"]) and np.isfinite(cal[f"{key}_after"])
    assert len(cal["bins_before"]["count"]) == 15 and sum(cal["bins_after"]["count"]) == 3
    assert abs(cal["temperature"] - 1.0) > 0.01  # the untrained model's near-uniform scores need scaling
    assert f"temperature {cal['temperature']:.3f} fitted on the val split (3 images)" in out
    assert f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}" in out
    ood = card.extra["ood"]
    assert (registry / DETECTOR_FILE).is_file() and ood["sha256"] and ood["features"] == "lungseg"
    assert ood["n_fit"] == 4 and ood["n_val"] == 3
    assert ood["k"] == min(DEFAULT_K, 3) and ood["percentile"] == DEFAULT_PERCENTILE  # the defaults, k < 4 films
    assert f"refuses {ood['val_refusal_rate']:.1%} of the 3 val films; saved {registry / DETECTOR_FILE}" in out
    assert f"card updated: {registry / 'card.json'}" in out

    film = str(FILMS[0])
    assert main(["predict", film, "--model", NAME, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["temperature"] == pytest.approx(cal["temperature"])
    shown, raw = (np.array(list(record[k].values())) for k in ("probabilities", "raw_probabilities"))
    assert not np.allclose(shown, raw, atol=1e-4)
    assert shown.argmax() == raw.argmax() and shown.sum() == pytest.approx(1.0)
    # FILMS[0] is a training film: with k = 1 its nearest training film is itself, at distance 0
    assert record["ood"]["ok"] is True and 0 <= record["ood"]["score"] <= record["ood"]["threshold"]
    assert record["ood"]["threshold"] == pytest.approx(ood["threshold"])


def test_calibrate_applies_the_models_own_split_csv_to_unsplit_data(registry, data, tmp_path, capsys):
    flat = tmp_path / "flat"
    records = []
    for side, film in zip(SIDES, FILMS):
        label = LABEL[film.name.split("_")[0]]
        (flat / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(film, flat / label / film.name)
        records.append(Record(flat / label / film.name, label, film.stem, side))
    write_split_csv(records, registry / "split.csv", root=flat)
    assert main(["calibrate", "--model", NAME, "--data", str(flat), "--no-ood", "--json", "--record"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["calibration"]["fitted_on"] == "val split (3 images)" and printed["ood"] is None
    assert not (registry / DETECTOR_FILE).exists()
    assert read_card(registry).calibration["temperature"] == pytest.approx(printed["calibration"]["temperature"])


def test_calibrate_without_held_out_images_is_a_one_line_error(registry, tmp_path, capsys):
    flat = tmp_path / "flat"
    (flat / "Normal").mkdir(parents=True)
    shutil.copyfile(FILMS[1], flat / "Normal" / FILMS[1].name)
    assert main(["calibrate", "--model", NAME, "--data", str(flat), "--record"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no images on the 'val' side of the split") and "unsplit" in err
    assert len(err.splitlines()) == 1 and read_card(registry).calibration == {}
