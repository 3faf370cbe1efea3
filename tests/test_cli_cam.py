"""``predict --cam``: JSON, heatmap .npy and overlay PNG per input, at each X-ray's own size."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from cxr_core.cli import main
from cxr_core.cli.commands.predict import COLORMAP_CHOICES
from cxr_core.explain.overlay import COLORMAPS


def write_png(path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    img = 0.4 + 0.4 * np.sin(rows / 9.0 + rng.uniform(0, 3)) * np.cos(cols / 13.0)
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def films(tmp_path):
    paths = [tmp_path / "tall.png", tmp_path / "wide.png"]
    write_png(paths[0], 130, 90, 0)
    write_png(paths[1], 80, 150, 1)
    return paths


def test_cam_writes_json_heatmap_and_overlay_at_original_size(use_registry, films, tmp_path, capsys):
    out = tmp_path / "out"
    # --allow-ood: the synthetic "wide" film (aspect 1.88) would be refused as not a chest X-ray
    code = main(["predict", "--keep-names",
                 *map(str, films), "--model", "tiny-effnet", "--cam", "gradcam", "--out", str(out),
                 "--allow-ood"])
    assert code == 0
    assert "gradcam heatmap for" in capsys.readouterr().out
    for path, shape in zip(films, [(130, 90), (80, 150)]):
        record = json.loads((out / f"{path.stem}.json").read_text())
        assert record["model"] == "tiny-effnet" and record["cam"]["method"] == "gradcam"
        assert record["cam"]["target"] == record["predicted"] and record["cam"]["grid_size"] == [2, 2]
        heat = np.load(out / f"{path.stem}.heatmap.npy")
        assert heat.dtype == np.float32 and heat.shape == shape
        assert heat.min() >= 0 and heat.max() <= 1 and (record["cam"]["all_zero"] or heat.max() == 1)
        png = np.asarray(Image.open(io.BytesIO((out / f"{path.stem}.overlay.png").read_bytes())))
        assert png.shape == (*shape, 3) and png.dtype == np.uint8


def test_target_and_colormap_are_used(use_registry, films, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", "--keep-names", str(films[0]), "--model", "tiny-resnet-3class", "--cam", "gradcam++",
                 "--target", "pneumonia", "--colormap", "gray", "--out", str(out), "--json"])
    assert code == 0
    record = json.loads((out / "tall.json").read_text())
    assert record["cam"] == {**record["cam"], "method": "gradcam++", "target": "Pneumonia", "target_index": 2}
    png = np.asarray(Image.open(out / "tall.overlay.png"))
    assert (png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all()  # gray blend stays grey


def test_without_cam_only_the_json_is_written(use_registry, films, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--keep-names",
                 str(films[1]), "--model", "tiny-effnet", "--out", str(out), "--allow-ood"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["wide.json"]
    assert "cam" not in json.loads((out / "wide.json").read_text())


def test_unknown_target_is_a_one_line_error(use_registry, films, capsys):
    code = main(["predict", "--keep-names", str(films[0]), "--model", "tiny-resnet-3class", "--cam", "gradcam",
                 "--target", "Tuberculosis"])
    assert code == 2
    assert "target 'Tuberculosis' is not a class of this model" in capsys.readouterr().err
    assert main(["predict", "--keep-names", str(films[0]), "--model", "tiny-effnet", "--target", "Normal"]) == 2


def test_cli_colormap_choices_match_the_overlay_module():
    assert COLORMAP_CHOICES == COLORMAPS
