"""Agreement metrics: hand-computed cases, an independent CheXlocalize reimplementation, aggregates, CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

from cxr_core.agreement import (
    AgreementInputError,
    ImageScore,
    aggregate,
    bootstrap_ci,
    diagnosis_agreement,
    mask_metrics,
    reader_agreement,
    score_batch,
    score_image,
    score_records,
)
from cxr_core.explain.binarize import HeatmapError, ThresholdError
from cxr_core.errors import CXRError

LUNG_MASKS = sorted((Path(__file__).parent / "fixtures" / "lung_masks").glob("*.png"))
NAN = math.nan


def rect(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# --- mask metrics, hand-computed ------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["true_positive_only", "full"])
def test_identical_and_disjoint_masks(rule):
    a = rect((20, 20), 2, 8, 3, 9)
    same = mask_metrics(a, a.copy(), rule=rule)
    assert (same["iou"], same["dice"], same["precision"], same["recall"]) == (1.0, 1.0, 1.0, 1.0)
    apart = mask_metrics(a, rect((20, 20), 10, 15, 10, 15), rule=rule)
    assert (apart["iou"], apart["dice"], apart["precision"], apart["recall"]) == (0.0, 0.0, 0.0, 0.0)


def test_known_overlap_of_two_squares():
    # two 10x10 squares offset by 5 in both axes: 25 shared pixels, union 175
    r = mask_metrics(rect((20, 20), 0, 10, 0, 10), rect((20, 20), 5, 15, 5, 15))
    assert r["iou"] == pytest.approx(25 / 175)
    assert r["dice"] == pytest.approx(50 / 200)
    assert r["precision"] == pytest.approx(0.25) and r["recall"] == pytest.approx(0.25)
    assert r["pred_fraction"] == pytest.approx(100 / 400) and r["gt_fraction"] == pytest.approx(100 / 400)


def test_empty_masks_under_both_rules():
    some, empty = rect((6, 6), 1, 3, 1, 3), np.zeros((6, 6), bool)
    tp_pred_empty = mask_metrics(empty, some, rule="true_positive_only")
    assert all(math.isnan(tp_pred_empty[k]) for k in ("iou", "dice", "precision", "recall"))
    full_pred_empty = mask_metrics(empty, some, rule="full")
    assert (full_pred_empty["iou"], full_pred_empty["dice"], full_pred_empty["recall"]) == (0.0, 0.0, 0.0)
    assert math.isnan(full_pred_empty["precision"])  # nothing predicted: precision undefined
    full_gt_empty = mask_metrics(some, empty, rule="full")
    assert (full_gt_empty["iou"], full_gt_empty["dice"], full_gt_empty["precision"]) == (0.0, 0.0, 0.0)
    assert math.isnan(full_gt_empty["recall"])
    for rule in ("true_positive_only", "full"):
        both = mask_metrics(empty, empty, rule=rule)
        assert math.isnan(both["iou"]) and math.isnan(both["dice"])


def test_stack_gives_arrays_matching_pairs():
    preds = np.stack([rect((10, 10), 0, 5, 0, 5), np.zeros((10, 10), bool)])
    gts = np.stack([rect((10, 10), 0, 5, 0, 10), rect((10, 10), 0, 2, 0, 2)])
    r = mask_metrics(preds, gts, rule="full")
    np.testing.assert_allclose(r["iou"], [0.5, 0.0])
    assert isinstance(r["iou"], np.ndarray)


# --- threshold-free metrics -----------------------------------------------------------------------

def peaked(shape, centre, sigma=4.0):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * sigma**2))


def test_pointing_game_just_inside_and_just_outside():
    mask = rect((40, 40), 10, 20, 10, 20)  # rows 10..19, cols 10..19
    inside = score_image(peaked((40, 40), (19, 19)), mask)
    outside = score_image(peaked((40, 40), (20, 19)), mask)
    assert inside["hit"] == 1.0 and outside["hit"] == 0.0
    assert math.isnan(score_image(peaked((40, 40), (19, 19)), np.zeros((40, 40), bool))["hit"])
    assert math.isnan(score_image(np.ones((40, 40)), mask)["hit"])  # a flat map points nowhere


def test_relevance_mass_hand_computed():
    h = np.zeros((4, 4))
    h[0, :2] = h[1, :2] = 1.0         # 4 pixels of 1 inside the mask
    h[3, :] = 0.5                     # 4 pixels of 0.5 outside
    mask = rect((4, 4), 0, 2, 0, 2)
    assert score_image(h, mask)["mass"] == pytest.approx(4 / (4 + 2))
    assert math.isnan(score_image(h, np.zeros((4, 4), bool))["mass"])


def test_relevance_rank_hand_computed_with_and_without_ties():
    h = np.arange(16, dtype=float).reshape(4, 4)
    mask = np.isin(h, [15, 14, 3, 2])     # |GT| = 4; top-4 pixels are 15, 14, 13, 12: two inside
    assert score_image(h, mask)["rank"] == pytest.approx(0.5)
    tied = np.zeros((4, 4))
    tied[0, :] = 1.0                      # 4 pixels tied at the top, |GT| = 2, one of them inside
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = gt[3, 3] = True
    # top-2 falls inside the tie of 4: expected share inside = 1/4 per slot -> rank 0.25
    assert score_image(tied, gt)["rank"] == pytest.approx(0.25)


@pytest.mark.parametrize("levels", [None, 12])
@pytest.mark.parametrize("area", [0.1, 0.8])  # mask smaller and larger than its complement
def test_pixel_auc_equals_sklearn(levels, area):
    rng = np.random.default_rng(5)
    h = upsampled_random(rng, (30, 37))
    if levels:
        h = np.round(h * levels) / levels  # heavy ties
    mask = rng.random((30, 37)) < area
    mask |= h > 0.9
    norm = (h - h.min()) / (h.max() - h.min())
    expected = roc_auc_score(mask.ravel(), norm.ravel())
    assert score_image(h, mask)["auc"] == pytest.approx(expected, abs=1e-12)


def test_auc_undefined_for_empty_or_full_mask():
    h = np.random.default_rng(6).random((8, 8))
    assert math.isnan(score_image(h, np.zeros((8, 8), bool))["auc"])
    assert math.isnan(score_image(h, np.ones((8, 8), bool))["auc"])


# --- an independent CheXlocalize pipeline, written plainly per image --------------------------------

def chexlocalize(small_map: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float, float]:
    """CheXlocalize (heatmap_to_segmentation.py, eval.py) per image: upsample, normalise, Otsu,
    fill each RETR_TREE contour as a PIL polygon, IoU (true_pos_only) and the argmax hit."""
    rows, cols = gt.shape
    up = cv2.resize(small_map.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    r, c = np.unravel_index(np.argmax(up), up.shape)
    hit = NAN if gt.sum() == 0 else float(gt[r, c])
    m = up - up.min()
    m = m / m.max()
    m = np.uint8(255 * m)
    thresh = cv2.threshold(m, 0, int(np.max(m)), cv2.THRESH_OTSU)[1]
    cnts = cv2.findContours(thresh, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    seg = Image.new("1", (cols, rows))
    for cnt in cnts:
        if len(cnt) > 1:
            ImageDraw.Draw(seg).polygon([(int(p[0][0]), int(p[0][1])) for p in cnt], outline=1, fill=1)
    pred = np.array(seg, dtype=bool)
    if pred.sum() == 0 or gt.sum() == 0:
        iou = NAN
    else:
        iou = np.logical_and(pred, gt).sum() / np.logical_or(pred, gt).sum()
    return pred, iou, hit


def upsampled_random(rng, shape, grid=7):
    return cv2.resize(rng.random((grid, grid)).astype(np.float32), shape[::-1], interpolation=cv2.INTER_LINEAR)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_matches_chexlocalize_on_random_heatmaps():
    rng = np.random.default_rng(7)
    for _ in range(12):
        rows, cols = (int(v) for v in rng.integers(40, 160, 2))
        small = rng.random(tuple(rng.integers(3, 15, 2)))
        gt = upsampled_random(rng, (rows, cols), grid=4) > 0.6
        pred, iou, hit = chexlocalize(small, gt)
        ours = score_image(small, gt)
        assert same(ours["iou"], iou) and same(ours["hit"], hit)
        assert ours["pred_fraction"] == pred.mean()


@pytest.mark.parametrize("path", LUNG_MASKS, ids=lambda p: p.stem)
def test_matches_chexlocalize_on_real_lung_masks(path):
    gt = np.asarray(Image.open(path)) > 0
    rng = np.random.default_rng(len(path.stem))
    lungish = cv2.resize(gt.astype(np.float32), (7, 7), interpolation=cv2.INTER_AREA) + 0.3 * rng.random((7, 7))
    maps = [lungish, rng.random((7, 7)), rng.random((14, 14))]
    batch = score_batch(np.stack([upsample_to(m, gt.shape) for m in maps]), np.stack([gt] * 3))
    for i, small in enumerate(maps):
        pred, iou, hit = chexlocalize(small, gt)
        ours = score_image(small, gt)
        assert same(ours["iou"], iou) and same(ours["hit"], hit)
        assert same(batch["iou"][i], iou) and same(batch["hit"][i], hit)
    assert score_image(lungish, gt)["iou"] > 0.3  # a lung-shaped map does overlap the lungs


def upsample_to(small, shape):
    return cv2.resize(small.astype(np.float32), shape[::-1], interpolation=cv2.INTER_LINEAR)


# --- batch = single, records ----------------------------------------------------------------------

def test_batch_equals_single_image_for_every_metric_and_threshold():
    rng = np.random.default_rng(8)
    heatmaps = rng.random((4, 7, 7))
    masks = np.stack([upsampled_random(rng, (50, 60), grid=3) > 0.5 for _ in range(4)])
    masks[3] = False
    for threshold in ("otsu", "0.4", "top20%"):
        for rule in ("true_positive_only", "full"):
            batch = score_batch(heatmaps, masks, threshold, rule)
            for i in range(4):
                single = score_image(heatmaps[i], masks[i], threshold, rule)
                for key, value in single.items():
                    assert same(batch[key][i], value), (threshold, rule, i, key)


def test_threshold_free_metrics_can_be_skipped():
    rng = np.random.default_rng(9)
    out = score_batch(rng.random((2, 7, 7)), np.ones((2, 20, 20), bool), "0.5", threshold_free=False)
    assert "auc" not in out and "hit" not in out and len(out["iou"]) == 2


def test_score_records_carry_threshold_rule_and_fields():
    rng = np.random.default_rng(10)
    recs = score_records(rng.random((2, 7, 7)), np.stack([rect((30, 30), 5, 20, 5, 20)] * 2),
                         image_ids=["a", "b"], model="resnet50", method="gradcam", target=["COVID-19", "Normal"],
                         reader="dr1", session="s1", threshold="top10%", rule="full")
    assert [r.image_id for r in recs] == ["a", "b"] and [r.target for r in recs] == ["COVID-19", "Normal"]
    assert {(r.threshold, r.rule, r.reader, r.session) for r in recs} == {("top10%", "full", "dr1", "s1")}
    assert recs[0].pred_fraction == pytest.approx(round(0.1 * 900) / 900)  # a smooth map: no holes to fill


def test_bad_inputs_raise_cxr_errors_naming_the_problem():
    with pytest.raises(AgreementInputError, match="differ in count: 2 vs 3"):
        score_batch(np.zeros((2, 5, 5)), np.zeros((3, 5, 5), bool))
    with pytest.raises(AgreementInputError, match="rule 'some'.*true_positive_only, full"):
        score_batch(np.zeros((5, 5)), np.zeros((5, 5), bool), rule="some")
    with pytest.raises(ThresholdError):
        score_batch(np.zeros((5, 5)), np.zeros((5, 5), bool), threshold="half")
    with pytest.raises(HeatmapError, match="NaN"):
        score_image(np.full((5, 5), np.nan), np.zeros((5, 5), bool))
    with pytest.raises(AgreementInputError, match="dtype float64"):
        mask_metrics(np.full((3, 3), 0.5), np.zeros((3, 3), bool))
    with pytest.raises(AgreementInputError, match="differ in shape"):
        mask_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


# --- aggregates -----------------------------------------------------------------------------------

def test_bootstrap_ci_contains_mean_and_is_reproducible():
    values = np.random.default_rng(11).beta(2, 5, 200)
    mean, lo, hi = bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi
    assert bootstrap_ci(values, seed=3) == (mean, lo, hi)
    assert bootstrap_ci(values, seed=4) != (mean, lo, hi)
    assert bootstrap_ci(np.append(values, [NAN, NAN]), seed=3) == (mean, lo, hi)  # NaN ignored
    assert all(math.isnan(v) for v in bootstrap_ci([NAN, NAN]))
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))


def score(image_id, target="COVID-19", model="m1", iou=0.5, hit=1.0, threshold="otsu", reader="r1"):
    return ImageScore(image_id=image_id, model=model, method="gradcam", target=target, reader=reader,
                      session="s", threshold=threshold, rule="true_positive_only", iou=iou, dice=NAN,
                      precision=NAN, recall=NAN, hit=hit, mass=0.5, rank=0.5, auc=0.5,
                      pred_fraction=0.1, gt_fraction=0.1)


def test_aggregate_keeps_normal_apart_and_never_pools_thresholds():
    scores = [score("a", iou=0.2), score("b", iou=0.4), score("c", iou=NAN, hit=NAN),
              score("n1", target="Normal", iou=0.0), score("n2", target="normal", iou=0.0),
              score("a", iou=0.9, threshold="0.5")]
    rows = aggregate(scores, by=("model",), n_boot=200)
    assert [(r.normal, r.group["threshold"], r.n_images) for r in rows] == [
        (False, "0.5", 1), (False, "otsu", 3), (True, "otsu", 2)]
    otsu = rows[1]
    assert otsu.metrics["iou"].mean == pytest.approx(0.3) and otsu.metrics["iou"].n == 2
    assert otsu.metrics["hit"].mean == 1.0 and otsu.metrics["hit"].n == 2
    assert otsu.metrics["iou"].lo <= 0.3 <= otsu.metrics["iou"].hi
    flat = otsu.to_dict()
    assert flat["model"] == "m1" and flat["iou_mean"] == pytest.approx(0.3) and flat["normal"] is False


def test_aggregate_groups_by_model_target_reader_session():
    scores = [score("a", model="m1"), score("a", model="m2"), score("b", model="m2", reader="r2")]
    rows = aggregate(scores, n_boot=50)
    assert sorted((r.group["model"], r.group["reader"], r.n_images) for r in rows) == [
        ("m1", "r1", 1), ("m2", "r1", 1), ("m2", "r2", 1)]
    with pytest.raises(AgreementInputError, match="cannot group by \\['colour'\\]"):
        aggregate(scores, by=("colour",))


def test_reader_agreement_pairs_readers_on_shared_images():
    a, b, c = rect((10, 10), 0, 5, 0, 5), rect((10, 10), 0, 5, 0, 10), rect((10, 10), 0, 10, 5, 10)
    pairs = reader_agreement({"img1": {"r2": b, "r1": a, "r3": c}, "img2": {"r1": a}})
    assert [(p.image_id, p.reader_a, p.reader_b) for p in pairs] == [
        ("img1", "r1", "r2"), ("img1", "r1", "r3"), ("img1", "r2", "r3")]
    assert [p.iou for p in pairs] == pytest.approx([0.5, 0.0, 25 / 75])
    with pytest.raises(AgreementInputError, match="img3"):
        reader_agreement({"img3": {"r1": a, "r2": np.zeros((4, 4), bool)}})


def test_diagnosis_agreement_kappa_hand_computed():
    d = diagnosis_agreement(list("aabbc"), list("abbbc"))
    # po = 4/5, pe = (2*1 + 2*3 + 1*1) / 25 = 9/25, kappa = (0.8 - 0.36) / 0.64
    assert d.kappa == pytest.approx(0.6875)
    assert d.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert d.agreement == pytest.approx(0.8) and d.n == 5
    assert d.kappa_lo <= d.kappa <= d.kappa_hi
    assert diagnosis_agreement(list("aabbc"), list("abbbc")).to_dict() == d.to_dict()  # seeded
    assert math.isnan(diagnosis_agreement(["a", "a"], ["a", "a"]).kappa)
    perfect = diagnosis_agreement(list("abcabc"), list("abcabc"))
    assert (perfect.kappa, perfect.kappa_lo, perfect.kappa_hi) == (1.0, 1.0, 1.0)
    with pytest.raises(AgreementInputError, match=r"\['z'\] are not among"):
        diagnosis_agreement(["a", "z"], ["a", "a"], labels=["a", "b"])


# --- the `agree` command --------------------------------------------------------------------------

def agree_args(argv):
    from cxr_core.cli.commands import agree

    parser = argparse.ArgumentParser()
    agree.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["agree", *argv])


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(12)
    gt = np.asarray(Image.open(LUNG_MASKS[0])) > 0
    heatmap = rng.random((7, 7)).astype(np.float32)
    np.save(tmp_path / "h.npy", heatmap[None, None])  # (1, 1, 7, 7) as CheXlocalize stores maps
    Image.fromarray((gt * 255).astype(np.uint8)).save(tmp_path / "m.png")
    return tmp_path, heatmap, gt


def test_agree_json_matches_score_image(pair, capsys):
    from cxr_core.cli.commands.agree import run

    folder, heatmap, gt = pair
    args = agree_args(["--heatmap", str(folder / "h.npy"), "--mask", str(folder / "m.png"),
                       "--threshold", "top15%", "--rule", "full", "--json"])
    assert args.func is run and run(args) == 0
    record = json.loads(capsys.readouterr().out)
    expected = score_image(heatmap, gt, "top15%", "full")
    assert record["threshold"] == "top15%" and record["rule"] == "full" and record["size"] == list(gt.shape)
    for key, value in expected.items():
        assert (record[key] is None and math.isnan(value)) or record[key] == value


def test_agree_text_output_names_every_metric(pair, capsys):
    from cxr_core.cli.commands.agree import run

    folder, heatmap, gt = pair
    assert run(agree_args(["--heatmap", str(folder / "h.npy"), "--mask", str(folder / "m.png")])) == 0
    out = capsys.readouterr().out
    iou = score_image(heatmap, gt)["iou"]
    assert f"iou           {iou:.4f}" in out and "threshold otsu, rule true_positive_only" in out


def test_agree_bad_input_raises_cxr_error(pair):
    from cxr_core.cli.commands.agree import run

    folder, _, gt = pair
    grey = (np.arange(gt.size).reshape(gt.shape) % 7).astype(np.uint8)
    Image.fromarray(grey).save(folder / "grey.png")
    np.save(folder / "cube.npy", np.zeros((2, 3, 4)))
    cases = [
        (["--heatmap", str(folder / "missing.npy"), "--mask", str(folder / "m.png")], "not found"),
        (["--heatmap", str(folder / "h.npy"), "--mask", str(folder / "grey.png")], "binary mask"),
        (["--heatmap", str(folder / "cube.npy"), "--mask", str(folder / "m.png")], r"shape \(2, 3, 4\)"),
        (["--heatmap", str(folder / "m.png"), "--mask", str(folder / "m.png")], "not a readable .npy"),
        (["--heatmap", str(folder / "h.npy"), "--mask", str(folder / "m.png"), "--threshold", "2"], r"\[0, 1\]"),
    ]
    for argv, match in cases:
        with pytest.raises(CXRError, match=match):
            run(agree_args(argv))


def test_agree_through_the_cli_when_registered(pair, capsys):
    from cxr_core import cli

    if "agree" not in cli.COMMANDS:
        pytest.skip("the lead has not added `agree` to cxr_core.cli.COMMANDS yet")
    folder, heatmap, gt = pair
    assert cli.main(["agree", "--heatmap", str(folder / "h.npy"), "--mask", str(folder / "m.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iou"] == pytest.approx(score_image(heatmap, gt)["iou"])
    assert cli.main(["agree", "--heatmap", str(folder / "nope.npy"), "--mask", str(folder / "m.png")]) == 2
    assert "not found" in capsys.readouterr().err
