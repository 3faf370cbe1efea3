"""Out-of-distribution checks: real chest films pass, other inputs are refused with a reason;
the feature-space detector separates shifted features and keeps its false-refusal rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file

from cxr_core.imaging import load_xray
from cxr_core.ood import (
    FeatureOOD,
    OODDecision,
    OODError,
    colorfulness,
    evaluate_detector,
    image_checks,
    image_decision,
    image_features,
    metadata_checks,
)

CHEST_FILMS = sorted((Path(__file__).parent / "fixtures" / "ood").glob("*.png"))


def gray(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., :3] / 255.0) @ np.array([0.299, 0.587, 0.114])


def one_reason(reasons: list[str], words: str) -> None:
    assert any(words in r for r in reasons), reasons


def test_fixture_folder_holds_real_films():
    assert len(CHEST_FILMS) == 6


@pytest.mark.parametrize("path", CHEST_FILMS, ids=lambda p: p.stem)
def test_real_chest_films_pass_every_check(path):
    xray = load_xray(path)
    assert image_checks(xray.pixels, was_color=xray.was_color, metadata=xray.metadata) == []
    rgb = np.repeat(xray.pixels[..., None], 3, axis=2)  # stored as RGB with equal channels
    assert image_checks(xray.pixels, was_color=True, colorfulness=colorfulness(rgb)) == []


@pytest.mark.parametrize("path", CHEST_FILMS, ids=lambda p: p.stem)
def test_rotating_or_inverting_a_film_negates_its_layout(path):
    pixels = load_xray(path).pixels
    layout = image_features(pixels).layout
    for changed in (np.rot90(pixels), np.rot90(pixels, 3), 1.0 - pixels):
        assert image_features(changed).layout == pytest.approx(-layout, abs=0.05)
        if layout > 0.35:  # all but the most off-centre real film: refused for the flipped layout
            one_reason(image_checks(changed), "no bright central band")


def test_most_fixture_films_have_a_clear_layout():
    layouts = [image_features(load_xray(p).pixels).layout for p in CHEST_FILMS]
    assert sum(v > 0.35 for v in layouts) == 5 and min(layouts) > -0.1


def test_real_chest_cr_dicom_passes_with_its_header():
    xray = load_xray(get_testdata_file("RG1_UNCR.dcm", download=False))
    assert xray.metadata["body_part"] == "CHEST"
    assert image_checks(xray.pixels, metadata=xray.metadata) == []


def test_colour_photographs_are_refused_for_colour():
    for rgb in (skimage.data.astronaut(), skimage.data.coffee()):
        reasons = image_checks(gray(rgb), was_color=True, colorfulness=colorfulness(rgb / 255.0))
        one_reason(reasons, "strong colour")


def test_document_scan_is_refused():
    reasons = image_checks(skimage.data.page() / 255.0)
    one_reason(reasons, "extreme aspect ratio")
    one_reason(reasons, "noise-like texture")


def test_portrait_text_page_is_refused_though_its_aspect_is_film_like():
    page = Image.new("L", (850, 1100), 245)
    draw = ImageDraw.Draw(page)
    for y in range(80, 1020, 28):
        draw.text((70, y), "findings of the chest report clinic date patient", fill=20,
                  font=ImageFont.load_default(size=18))
    pixels = np.asarray(page, np.float32) / 255
    assert image_features(pixels).aspect < 1.6
    reasons = image_checks(pixels)
    one_reason(reasons, "one grey level")


def test_knee_radiograph_is_refused_by_its_body_part():
    xray = load_xray(get_testdata_file("RG3_UNCR.dcm", download=False))
    assert image_checks(xray.pixels, metadata=xray.metadata) == ["DICOM body part is EXTREMITY, not CHEST"]


def test_ct_slice_is_refused_by_its_modality():
    xray = load_xray(get_testdata_file("CT_small.dcm", download=False))
    one_reason(image_checks(xray.pixels, metadata=xray.metadata), "DICOM modality is CT")


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_pure_noise_is_refused(kind):
    rng = np.random.default_rng(0)
    noise = rng.random((300, 400)) if kind == "uniform" else np.clip(rng.normal(0.5, 0.15, (300, 400)), 0, 1)
    one_reason(image_checks(noise), "noise-like texture")


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_blank_images_are_refused(level):
    blank = np.full((256, 256), level) + np.random.default_rng(1).normal(0, 0.004, (256, 256))
    assert image_checks(blank) == [f"nearly constant (blank) image: contrast {blank.std():.3f} < 0.02"]


def test_metadata_checks_accept_chest_radiographs_in_any_key_spelling():
    assert metadata_checks({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}) == []
    assert metadata_checks({"modality": "cr", "body_part": "Thorax", "view_position": "AP"}) == []
    assert metadata_checks({"modality": "", "body_part": None}) == []
    assert metadata_checks(None) == []


def test_metadata_checks_refuse_other_modalities_parts_and_lateral_views():
    reasons = metadata_checks({"Modality": "MR", "BodyPartExamined": "KNEE", "ViewPosition": "LL"})
    assert reasons == [
        "DICOM modality is MR, not a radiograph (CR/DR/DX/RG)",
        "DICOM body part is KNEE, not CHEST",
        "DICOM view position is LL, a lateral view, not frontal (PA/AP)",
    ]


def test_colorfulness_is_zero_for_gray_and_high_for_a_photograph():
    assert colorfulness(np.repeat(np.linspace(0, 1, 100).reshape(10, 10, 1), 3, axis=2)) == 0.0
    assert colorfulness(skimage.data.astronaut() / 255.0) > 0.2


@pytest.mark.parametrize(
    ("pixels", "match"),
    [(np.zeros((4, 4, 3)), "2-D"), (np.full((8, 8), np.nan), "NaN"), (np.zeros((1, 50)), "2-D")],
)
def test_bad_pixels_raise_ood_error(pixels, match):
    with pytest.raises(OODError, match=match):
        image_checks(pixels)


# --- feature-space detector ------------------------------------------------------------------


def gaussian_features(n: int, seed: int, shift: float = 0.0, d: int = 16):
    """Three classes with distinct means and correlated noise; ``shift`` moves every class."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(0, 1, (d, d)) / np.sqrt(d)
    means = np.random.default_rng(98).normal(0, 4, (3, d))
    labels = rng.integers(0, 3, n)
    x = means[labels] + rng.normal(0, 1, (n, d)) @ mix + 2.0  # offset so k-NN's directions differ
    x[:, :4] += shift
    return x, labels


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_detector_separates_a_shifted_cluster(method):
    train, labels = gaussian_features(1500, seed=0)
    det = FeatureOOD.fit(train, labels, method=method, k=10, percentile=99)
    in_scores = det.score(gaussian_features(1000, seed=1)[0])
    out_scores = det.score(gaussian_features(1000, seed=2, shift=3.0)[0])
    result = evaluate_detector(in_scores, out_scores, det.threshold)
    assert result["auroc"] > 0.95
    assert result["false_refusal_rate_at_threshold"] <= 0.03
    assert result["true_refusal_rate"] > 0.5


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_false_refusals_stay_near_the_chosen_percentile(method):
    train, labels = gaussian_features(2000, seed=3)
    det = FeatureOOD.fit(train, labels, method=method, percentile=95)
    assert det.percentile == 95
    refused = np.mean(det.score(gaussian_features(4000, seed=4)[0]) > det.threshold)
    assert 0.01 <= refused <= 0.10


