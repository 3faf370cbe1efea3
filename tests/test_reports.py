"""Reports: CSV, JSON and COCO parse back to what went in; the HTML is offline and holds the gallery."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.agreement import aggregate, diagnosis_agreement, reader_agreement, score_records
from cxr_core.agreement.reports import (
    CSV_FIELDS,
    EXPERT_RGB,
    HEATMAP_RGB,
    CocoAnnotation,
    CocoImage,
    GalleryCase,
    Report,
    ReportError,
    case_uri,
    make_case,
    pick_cases,
    render_case,
    rle_decode,
    rle_encode,
    to_coco,
    to_csv,
    to_html,
    to_json,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _tags(page: str) -> list[tuple[str, dict]]:
    """Every start tag with its attributes (script bodies are not parsed as markup)."""
    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collect().feed(page)
    return found


@pytest.fixture(scope="module")
def session():
    """Scores of two models on three real lung masks (one image marked Normal), plus the arrays."""
    masks = [np.asarray(Image.open(p)) > 0 for p in sorted((FIXTURES / "lung_masks").glob("hannover_*.png"))]
    shape = (64, 80)  # small copies keep the HTML test fast
    masks = [np.asarray(Image.fromarray(m).resize(shape[::-1], Image.NEAREST)) for m in masks]
    rng = np.random.default_rng(0)
    gts = np.stack(masks)
    ids, targets = ["img0", "img1", "img2"], ["COVID-19", "COVID-19", "Normal"]
    heatmaps = {m: rng.random((3, 7, 7)) for m in ("resnet50", "vgg16")}
    scores = []
    for model, maps in heatmaps.items():
        scores += score_records(maps, gts, image_ids=ids, model=model, method="gradcam", target=targets,
                                reader="dr1", session="s1")
    return scores, gts, heatmaps


def test_csv_parses_back_one_row_per_score(session):
    scores, _, _ = session
    rows = list(csv.DictReader(io.StringIO(to_csv(scores))))
    assert len(rows) == len(scores) and tuple(rows[0]) == CSV_FIELDS
    for row, s in zip(rows, scores):
        for key, value in s.to_dict().items():
            if isinstance(value, float):
                assert (row[key] == "" and math.isnan(value)) or float(row[key]) == value
            else:
                assert row[key] == value


def test_json_holds_everything_and_parses_back(session):
    scores, gts, _ = session
    report = Report("Session s1", scores, groups=aggregate(scores, n_boot=100),
                    reader_pairs=reader_agreement({"img0": {"dr1": gts[0], "dr2": gts[1]}}),
                    diagnosis=diagnosis_agreement(["COVID-19", "Normal"], ["COVID-19", "COVID-19"]),
                    meta={"session": "s1", "weights_sha256": {"resnet50": "ab" * 32}})
    doc = json.loads(to_json(report))
    assert doc["method"]["thresholds"] == ["otsu"] and doc["method"]["rules"] == ["true_positive_only"]
    assert any("CheXlocalize" in line for line in doc["method"]["conventions"])
    assert {"numpy", "opencv", "scikit-learn", "cxr_core"} <= set(doc["versions"])
    assert doc["checksums"]["scores_csv_sha256"] == hashlib.sha256(to_csv(scores).encode()).hexdigest()
    assert doc["meta"]["weights_sha256"]["resnet50"] == "ab" * 32
    for got, s in zip(doc["scores"], scores):
        assert got["threshold"] == "otsu" and got["image_id"] == s.image_id
        assert (got["iou"] is None and math.isnan(s.iou)) or got["iou"] == s.iou
    assert len(doc["groups"]) == len(report.groups) and doc["groups"][-1]["normal"] is True
    assert doc["reader_pairs"][0]["reader_b"] == "dr2"
    assert doc["diagnosis"]["matrix"] == [[1, 0], [1, 0]]


def test_rle_hand_computed_and_round_trip():
    # column-major: (0,0) (1,0) | (0,1) (1,1) | (0,2) (1,2) = 0 0 | 1 0 | 1 1 -> runs 2 zeros, 1, 1, 2
    assert rle_encode(np.array([[0, 1, 1], [0, 0, 1]], bool)) == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    assert rle_encode(np.array([[1, 0], [0, 0]], bool))["counts"] == [0, 1, 3]  # starts inside: 0 zeros first
    rng = np.random.default_rng(1)
    for m in (rng.random((17, 23)) > 0.5, np.ones((4, 5), bool), np.zeros((4, 5), bool)):
        np.testing.assert_array_equal(rle_decode(rle_encode(m)), m)
    with pytest.raises(ReportError, match="sum to h\\*w = 6"):
        rle_decode({"size": [2, 3], "counts": [2, 1]})
    with pytest.raises(ReportError, match="compressed"):
        rle_decode({"size": [2, 3], "counts": "52203"})


def test_coco_parses_back_to_the_same_masks(session):
    _, gts, _ = session
    anns = [CocoAnnotation("img0", "img0.png", "lungs", gts[0], reader="dr1"),
            CocoAnnotation("img0", "img0.png", "lungs", gts[1], reader="dr2"),
            CocoAnnotation("img1", "img1.png", "lungs", np.zeros_like(gts[0]), reader="dr1")]
    doc = json.loads(to_coco(anns))
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in doc["images"]] == [
        (1, "img0.png", 64, 80), (2, "img1.png", 64, 80)]
    assert doc["categories"] == [{"id": 1, "name": "lungs", "supercategory": ""}]
    assert len(doc["annotations"]) == 2  # the empty mask lists its image but adds no annotation
    for ann, gt in zip(doc["annotations"], gts[:2]):
        np.testing.assert_array_equal(rle_decode(ann["segmentation"]), gt)
        rows, cols = np.nonzero(gt)
        assert ann["area"] == gt.sum() and ann["iscrowd"] == 1
        assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
    assert [a["attributes"]["reader"] for a in doc["annotations"]] == ["dr1", "dr2"]
    with pytest.raises(ReportError, match="masks of sizes"):
        to_coco([anns[0], CocoAnnotation("img0", "img0.png", "lungs", np.zeros((3, 3), bool))])


def test_render_case_draws_both_outlines_in_their_colours():
    image = np.full((40, 40), 0.5)
    expert, predicted = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    expert[5:15, 5:15] = True
    predicted[20:35, 20:35] = True
    rgb = render_case(image, expert, predicted)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[5, 10]) == EXPERT_RGB and tuple(rgb[20, 25]) == HEATMAP_RGB  # on each boundary
    assert tuple(rgb[10, 10]) == (128, 128, 128) and tuple(rgb[0, 0]) == (128, 128, 128)  # inside and out: gray
    with pytest.raises(ReportError, match="differs from image shape"):
        render_case(image, expert[:10], predicted)


def test_make_case_outlines_the_mask_that_was_scored(session):
    scores, gts, heatmaps = session
    s = scores[0]  # resnet50 on img0
    case = make_case(s, np.zeros(gts[0].shape), gts[0], heatmaps["resnet50"][0], kind="best")
    assert case.kind == "best" and case.predicted.shape == gts[0].shape
    assert case.predicted.mean() == s.pred_fraction  # the same binarisation as the score


def test_pick_cases_lowest_and_highest_without_overlap(session):
    scores, _, _ = session
    finite = sorted((s for s in scores if not math.isnan(s.iou)), key=lambda s: s.iou)
    worst, best = pick_cases(scores, k=2)
    assert worst == finite[:2] and best == finite[::-1][:2]
    worst, best = pick_cases(scores, k=len(finite))
    assert worst == finite and best == []


def test_html_is_offline_and_contains_every_gallery_image(session):
    scores, gts, heatmaps = session
    worst, best = pick_cases(scores, k=1)
    cases = []
    for kind, picked in (("worst", worst), ("best", best)):
        for s in picked:
            i = ["img0", "img1", "img2"].index(s.image_id)
            image = np.linspace(0, 1, gts[i].size).reshape(gts[i].shape)
            predicted = np.roll(gts[i], 5, axis=1)
            cases.append(GalleryCase(s, image, gts[i], predicted, kind))
    report = Report("Session <s1>", scores, groups=aggregate(scores, n_boot=100), gallery=cases,
                    meta={"session": "s1"})
    page = to_html(report)
    assert page.startswith("<!DOCTYPE html>") and "Session &lt;s1&gt;" in page
    for case in cases:
        assert case_uri(case) in page
    tags = _tags(page)
    assert [a["src"] for t, a in tags if t == "img"] == [case_uri(c) for c in cases]
    external = [a for t, a in tags if (t == "script" and "src" in a) or (t == "link" and "href" in a)]
    assert external == []  # plotly.js is inline: the page opens offline
    assert sum(t == "script" for t, _ in tags) >= 3 and "plotly.js v" in page  # the library, then 2 charts
    assert "not diagnoses" in page and "true_positive_only" in page and "CheXlocalize" in page
    assert "Normal images (reported apart)" in page


def test_refused_images_are_listed_with_their_reasons(session):
    scores, _, _ = session
    refused = [{"image_id": "holiday.jpg", "model": "resnet50",
                "reasons": ["This is a colour picture (a photograph or a figure), not an X-ray."],
                "details": ["colourfulness 0.31, limit 0.06"]}]
    report = Report("Session s1", scores, refused=refused)
    assert json.loads(to_json(report))["refused"] == refused
    page = to_html(report)
    assert "<h2>Not analysed</h2>" in page and "<td>holiday.jpg</td>" in page and "colour picture" in page
    assert "<td>colourfulness 0.31, limit 0.06</td>" in page  # the measured figures beside the reasons
    [row] = [r for r in csv.DictReader(io.StringIO(to_csv(scores, refused=refused))) if r["not_analysed"]]
    assert row["image_id"] == "holiday.jpg" and row["model"] == "resnet50" and row["iou"] == ""
    assert row["not_analysed"] == "This is a colour picture (a photograph or a figure), not an X-ray. " \
                                  "(colourfulness 0.31, limit 0.06)"
    assert "Not analysed" not in to_html(Report("Session s1", scores))
    assert json.loads(to_json(Report("Session s1", scores)))["refused"] == []


EXCLUDED = [{"image_id": "img3", "reader": "dr2", "reason": "not readable"},
            {"image_id": "img4", "reader": "dr1", "reason": "not a chest film"},
            {"image_id": "img5", "reader": "dr1", "reason": "not readable"}]


def test_excluded_readings_are_counted_in_every_export(session):
    scores, _, _ = session
    rows = list(csv.DictReader(io.StringIO(to_csv(scores, EXCLUDED))))
    assert len(rows) == len(scores) + 3 and all(r["excluded"] == "" for r in rows[:len(scores)])
    assert [(r["image_id"], r["reader"], r["session"], r["excluded"], r["iou"], r["model"]) for r in rows[-3:]] == [
        ("img3", "dr2", "s1", "not readable", "", ""), ("img4", "dr1", "s1", "not a chest film", "", ""),
        ("img5", "dr1", "s1", "not readable", "", "")]
    report = Report("Session s1", scores, excluded=EXCLUDED)
    doc = json.loads(to_json(report))
    note = "3 readings excluded by readers (1 not a chest film, 2 not readable): left out of every number."
    assert doc["excluded"] == {"n": 3, "note": note, "readings": EXCLUDED}
    assert doc["checksums"]["scores_csv_sha256"] == hashlib.sha256(to_csv(scores, EXCLUDED).encode()).hexdigest()
    assert note in to_html(report)
    assert "excluded by readers" not in to_html(Report("Session s1", scores))
    assert json.loads(to_json(Report("Session s1", scores)))["excluded"]["n"] == 0


def test_coco_writes_polygons_and_lists_images_without_masks():
    from pycocotools import mask as mask_utils

    square = np.zeros((20, 30), bool)
    square[4:10, 5:15] = True  # pixels 5..14 x 4..9: the polygon's edges on whole pixels
    polygon = [5, 4, 15, 4, 15, 10, 5, 10]
    doc = json.loads(to_coco(
        [CocoAnnotation("a", "a.png", "nodule/mass", square, reader="dr1", polygon=polygon),
         CocoAnnotation("a", "a.png", "effusion", square, reader="dr2")],
        categories=["nodule/mass", "effusion"],
        images=[CocoImage("b", "b.png", 20, 30, {"readings": [{"reader": "dr1", "exclusion": "not readable"}]}),
                CocoImage("a", "a.png", 20, 30)]))
    assert [(im["id"], im["file_name"]) for im in doc["images"]] == [(1, "b.png"), (2, "a.png")]
    assert doc["images"][0]["attributes"]["readings"][0]["exclusion"] == "not readable"
    poly, rle = doc["annotations"]
    assert (poly["segmentation"], poly["iscrowd"], poly["image_id"], poly["category_id"]) == ([polygon], 0, 2, 1)
    assert rle["iscrowd"] == 1 and rle["category_id"] == 2
    assert poly["area"] == rle["area"] == 60 and poly["bbox"] == rle["bbox"] == [5, 4, 10, 6]
    decoded = mask_utils.decode(mask_utils.frPyObjects([polygon], 20, 30))[..., 0].astype(bool)
    np.testing.assert_array_equal(decoded, square)  # pycocotools fills the polygon to the same pixels


def _plot_traces(page: str, div_id: str) -> list[dict]:
    """The data list of the plotly figure drawn into ``div_id`` (as the page's inline script passes it)."""
    import re

    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert match, f"no figure drawn into {div_id}"
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    return traces


def _values(trace: dict, key: str) -> list:
    """A trace's x or y values, whether plotly wrote a plain list or a typed array (base64 ``bdata``)."""
    import base64

    value = trace[key]
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value)


