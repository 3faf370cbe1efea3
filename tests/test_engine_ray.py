"""The archive engines (issue 17): local and Ray give the same Parquet rows; a rerun resumes; no Ray, a clear message.

Real films (tests/fixtures/cxr), the shipped demo model and the lung U-Net; a colour picture (refused) and a
broken file (unreadable) ride along so refusal and error rows are compared too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, REPO

DEMO = "demo-efficientnetv2b0"
FILMS = sorted((FIXTURES / "cxr").glob("*.png"))

pytestmark = pytest.mark.skipif(not (REPO / "weights" / DEMO / "model.keras").exists(),
                                reason="demo model weights not shipped in this checkout")


def _films_folder(root: Path) -> Path:
    folder = root / "films"
    folder.mkdir()
    for f in FILMS:
        shutil.copy2(f, folder / f.name)
    rng = np.random.default_rng(0)
    photo = np.zeros((256, 256, 3), np.uint8)
    photo[..., 0], photo[..., 1] = 230, rng.integers(0, 255, (256, 256))
    Image.fromarray(photo).save(folder / "zz_holiday.png")  # a colour picture: refused by the screen
    (folder / "zz_broken.png").write_bytes(b"not a png at all")  # unreadable: an error row, no hash
    return folder


def _cli(args: list[str], tmp: Path, **env_changes) -> subprocess.CompletedProcess:
    env = {**os.environ, "CXR_WEIGHTS_DIR": str(REPO / "weights"), "CXR_DATA_DIR": str(tmp / "data"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DEDUP_LOGS": "0",
           "CXR_BACKEND": "tensorflow"}  # the reference engine (OpenVINO has its own equivalence tests)
    env.pop("CXR_DATABASE_URL", None)
    for key, value in env_changes.items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    return subprocess.run([sys.executable, "-m", "cxr_core", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def _rows(folder: Path) -> list[dict]:
    from cxr_core.engines.batch import ParquetStore

    return sorted(ParquetStore(folder).read().to_pylist(), key=lambda r: (r["film_sha256"] or "", r["file"]))


def test_local_and_ray_audit_rows_identical(tmp_path):
    pytest.importorskip("ray", reason="install requirements-scale.txt for --engine ray")
    films = _films_folder(tmp_path)
    args = ["audit", "--model", DEMO, "--data", str(films), "--batch-size", "2"]
    # A 1-CPU Ray actor runs TensorFlow on one thread (Ray sets OMP_NUM_THREADS=1); the local run does the same so
    # the float32 sums are added in the same order and the numbers match to the last bit.
    local = _cli([*args, "--engine", "local", "--parquet", str(tmp_path / "local")], tmp_path, OMP_NUM_THREADS="1")
    ray = _cli([*args, "--engine", "ray", "--parquet", str(tmp_path / "ray")], tmp_path, OMP_NUM_THREADS=None)
    assert local.returncode == 2, local.stderr[-3000:]  # a refused and an unreadable film: exit 2, like predict
    assert ray.returncode == 2, ray.stderr[-3000:]
    assert "ray engine: 6 film(s) listed" in ray.stdout and "4 scored, 1 refused" in ray.stdout
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(a) == len(b) == 6
    assert a == b  # every column: hashes, classes, refusals, probabilities, heatmap figures, region shares

    shas = {r["file"]: r["film_sha256"] for r in a}
    from cxr_core.io.imaging import load_xray

    from cxr_core.engines.batch import BatchSpec

    file_id = BatchSpec(DEMO).file_id  # rows name a file by a key of its path, never by the name itself
    assert not any(".png" in r["file"] or "holiday" in r["file"] for r in a)
    for f in FILMS:  # keyed by the pixel SHA-256 the rest of the app uses
        assert shas[file_id(str(films / f.name))] == load_xray(f).sha256
    refused = [r for r in a if r["refused"]]
    assert [r["file"] for r in refused] == [file_id(str(films / "zz_holiday.png"))]
    assert refused[0]["predicted"] is None and refused[0]["probabilities"] is None and refused[0]["refusal"]
    broken = [r for r in a if r["error"]]
    assert [r["file"] for r in broken] == [file_id(str(films / "zz_broken.png"))] and broken[0]["film_sha256"] is None
    scored = [r for r in a if r["predicted"] is not None]
    assert len(scored) == 4
    for r in scored:
        assert r["classes"] == ["COVID-19", "Normal", "Pneumonia"]
        assert abs(sum(r["probabilities"]) - 1) < 1e-5 and r["predicted"] == r["classes"][
            int(np.argmax(r["probabilities"]))]
        assert r["heatmap_method"] == "gradcam" and 0 <= r["heatmap_peak_row"] <= 1
        assert 0 <= r["share_outside_lungs"] <= 1 and 0 < r["area_outside_lungs"] < 1
        assert r["lung_source"] == "estimate" and r["engine"].startswith("TensorFlow")

    # Either engine resumes the other's Parquet: the local engine picks up the Ray run and redoes nothing.
    again = _cli([*args, "--engine", "local", "--parquet", str(tmp_path / "ray")], tmp_path)
    assert "5 already in the results (skipped), 0 scored" in again.stdout, again.stdout + again.stderr[-2000:]
    kept = [r for r in _rows(tmp_path / "ray") if r["film_sha256"]]
    assert kept == [r for r in b if r["film_sha256"]]  # nothing redone; only the unreadable film is tried again


def test_rerun_resumes_instead_of_redoing(tmp_path, monkeypatch):
    import cxr_core.analysis as analysis
    from cxr_core.engines.batch import BatchSpec, ParquetStore, list_films, run_local
    from cxr_core.errors import DataError

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(REPO / "weights"))
    calls: list[int] = []
    real = analysis.analyse_films

    def counting(model, films, **kwargs):
        calls.append(len(films))
        return real(model, films, **kwargs)

    monkeypatch.setattr(analysis, "analyse_films", counting)
    folder = tmp_path / "films"
    folder.mkdir()
    for f in FILMS[:2]:
        shutil.copy2(f, folder / f.name)
    spec, out = BatchSpec(DEMO, "predict", batch_size=4), tmp_path / "out"
    first = run_local(list_films([folder]), spec, out)
    assert sum(calls) == 2 and first.scored == 2 and len(ParquetStore(out).read()) == 2
    before = _rows(out)

    for f in FILMS[2:]:
        shutil.copy2(f, folder / f.name)
    shutil.copy2(FILMS[0], folder / "same_film_renamed.png")  # same pixels: skipped by hash
    calls.clear()
    second = run_local(list_films([folder]), spec, out)
    assert sum(calls) == len(FILMS) - 2  # only the new films went through the model
    assert (second.skipped_by_file, second.skipped_by_hash, second.scored) == (2, 1, len(FILMS) - 2)
    rows = _rows(out)
    assert len(rows) == len(FILMS) and [r for r in rows if r["file"] in {b["file"] for b in before}] == before

    calls.clear()
    third = run_local(list_films([folder]), spec, out)
    assert calls == []  # nothing left to score: the model is not even loaded
    assert third.scored == 0 and _rows(out) == rows

    with pytest.raises(DataError, match="holds results of demo-efficientnetv2b0 \\(predict\\)"):
        run_local(list_films([folder]), BatchSpec(DEMO, "audit"), out)  # one folder, one model and mode


def test_missing_ray_says_what_to_install(monkeypatch, tmp_path):
    from cxr_core.engines.batch import BatchSpec, FilmEntry
    from cxr_core.engines.ray_engine import RayUnavailableError, require_ray, run_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(RayUnavailableError, match="install requirements-scale.txt for --engine ray"):
        require_ray()
    with pytest.raises(RayUnavailableError, match="requirements-scale.txt"):
        run_ray([FilmEntry.of(FILMS[0])], BatchSpec(DEMO), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ray_without_parquet_is_refused(tmp_path):
    proc = _cli(["predict", str(FILMS[0]), "--model", DEMO, "--engine", "ray"], tmp_path)
    assert proc.returncode != 0 and "add --parquet OUT" in proc.stderr


def test_predict_parquet_from_files_and_manifest(tmp_path, monkeypatch, capsys):
    from cxr_core.cli import main

    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(REPO / "weights"))
    (tmp_path / "manifest.csv").write_text("file,label\n" + "".join(f"{f},{f.name.split('_')[0]}\n" for f in FILMS[1:]))
    out = tmp_path / "rows"
    code = main(["predict", str(FILMS[0]), str(tmp_path / "manifest.csv"), str(FILMS[1]), "--model", DEMO,
                 "--cam", "gradcam", "--parquet", str(out), "--keep-names"])  # a researcher's local run: paths kept
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"local engine: {len(FILMS) + 1} film(s) listed, 1 already in the results" in printed  # FILMS[1] twice
    rows = _rows(out)
    from cxr_core.io.imaging import load_xray

    assert sorted(r["film_sha256"] for r in rows) == sorted(load_xray(f).sha256 for f in FILMS)
    labels = {Path(r["file"]).name: r["label"] for r in rows}
    assert labels[FILMS[0].name] == "" and labels[FILMS[1].name]  # a bare file has no label; the manifest's do
    assert all(r["mode"] == "predict" and r["heatmap_method"] == "gradcam" and r["share_outside_lungs"] is None
               for r in rows)