def test_class_conditional_mahalanobis_refuses_the_gap_between_classes():
    train, labels = gaussian_features(1500, seed=5)
    means = np.stack([train[labels == c].mean(axis=0) for c in range(3)])
    gap = means.mean(axis=0, keepdims=True)
    per_class = FeatureOOD.fit(train, labels)
    pooled = FeatureOOD.fit(train)  # one Gaussian: the gap looks typical
    assert per_class.score(gap)[0] > per_class.threshold
    assert pooled.score(gap)[0] < pooled.threshold
    assert np.all(per_class.score(means) < per_class.threshold)


def test_knn_score_ignores_feature_scale():
    train, _ = gaussian_features(500, seed=6)
    det = FeatureOOD.fit(train, method="knn", k=5)
    x = gaussian_features(50, seed=7)[0]
    np.testing.assert_allclose(det.score(3.0 * x), det.score(x), atol=1e-9)


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_save_and_load_give_identical_scores(method, tmp_path):
    train, labels = gaussian_features(600, seed=8)
    det = FeatureOOD.fit(train, labels, method=method, k=7)
    det.save(tmp_path / "ood.npz")
    back = FeatureOOD.load(tmp_path / "ood.npz")
    x = gaussian_features(100, seed=9, shift=1.0)[0]
    np.testing.assert_array_equal(back.score(x), det.score(x))
    assert (back.method, back.k, back.threshold, back.percentile) == (det.method, det.k, det.threshold, det.percentile)
    assert json.loads(json.dumps(back.summary()))["method"] == method