def test_html_charts_keep_the_cam_method_and_the_random_baseline_apart(session):
    scores, gts, heatmaps = session
    baseline = score_records(heatmaps["vgg16"][::-1], gts, image_ids=["img0", "img1", "img2"], model="resnet50",
                             method="random", target=["COVID-19", "COVID-19", "Normal"], reader="dr1", session="s1")
    mixed = [s for s in scores if s.model == "resnet50"] + baseline
    page = to_html(Report("Session s1", mixed))
    for metric in ("iou", "mass"):
        traces = {t["name"]: t for t in _plot_traces(page, f"chart-{metric}")}
        assert list(traces) == ["resnet50 · Grad-CAM", "resnet50 · random baseline"]
        for name, method in (("resnet50 · Grad-CAM", "gradcam"), ("resnet50 · random baseline", "random")):
            want = [s for s in mixed if s.method == method and math.isfinite(getattr(s, metric))]
            assert _values(traces[name], "y") == pytest.approx([getattr(s, metric) for s in want])
            assert _values(traces[name], "x") == [s.target for s in want]
        assert traces["resnet50 · random baseline"]["marker"]["color"] == "#999999"
        assert _values(traces["resnet50 · Grad-CAM"], "y") != _values(traces["resnet50 · random baseline"], "y")


