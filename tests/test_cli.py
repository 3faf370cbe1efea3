"""``python -m cxr_core``: exit codes, JSON shape, a batch with one corrupt file, import-model.

Two real subprocesses (each pays the TensorFlow import); the other cases call ``cli.main``
in-process, which is the same code minus ``sys.exit``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_core.cli import main
from dicom_factory import gradient, make_dicom

from conftest import FIXTURES, REPO

CXR_PNG = FIXTURES / "cxr" / "normal_kermany224_IM-0001-0001.png"


def run_cli(*args: str, weights_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "CXR_WEIGHTS_DIR": str(weights_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "cxr_core", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def inputs(tmp_path):
    """A PNG, a JPEG and a MONOCHROME1 DICOM of chest-sized pixels, plus a truncated PNG."""
    png = tmp_path / "film.png"
    png.write_bytes(CXR_PNG.read_bytes())
    jpeg = tmp_path / "scan.jpg"
    Image.open(CXR_PNG).save(jpeg, format="JPEG", quality=90)
    dicom = tmp_path / "study.dcm"
    dicom.write_bytes(make_dicom(gradient(96, 96), photometric="MONOCHROME1"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(CXR_PNG.read_bytes()[:3000])
    return png, jpeg, dicom, corrupt


def tiny_registered_model(weights_dir):
    """Register a tiny custom 3-class model (loads in well under a second)."""
    import keras

    from cxr_core.models.manifest import ModelCard, save_model

    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    card = ModelCard(name="tiny", architecture="custom", classes=["A", "B", "C"], input_size=32,
                     preprocessing="unit", last_conv_layer="conv")
    save_model(model, card, weights_dir)
    return model


# --- subprocesses --------------------------------------------------------------------------------


def test_models_json_lists_every_entry_with_status(tiny_registry):
    result = run_cli("models", "--json", weights_dir=tiny_registry)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["tiny-effnet", "tiny-resnet-3class"]
    for row in rows:
        assert set(row) == {"name", "status", "architecture", "classes", "input_size", "demo", "message"}
        assert row["status"] == "ready" and row["input_size"] == 64 and row["demo"] is False
    assert rows[1]["architecture"] == "resnet50" and rows[1]["classes"] == ["COVID-19", "Normal", "Pneumonia"]


def test_predict_batch_with_one_corrupt_file(tiny_registry, inputs, tmp_path):
    png, jpeg, dicom, corrupt = inputs
    out = tmp_path / "out"
    result = run_cli("predict", "--keep-names",  # these tests name films by path
                     png, corrupt, jpeg, dicom, "--model", "tiny-resnet-3class", "--json", "--out", out,
                     weights_dir=tiny_registry)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = f"error: {corrupt}: PNG data is truncated or damaged: image file is truncated"
    assert result.stderr.strip().splitlines() == [expected]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(png), str(jpeg), str(dicom)]
    for record in records:
        assert record["model"] == "tiny-resnet-3class"
        assert record["classes"] == ["COVID-19", "Normal", "Pneumonia"]
        assert list(record["probabilities"]) == record["classes"]
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["predicted"] == max(record["probabilities"], key=record["probabilities"].get)
    assert sorted(p.name for p in out.iterdir()) == ["film.json", "scan.json", "study.json"]
    assert json.loads((out / "study.json").read_text()) == records[2]


# --- in-process ----------------------------------------------------------------------------------


def test_unknown_model_exits_2_naming_the_registered_ones(tiny_registry, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_registry))
    assert main(["predict", "--keep-names", str(CXR_PNG), "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no registered model named 'nope'")
    assert "(registered: tiny-effnet, tiny-resnet-3class)" in err and len(err.strip().splitlines()) == 1


def test_predict_text_output_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "w"))
    tiny_registered_model(tmp_path / "w")
    assert main(["predict", "--keep-names", str(CXR_PNG), "--model", "tiny"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{CXR_PNG}: ") and "(model scores: A " in out and out.count("%") == 3


def test_models_table_and_empty_registry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "empty"))
    assert main(["models"]) == 0
    assert "no models registered" in capsys.readouterr().out
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "w"))
    tiny_registered_model(tmp_path / "w")
    assert main(["models"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:3] == ["tiny", "ready", "custom"] and line.endswith("A, B, C")


def test_import_model_registers_and_refuses_a_class_mismatch(tmp_path, monkeypatch, capsys):
    model = tiny_registered_model(tmp_path / "scratch")
    model.save(tmp_path / "outside.keras")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "w"))
    args = ["import-model", str(tmp_path / "outside.keras"), "--name", "outside", "--arch", "custom"]
    assert main([*args, "--classes", "Normal", "Pneumonia", "COVID-19"]) == 0
    assert capsys.readouterr().out.strip() == ("registered outside: custom, 3 classes, input 32, Grad-CAM layer conv, "
                                               "outputs probabilities (detected)")
    card = json.loads((tmp_path / "w" / "outside" / "card.json").read_text())
    assert card["classes"] == ["Normal", "Pneumonia", "COVID-19"] and len(card["sha256"]) == 64
    assert main([*args, "--classes", "Normal", "Pneumonia"]) == 2
    assert "outputs shape (None, 3), but its card lists 2 classes" in capsys.readouterr().err


def test_missing_required_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--keep-names", str(CXR_PNG)])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_predict_out_keeps_every_input_when_two_share_a_file_stem(tiny_registry, tmp_path, monkeypatch):
    """Two films named study.png in different folders: both results are written, none overwritten."""
    import io as _io

    from PIL import Image as _Image

    from cxr_core.cli import main

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tiny_registry))
    rng = np.random.default_rng(1)
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "study.png"
        _Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(path)
        paths.append(path)
    out = tmp_path / "out"
    main(["predict", "--keep-names", *map(str, paths), "--model", "tiny-effnet", "--allow-ood", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["study-2.json", "study.json"]
    records = [json.loads((out / n).read_text()) for n in ("study.json", "study-2.json")]
    assert [r["file"] for r in records] == [str(p) for p in paths]