def test_decide_explains_refusals_and_keeps_image_reasons():
    train, labels = gaussian_features(600, seed=10)
    det = FeatureOOD.fit(train, labels)
    near, far = det.decide(np.stack([train[0], train[0] + 50.0]))
    assert near.ok and near.reasons == [] and near.threshold == det.threshold
    assert not far.ok and "unlike the training chest films" in far.reasons[0] and far.score > det.threshold
    flagged = det.decide(train[:1], reasons=["strong colour"])[0]
    assert not flagged.ok and flagged.reasons == ["strong colour"]
    assert image_decision([]) == OODDecision(True, [])
    assert not image_decision(["blank"]).ok


def test_set_threshold_on_validation_features_after_fitting_without_holdout():
    train, labels = gaussian_features(800, seed=11)
    det = FeatureOOD.fit(train, labels, holdout=0.0)
    assert det.threshold == np.inf
    val = gaussian_features(400, seed=12)[0]
    t = det.set_threshold(val, 99.0)
    assert t == det.threshold == pytest.approx(np.percentile(det.score(val), 99.0))


def test_evaluate_detector_matches_a_hand_computation():
    result = evaluate_detector([0.0, 1.0, 2.0, 3.0], [2.5, 5.0], threshold=2.0)
    assert result["auroc"] == pytest.approx(7 / 8)  # 2.5 beats 3 of 4 in-scores, 5.0 beats all
    assert result["false_refusal_rate_at_threshold"] == 0.25
    assert result["true_refusal_rate"] == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d: d.score(np.zeros((2, 5))), "5 dimensions, the detector was fitted on 16"),
        (lambda d: FeatureOOD.fit(np.zeros((10, 16)), method="lof"), "method must be"),
        (lambda d: FeatureOOD.fit(np.zeros((10, 16)), method="knn", k=50), "k must be between 1 and 8"),
        (lambda d: FeatureOOD.fit(np.zeros((10, 16)), labels=np.zeros(3)), "one entry per feature row"),
        (lambda d: d.set_threshold(np.zeros((2, 16)), 0), "percentile must be"),
        (lambda d: evaluate_detector([], [1.0]), "need in- and out-of-distribution scores"),
    ],
)
def test_bad_detector_input_raises_ood_error(call, match):
    det = FeatureOOD.fit(gaussian_features(100, seed=13)[0])
    with pytest.raises(OODError, match=match):
        call(det)


def test_loading_a_file_that_is_not_a_detector_raises_ood_error(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(OODError, match="cannot read an OOD detector"):
        FeatureOOD.load(path)
