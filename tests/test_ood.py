"""Out-of-distribution checks: real chest films (wide ones too) pass, other inputs are refused with a plain
reason and its figures; limits come from real films; the feature-space detector separates shifted features
and keeps its false-refusal rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file

from cxr_core.io.imaging import load_xray
from cxr_core.safety.detector import (
    DEFAULT_K,
    DEFAULT_METHOD,
    DEFAULT_PERCENTILE,
    DETECTOR_REASON,
    FeatureOOD,
    evaluate_detector,
)
from cxr_core.safety.ood import (
    REAL_FILM_LIMITS,
    CheckLimits,
    Finding,
    OODDecision,
    OODError,
    colorfulness,
    derive_limits,
    image_checks,
    image_decision,
    image_features,
    image_findings,
    metadata_checks,
    metadata_findings,
)

CHEST_FILMS = sorted((Path(__file__).parent / "fixtures" / "ood").glob("*.png"))


def gray(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., :3] / 255.0) @ np.array([0.299, 0.587, 0.114])


def one_reason(reasons: list[str], words: str) -> None:
    assert any(words in r for r in reasons), reasons


def checks_of(findings: list[Finding]) -> list[str]:
    return [f.check for f in findings]


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
        if layout > -REAL_FILM_LIMITS.min_layout:  # a clear layout: refused once flipped
            found = [f for f in image_findings(changed) if f.check == "layout"]
            assert found and found[0].reason.startswith("This does not look like a frontal chest film")
            assert found[0].details.endswith("(centre-column minus centre-row brightness), limit -0.53")


def test_most_fixture_films_have_a_clear_layout():
    layouts = [image_features(load_xray(p).pixels).layout for p in CHEST_FILMS]
    assert sum(v > -REAL_FILM_LIMITS.min_layout for v in layouts) >= 4 and min(layouts) > -0.1


@pytest.mark.parametrize("aspect", [1.64, 1.74, 2.0])
def test_wide_films_are_not_refused_for_their_shape(aspect):
    """Wide pediatric originals are chest films: the shape is no longer a check."""
    pixels = load_xray(CHEST_FILMS[0]).pixels
    h = pixels.shape[0]
    wide = np.asarray(Image.fromarray(pixels).resize((int(h * aspect), h), Image.BICUBIC)).clip(0, 1)
    assert image_features(wide).aspect == pytest.approx(aspect, abs=0.01)
    assert image_findings(wide) == []


def test_limits_are_derived_from_real_films():
    feats = [image_features(load_xray(p).pixels) for p in CHEST_FILMS]
    limits = derive_limits(feats, margin=0.5)
    stds = sorted(f.std for f in feats)
    assert limits.min_std == pytest.approx(stds[0] * (stds[0] / np.exp(np.median(np.log(stds)))) ** 0.5)  # log scale
    layouts = [f.layout for f in feats]
    assert limits.min_layout == pytest.approx(min(layouts) - 0.5 * (np.median(layouts) - min(layouts)))
    assert limits.max_high_freq > max(f.high_freq for f in feats)  # every fitting film passes its own limits
    assert all(image_findings(load_xray(p).pixels, limits=limits) == [] for p in CHEST_FILMS)
    assert derive_limits(feats, margin=1.0).min_layout < limits.min_layout  # a wider margin refuses less
    with pytest.raises(OODError, match="at least 2 real films"):
        derive_limits(feats[:1])


def test_shipped_limits_are_the_rule_on_real_films_rounded_outward():
    """The defaults are ``derive_limits`` of cxr-real's 520 films (values printed by bench/bench_ood.py)."""
    assert CheckLimits() == REAL_FILM_LIMITS
    assert 0.02 < REAL_FILM_LIMITS.min_std < 0.053 and 0.059 < REAL_FILM_LIMITS.max_high_freq < 0.2
    assert -0.6 < REAL_FILM_LIMITS.min_layout < -0.05 and 0.34 < REAL_FILM_LIMITS.max_dominant_grey
    assert not hasattr(REAL_FILM_LIMITS, "max_aspect")


def test_real_chest_cr_dicom_passes_with_its_header():
    xray = load_xray(get_testdata_file("RG1_UNCR.dcm", download=False))
    assert xray.metadata["body_part"] == "CHEST"
    assert image_checks(xray.pixels, metadata=xray.metadata) == []


def test_colour_photographs_are_refused_for_colour():
    for rgb in (skimage.data.astronaut(), skimage.data.coffee()):
        cf = colorfulness(rgb / 255.0)
        found = image_findings(gray(rgb), was_color=True, colorfulness=cf)
        assert found[0] == Finding("colour", "This is a colour picture (a photograph or a figure), not an X-ray.",
                                   f"colourfulness {cf:.2f}, limit 0.06")
        assert image_checks(gray(rgb), was_color=True, colorfulness=cf)[0] == found[0].reason


def test_document_scan_is_refused():
    found = image_findings(skimage.data.page() / 255.0)
    assert "noise" in checks_of(found)
    one_reason([f.reason for f in found], "looks like noise, text or a fine texture")
    one_reason([f.details for f in found], "high-frequency energy 0.17, limit 0.15")


