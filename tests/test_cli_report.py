"""``python -m cxr_core report``: computes missing heatmaps, matches ``agree`` per pair, every format parses back.

The study is ``test_session_scores.build_study``: Dr A and Dr B read three synthetic films in the
blind session "Blind 1"; img2 is still pending for Dr B in "Blind 2".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from cxr_core import agreement
from cxr_core.agreement import reports
from cxr_core.agreement import session_scores as ss
from cxr_core.cli import main
from test_session_scores import READINGS, boundary, build_study, model_refs


PASSWORD = "report runner password"


@pytest.fixture
def study(tmp_path, monkeypatch, use_registry):
    """The study, with its reader "Admin" given a password: report needs a logged-in researcher or admin."""
    from cxr_core import auth

    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    built = build_study(url)
    with built.factory().begin() as s:
        auth.reset_password(s, "Admin", PASSWORD)
    monkeypatch.setenv("CXR_PASSWORD", PASSWORD)
    return built


def report(tmp_path, fmt: str, *extra: str) -> tuple[int, str]:
    out = tmp_path / f"report.{fmt}"
    code = main(["report", "--session", "Blind 1", "--format", fmt, "--out", str(out), "--model", "tiny-effnet",
                 "--allow-ood", "--user", "Admin", *extra])  # synthetic films: screening would refuse them
    return code, out.read_text() if out.exists() else ""


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_report_computes_heatmaps_and_matches_agree_on_each_pair(study, use_registry, tmp_path, capsys):
    code, text = report(tmp_path, "csv", "--reader", "Researcher", "--threshold", "0.5", "--no-consensus")
    assert code == 0
    out = capsys.readouterr()
    assert "wrote csv report of session 'Blind 1'" in out.out and "readers Dr A, Dr B," in out.out
    assert "heatmaps computed" in out.err  # progress of the missing ones
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 * len(READINGS)  # Grad-CAM and random baseline for every reading
    assert {r["reader"] for r in rows} == {"Dr A", "Dr B"}  # --no-consensus
    assert {r["method"] for r in rows} == {"gradcam", "random"} and {r["threshold"] for r in rows} == {"0.5"}

    with study.factory().begin() as s:
        data = ss.read_session(s, "Blind 1")
        ref = model_refs(use_registry)["tiny-effnet"]
        pairsets = {m: ss.load_pairs(s, data, ref, m) for m in ("gradcam", "random")}
    for row in rows:
        pairs = pairsets[row["method"]]
        i = next(i for i, k in enumerate(pairs.keys) if (k.image_id, k.reader) == (row["image_id"], row["reader"]))
        heatmap, mask = pairs.pair(i)
        np.save(tmp_path / "heatmap.npy", heatmap)
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
        assert main(["agree", "--heatmap", str(tmp_path / "heatmap.npy"), "--mask", str(tmp_path / "mask.png"),
                     "--threshold", "0.5", "--json"]) == 0
        agreed = json.loads(capsys.readouterr().out)
        for field in agreement.METRICS:
            got = float(row[field]) if row[field] else math.nan
            want = math.nan if agreed[field] is None else agreed[field]
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12), (row, field)

    # Stored now: a second run in a fresh process loads no model and gives the same numbers.
    env = {**os.environ, "CXR_WEIGHTS_DIR": str(use_registry), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "cxr_core", "report", "--session", "Blind 1", "--format", "csv",
                           "--out", str(tmp_path / "again.csv"), "--model", "tiny-effnet", "--reader", "Researcher",
                           "--threshold", "0.5", "--no-compute", "--allow-ood", "--no-consensus", "--user", "Admin"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again.csv").read_text() == text


def test_json_html_and_coco_parse_back(study, use_registry, tmp_path):
    assert report(tmp_path, "csv", "--reader", "Researcher")[0] == 0  # computes the heatmaps
    code, text = report(tmp_path, "json", "--reader", "Researcher", "--no-compute", "--rule", "full")
    assert code == 0
    payload = json.loads(text)
    assert payload["meta"]["session"] == "Blind 1" and payload["method"]["rules"] == ["full"]
    assert len(payload["scores"]) == 2 * 2 * len(READINGS) and payload["diagnosis"]["n"] == len(READINGS)
    assert {s["reader"] for s in payload["scores"]} == {"Dr A", "Dr B", *ss.CONSENSUS_READERS}
    assert payload["meta"]["consensus_readers"] == list(ss.CONSENSUS_READERS) and payload["excluded"]["n"] == 0
    assert payload["meta"]["models"][0]["sha256"] == model_refs(use_registry)["tiny-effnet"].checksum
    assert {g["method"] for g in payload["groups"]} == {"gradcam", "random"}

    code, html = report(tmp_path, "html", "--reader", "Researcher", "--no-compute", "--gallery", "2")
    assert code == 0
    from cxr_core.agreement.session_report import session_report

    again = session_report(study.factory(), "Blind 1", [(model_refs(use_registry)["tiny-effnet"], None)],
                           reader="Researcher", compute=False, gallery=2).report
    assert again.gallery, "the tiny model localises nothing at all"
    parser = Images()
    parser.feed(html)
    assert [reports.case_uri(c) for c in again.gallery] == parser.srcs  # every gallery image, in order
    assert "Model scores are not diagnoses" in html and "<script" in html  # plotly inline: opens offline

    code, text = report(tmp_path, "coco", "--reader", "Researcher", "--no-compute")
    assert code == 0
    coco = json.loads(text)
    experts = [a for a in coco["annotations"] if a["attributes"]["source"] == "expert"]
    heat = [a for a in coco["annotations"] if a["attributes"]["source"] == "model"]
    assert len(experts) == sum(len(rects) for *_, rects in READINGS)  # one per drawn rectangle
    assert heat and {a["attributes"]["method"] for a in heat} == {"gradcam"}
    with study.factory().begin() as s:
        masks = {(r.image_id, r.reader): r.mask for r in ss.read_session(s, "Blind 1").readings}
    union = {}
    for a in experts:  # pycocotools fills each rectangle's polygon; edges lie on half pixels (the stroke's)
        from pycocotools import mask as mask_utils

        key = (a["attributes"]["image_key"], a["attributes"]["reader"])
        h, w = masks[key].shape
        region = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))[..., 0].astype(bool)
        union[key] = union.get(key, np.zeros((h, w), bool)) | region
    assert union.keys() == {k for k, m in masks.items() if m.any() and not k[1].startswith("Consensus")}
    for key, m in union.items():  # so the fills may differ on the edge, and nowhere else
        assert not ((m ^ masks[key]) & ~boundary(masks[key])).any()
        assert (m & masks[key]).sum() / (m | masks[key]).sum() > 0.85
    assert [im["file_name"] for im in coco["images"]] == ["img0.png", "img1.png", "img2.png"]


def test_images_pending_blind_reading_are_left_out(study, tmp_path, capsys):
    code, text = report(tmp_path, "csv", "--threshold", "top10%")  # nobody named: pending for anyone hides
    assert code == 0
    assert "1 image(s) left out: still pending in a blind reading (no --reader given" in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and "img2.png" not in {r["image_id"] for r in rows}
    code, text = report(tmp_path, "csv", "--reader", "Dr B", "--no-compute")
    assert code == 0 and "img2.png" not in text and "of Dr B" in capsys.readouterr().err
    code, text = report(tmp_path, "csv", "--reader", "Dr A", "--no-compute")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["image_id"] for r in rows} == {"img0.png", "img1.png"}  # img2 visible to Dr A, not yet computed
    assert "8 reading x model pairs have no stored heatmap" in capsys.readouterr().err  # 2 readers, 2 consensus


@pytest.mark.parametrize("args, message", [
    (["--session", "Nope"], "no reading session named 'Nope'; sessions: 'Blind 1', 'Blind 2'"),
    (["--model", "nope"], "model 'nope' is not registered; ready models:"),
    (["--threshold", "lots"], "threshold"),
    (["--reader", "Dr X"], "no reader named 'Dr X'"),
    (["--gallery", "-1"], "--gallery -1"),
])
def test_bad_input_exits_2_with_one_line(study, tmp_path, capsys, args, message):
    base = {"--session": "Blind 1", "--format": "csv", "--out": str(tmp_path / "r.csv"), "--no-compute": None,
            "--user": "Admin"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["report"] + [x for k, v in base.items() for x in ((k,) if v is None else (k, v))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r.csv").exists()


def test_unknown_format_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--session", "Blind 1", "--format", "pdf", "--out", str(tmp_path / "r.pdf")])
    assert exc.value.code == 2 and "invalid choice: 'pdf'" in capsys.readouterr().err


def test_images_that_do_not_look_like_chest_films_are_not_analysed(study, tmp_path, capsys):
    """Without --allow-ood a noise image read in a session is refused: no scores, listed with its reasons."""
    from cxr_core import annotation as ann
    from cxr_core import storage

    factory = storage.session_factory(storage.make_engine(study.url))
    noise = np.random.default_rng(0).uniform(0, 1, (96, 96)).astype(np.float32)
    with factory.begin() as s:
        sha = storage.add_image(s, noise, original_name="noise.png").sha256
        session = storage.create_session(s, name="Noise", image_shas=[sha], reader_ids=[study.readers["Dr A"]],
                                         created_by=study.readers["Admin"], blind=False, shuffle=False)
        storage.submit_annotation(
            s, reader_id=study.readers["Dr A"], image_sha=sha, session_id=session.id, diagnosis="COVID-19",
            confidence=3, canvas_json={"objects": [{"type": "Rect", "left": 10, "top": 10, "width": 30,
                                                    "height": 30, "originX": "left", "originY": "top",
                                                    "strokeWidth": 0}]},
            canvas_width=96, canvas_height=96, background_fit=ann.contain_fit(96, 96, 96, 96),
            labels=["consolidation"])
    out = tmp_path / "refused.json"
    code = main(["report", "--session", "Noise", "--format", "json", "--out", str(out), "--model", "tiny-effnet",
                 "--user", "Admin"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert [r["image_id"] for r in doc["refused"]] == ["noise.png"]
    assert doc["refused"][0]["model"] == "tiny-effnet" and doc["refused"][0]["reasons"]
    assert doc["scores"] == []
    assert "not analysed by tiny-effnet: noise.png does not look like a frontal chest X-ray" in capsys.readouterr().err


def test_excluded_readings_are_left_out_and_counted(study, tmp_path, capsys):
    from cxr_core import storage

    with study.factory().begin() as s:
        first = storage.latest_annotation(s, reader_id=study.readers["Dr B"], image_sha=study.shas[1],
                                          session_id=study.session_id)
        storage.revise_annotation(s, first.id, exclusion="not readable")
    code, text = report(tmp_path, "csv", "--reader", "Researcher", "--threshold", "top10%")
    assert code == 0
    err = capsys.readouterr().err
    assert "note: 1 reading excluded by readers (1 not readable): left out of every number." in err
    rows = list(csv.DictReader(io.StringIO(text)))
    scored = [r for r in rows if not r["excluded"]]
    assert ("img1.png", "Dr B") not in {(r["image_id"], r["reader"]) for r in scored}
    assert {r["reader"] for r in scored if r["image_id"] == "img1.png"} == {"Dr A"}  # one reader left: no consensus
    assert [(r["image_id"], r["reader"], r["excluded"]) for r in rows if r["excluded"]] == [
        ("img1.png", "Dr B", "not readable")]
    code, text = report(tmp_path, "html", "--reader", "Researcher", "--no-compute", "--gallery", "0")
    assert code == 0 and "1 reading excluded by readers (1 not readable)" in text