def test_csv_cells_that_would_run_as_formulas_are_neutralised(session):
    from dataclasses import replace

    scores, _, _ = session
    hostile = [replace(s, reader="=HYPERLINK(\"http://x\")", image_id="@SUM(A1)", session="+1") for s in scores[:2]]
    excluded = [{"image_id": "-2+3", "reader": "=cmd", "reason": "not readable"}]
    rows = list(csv.DictReader(io.StringIO(to_csv(hostile, excluded))))
    assert [r["reader"] for r in rows] == ["'=HYPERLINK(\"http://x\")"] * 2 + ["'=cmd"]
    assert rows[0]["image_id"] == "'@SUM(A1)" and rows[0]["session"] == "'+1" and rows[2]["image_id"] == "'-2+3"
    assert float(rows[0]["iou"]) == hostile[0].iou or (rows[0]["iou"] == "" and math.isnan(hostile[0].iou))


def test_html_escapes_names_so_a_script_or_markup_in_a_name_stays_text(session):
    """Reader, session, image, model names and refusal reasons are text in the page, never markup."""
    from dataclasses import replace

    scores, gts, _ = session
    script = "<script>alert('x')</script>"
    hostile = [replace(s, reader=f"Dr {script}", session=f"s1 {script}", image_id=f"**{s.image_id}**<img src=x>",
                       target=f"{s.target}{script}") for s in scores]
    image = np.linspace(0, 1, gts[0].size).reshape(gts[0].shape)
    case = GalleryCase(hostile[0], image, gts[0], gts[0], "worst")
    report = Report(f"Session {script} _md_ [link](http://x)", hostile, groups=aggregate(hostile, n_boot=50),
                    gallery=[case], meta={"session": script},
                    refused=[{"image_id": "<b>film.png</b>", "model": script, "reasons": ["<i>wide</i>"]}],
                    excluded=[{"image_id": "img9", "reader": script, "reason": "<u>not readable</u>"}],
                    times=[{"session": "s1", "reader": script, "n": 1, "untimed": 0, "median_s": 30.0,
                            "q1_s": 30.0, "q3_s": 30.0, "iqr_s": 0.0}])
    page = to_html(report)
    assert "alert(" in page  # the text is there ...
    assert script not in page and "<img src=x>" not in page and "<b>film.png</b>" not in page  # ... never as tags
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "Session &lt;script&gt;" in page and "_md_ [link](http://x)" in page  # Markdown is left as typed text
    assert "**img0**&lt;img src=x&gt;" in page
    tags = _tags(page)
    assert [a["src"] for t, a in tags if t == "img"] == [case_uri(case)]  # the gallery's image, no injected one
    assert {t for t, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table",
                                    "thead", "tbody", "tr", "th", "td", "small", "div", "script", "span", "figure",
                                    "img", "figcaption"}
    assert not any(t in ("b", "i", "u") for t, _ in tags)
    plain = to_html(Report("Session s1", scores, groups=aggregate(scores, n_boot=50)))
    assert page.count("<script") == plain.count("<script")  # plotly's own scripts, none added by a name