def test_portrait_text_page_is_refused_though_its_aspect_is_film_like():
    page = Image.new("L", (850, 1100), 245)
    draw = ImageDraw.Draw(page)
    for y in range(80, 1020, 28):
        draw.text((70, y), "findings of the chest report clinic date patient", fill=20,
                  font=ImageFont.load_default(size=18))
    pixels = np.asarray(page, np.float32) / 255
    assert image_features(pixels).aspect < 1.6
    assert checks_of(image_findings(pixels)) == ["noise"]  # sharp black text on white: fine texture


def test_a_mostly_flat_image_is_refused_for_its_background():
    pixels = np.random.default_rng(2).random((300, 300)) * 0.6  # a textured frame around ...
    pixels[25:275, 25:275] = 0.9  # ... one flat grey over 69 % of the image
    found = [f for f in image_findings(pixels) if f.check == "background"]
    assert found and found[0].reason == "Most of the image is one flat grey, unlike a chest film."
    assert found[0].details.endswith("of pixels in one of 32 grey levels, limit 65%")


def test_knee_radiograph_is_refused_by_its_body_part():
    xray = load_xray(get_testdata_file("RG3_UNCR.dcm", download=False))
    assert image_findings(xray.pixels, metadata=xray.metadata) == [
        Finding("body_part", "The file says this shows the extremity, not the chest.",
                "DICOM BodyPartExamined EXTREMITY; accepted: CHEST, THORAX, TORAX, LUNG")]


def test_ct_slice_is_refused_by_its_modality():
    xray = load_xray(get_testdata_file("CT_small.dcm", download=False))
    one_reason(image_checks(xray.pixels, metadata=xray.metadata), "The file says this is a CT image, not a plain X-ray")


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_pure_noise_is_refused(kind):
    rng = np.random.default_rng(0)
    noise = rng.random((300, 400)) if kind == "uniform" else np.clip(rng.normal(0.5, 0.15, (300, 400)), 0, 1)
    assert "noise" in checks_of(image_findings(noise))


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_blank_images_are_refused(level):
    blank = np.full((256, 256), level) + np.random.default_rng(1).normal(0, 0.004, (256, 256))
    assert image_findings(blank) == [Finding("blank", "The image is blank: almost no contrast.",
                                             f"grey-level spread {blank.std():.3f}, limit 0.027")]


def test_metadata_checks_accept_chest_radiographs_in_any_key_spelling():
    assert metadata_checks({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}) == []
    assert metadata_checks({"modality": "cr", "body_part": "Thorax", "view_position": "AP"}) == []
    assert metadata_checks({"modality": "", "body_part": None}) == []
    assert metadata_checks(None) == []


def test_metadata_checks_refuse_other_modalities_parts_and_lateral_views():
    found = metadata_findings({"Modality": "MR", "BodyPartExamined": "KNEE", "ViewPosition": "LL"})
    assert [(f.check, f.reason, f.details) for f in found] == [
        ("modality", "The file says this is an MR image, not a plain X-ray.",
         "DICOM Modality MR; accepted: CR, DR, DX, RG"),
        ("body_part", "The file says this shows the knee, not the chest.",
         "DICOM BodyPartExamined KNEE; accepted: CHEST, THORAX, TORAX, LUNG"),
        ("view", "The file says this is a lateral film; the model reads frontal (PA or AP) films.",
         "DICOM ViewPosition LL"),
    ]
    assert metadata_checks({"Modality": "MR"}) == ["The file says this is an MR image, not a plain X-ray."]
    assert metadata_checks({"Modality": "US"}) == ["The file says this is a US image, not a plain X-ray."]


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
    per_class = FeatureOOD.fit(train, labels, method="mahalanobis")
    pooled = FeatureOOD.fit(train, method="mahalanobis")  # one Gaussian: the gap looks typical
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


def test_decide_explains_refusals_in_plain_words_with_figures_and_keeps_image_findings():
    train, labels = gaussian_features(600, seed=10)
    det = FeatureOOD.fit(train, labels)
    assert (det.method, det.k, det.percentile) == (DEFAULT_METHOD, DEFAULT_K, DEFAULT_PERCENTILE)
    near, far = det.decide(np.stack([train[0], -train[0]]))
    assert near.ok and near.reasons == near.details == [] and near.threshold == det.threshold
    assert not far.ok and far.score > det.threshold
    assert far.reasons == [DETECTOR_REASON] and far.checks == ["detector"]
    assert far.details == [f"distance to the nearest training films {far.score:.3f}, threshold {det.threshold:.3f} "
                           f"(knn k={DEFAULT_K})"]
    assert far.details_text == far.details[0]
    colour = Finding("colour", "This is a colour picture.", "colourfulness 0.31, limit 0.06")
    flagged = det.decide(train[:1], findings=[colour])[0]
    assert not flagged.ok and flagged.reasons == [colour.reason] and flagged.details == [colour.details]
    bare = det.decide(train[:1], reasons=["strong colour"])[0]
    assert not bare.ok and bare.reasons == ["strong colour"] and bare.details == [""]
    assert image_decision([]) == OODDecision(True, [])
    assert not image_decision(["blank"]).ok
    assert OODDecision(False, ["old record"]).details_text == ""  # decisions built from reasons alone still work


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
