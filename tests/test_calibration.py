"""Temperature scaling and calibration metrics on seeded synthetic classifiers and hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_core.models.calibration import (
    CalibrationError,
    CalibrationReport,
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    negative_log_likelihood,
    reliability_bins,
    reliability_figure,
    softmax,
)


def calibrated_classifier(n: int = 5000, k: int = 4, seed: int = 0):
    """Logits and labels drawn from the logits' own softmax: calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, k))
    cum = softmax(logits).cumsum(axis=1)
    labels = (cum > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


def test_overconfident_classifier_is_fixed_by_temperature_near_its_scale():
    logits, labels = calibrated_classifier()
    t = fit_temperature(5.0 * logits, labels)
    assert 4.5 < t < 5.5
    before = expected_calibration_error(softmax(5.0 * logits), labels)
    after = expected_calibration_error(apply_temperature(5.0 * logits, t), labels)
    assert before > 0.15
    assert after < 0.3 * before


def test_calibrated_classifier_keeps_temperature_near_one():
    logits, labels = calibrated_classifier(seed=1)
    assert abs(fit_temperature(logits, labels) - 1.0) < 0.1


def test_underconfident_classifier_gets_temperature_below_one():
    logits, labels = calibrated_classifier(seed=2)
    assert fit_temperature(logits / 3.0, labels) < 0.45


@pytest.mark.parametrize("t", [0.05, 0.5, 1.0, 3.7, 50.0])
def test_temperature_never_changes_the_predicted_class(t):
    logits, _ = calibrated_classifier(n=500, seed=3)
    np.testing.assert_array_equal(apply_temperature(logits, t).argmax(axis=1), logits.argmax(axis=1))


def test_fitting_on_probabilities_through_their_logs_gives_the_same_temperature():
    logits, labels = calibrated_classifier(n=2000, seed=4)
    probs = softmax(4.0 * logits)
    t_probs = fit_temperature(logits_from_probabilities(probs), labels)
    assert t_probs == pytest.approx(fit_temperature(4.0 * logits, labels), rel=0.02)
    np.testing.assert_allclose(softmax(logits_from_probabilities(probs)), probs, atol=1e-6)


def test_ece_equals_a_hand_computation():
    # 5 bins of width 0.2. Top confidences 0.9 (right), 0.85 (wrong), 0.7 (right), 0.4 (right).
    probs = np.array([[0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([0, 1, 1, 2])
    # (0.8, 1]: 2 samples, confidence 0.875, accuracy 0.5 -> 2/4 * 0.375
    # (0.6, 0.8]: 1 sample, 0.7 vs 1 -> 1/4 * 0.3; (0.2, 0.4]: 1 sample, 0.4 vs 1 -> 1/4 * 0.6
    expected = 0.5 * 0.375 + 0.25 * 0.3 + 0.25 * 0.6
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected)
    bins = reliability_bins(probs, labels, n_bins=5)
    np.testing.assert_array_equal(bins.count, [0, 1, 0, 1, 2])
    assert bins.confidence[4] == pytest.approx(0.875) and bins.accuracy[4] == 0.5
    assert np.isnan(bins.accuracy[0])


def test_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    probs = np.array([[0.8, 0.2], [0.6, 0.4]])
    np.testing.assert_array_equal(reliability_bins(probs, np.array([0, 0]), n_bins=5).count, [0, 0, 1, 1, 0])


def test_brier_and_nll_equal_hand_computations():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    labels = np.array([0, 2])
    assert brier_score(probs, labels) == pytest.approx((0.14 + 1.5) / 2)
    assert negative_log_likelihood(probs[:1], labels[:1]) == pytest.approx(-np.log(0.7))
    assert np.isfinite(negative_log_likelihood(probs, labels))  # p = 0 is clipped, not -inf


def test_report_on_a_test_split_uses_the_given_temperature_and_serialises():
    logits, labels = calibrated_classifier(seed=5)
    val, test = slice(0, 2500), slice(2500, None)
    t = fit_temperature(5.0 * logits[val], labels[val])
    report = calibration_report(5.0 * logits[test], labels[test], temperature=t)
    assert isinstance(report, CalibrationReport)
    assert report.temperature == t and report.n == 2500
    assert report.ece_after < report.ece_before and report.nll_after < report.nll_before
    assert report.brier_after < report.brier_before
    d = json.loads(json.dumps(report.to_dict()))  # NaN of empty bins became null
    assert d["ece_after"] == pytest.approx(report.ece_after)
    assert len(d["bins_after"]["count"]) == 15 and sum(d["bins_after"]["count"]) == 2500


def test_reliability_figure_plots_accuracy_of_filled_bins_before_and_after():
    logits, labels = calibrated_classifier(n=1000, seed=6)
    report = calibration_report(5.0 * logits, labels)
    fig = reliability_figure(report)
    assert len(fig.data) == 3  # diagonal, before, after
    filled = report.bins_after.count > 0
    np.testing.assert_allclose(fig.data[2].y, report.bins_after.accuracy[filled])
    assert len(reliability_figure(report.bins_before).data) == 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fit_temperature(np.zeros((3, 4)), np.array([0, 1, 4])), "labels must lie in 0..3"),
        (lambda: fit_temperature(np.zeros((3, 4)), np.array([0.0, 1.0, 2.0])), "labels must be 3 integers"),
        (lambda: fit_temperature(np.zeros(4), np.array([0])), r"\(N, K\)"),
        (lambda: apply_temperature(np.zeros((2, 2)), 0.0), "temperature must be a positive"),
        (lambda: brier_score(np.full((2, 3), 0.5), np.array([0, 1])), "sum to 1"),
        (lambda: fit_temperature(np.array([[np.nan, 0.0]]), np.array([0])), "NaN"),
        (lambda: reliability_figure({"ece": 0.1}), "CalibrationReport or ReliabilityBins"),
    ],
)
def test_bad_input_raises_calibration_error_naming_the_problem(call, match):
    with pytest.raises(CalibrationError, match=match):
        call()
