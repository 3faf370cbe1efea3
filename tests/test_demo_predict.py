"""The shipped demo model on real sample films through ``python -m cxr_core predict --cam --out``, as a user runs it.

The synthetic-model tests never met the film that stopped this path: a 224 x 224 pneumonia film whose
upsampled Grad-CAM dipped to -1e-12 and was refused by the overlay, ending the run after the first file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

DEMO = "demo-efficientnetv2b0"
FILMS = [  # the second one made the old code stop; sizes differ so maps must come back at each film's own size
    "normal_kermany224_IM-0031-0001.png",
    "pneumonia_kermany224_person109_bacteria_513.png",
    "covid_hannover_0957ce54.png",
    "normal_nih14_00030238_000.png",
]

pytestmark = pytest.mark.skipif(not (REPO / "weights" / DEMO / "model.keras").exists(),
                                reason="the demo model's weights are not in this checkout")


def _tree_digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_predict(paths, out, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CXR_WEIGHTS_DIR": str(REPO / "weights"), "CXR_DATA_DIR": str(tmp_path / "data"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("CXR_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "cxr_core", "predict", "--keep-names",
           *map(str, paths), "--model", DEMO, "--cam", "gradcam",
           "--out", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One CLI call over four real films of three sizes (the slow part, shared by the tests)."""
    tmp = tmp_path_factory.mktemp("demo-predict")
    before = _tree_digest(REPO / "weights" / DEMO)
    proc = _run_predict([REPO / "data" / "samples" / name for name in FILMS], tmp / "out", tmp)
    return proc, tmp / "out", before


def test_every_film_gets_json_heatmap_and_overlay(demo_run):
    proc, out, _ = demo_run
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.iterdir())) == 3 * len(FILMS)
    for name in FILMS:
        stem = name.removesuffix(".png")
        shape = np.asarray(Image.open(REPO / "data" / "samples" / name)).shape
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["model"] == DEMO and record["cam"]["method"] == "gradcam", record
        assert record["cam"]["target"] == record["predicted"]
        assert abs(sum(record["probabilities"].values()) - 1.0) < 1e-5
        heat = np.load(out / f"{stem}.heatmap.npy")
        assert heat.dtype == np.float32 and heat.shape == shape
        assert heat.min() == 0.0 and heat.max() == 1.0, (name, heat.min(), heat.max())
        png = np.asarray(Image.open(io.BytesIO((out / f"{stem}.overlay.png").read_bytes())))
        assert png.shape == (*shape, 3) and png.dtype == np.uint8
        assert f"{name}: {record['predicted']} (model scores:" in proc.stdout


def test_the_run_leaves_the_tracked_model_folder_untouched(demo_run):
    _, _, before = demo_run
    assert _tree_digest(REPO / "weights" / DEMO) == before


def test_a_corrupt_file_is_reported_and_the_others_still_get_outputs(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    films = [REPO / "data" / "samples" / FILMS[1], broken, REPO / "data" / "samples" / FILMS[2]]
    proc = _run_predict(films, tmp_path / "out", tmp_path)
    assert proc.returncode == 2, proc.stderr  # one file failed
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0], proc.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"{p.stem}{suffix}" for p in (films[0], films[2])
                             for suffix in (".json", ".heatmap.npy", ".overlay.png"))
